/**
 * A smee channel relay killed with SIGKILL mid-traffic: `hookbot serve
 * --smee --redis` as a child process, a publisher that retries until it gets
 * 200, and two subscribers of the channel URL, the real smee-client (its
 * EventSource resumes by Last-Event-ID) and `hookbot forward` (hookbot.v1,
 * ?since=). After the server is killed and restarted on the same port and
 * Redis, every acknowledged message reaches both exactly once, in order.
 */
import SmeeClient from 'smee-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RedisServer } from './redis-server.js';
import { eventually, freePort, githubSignature, KEY, publishUntilAccepted, runCli, WebhookApp, type Proc } from './helpers.js';

const SECRET = 'kill-secret';

let redis: RedisServer;
const procs: Proc[] = [];
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await redis?.stop();
});

async function serve(port: number): Promise<Proc> {
  const p = runCli(['serve', '--smee', '--bind', `127.0.0.1:${port}`, '--redis', redis.url, '--rate-limit', '0'], { HOOKBOT_KEY: KEY });
  procs.push(p);
  await p.waitForLine(/Listening on/, 15_000);
  return p;
}

/** Posts message `seq` until the server answers 200; counts attempts whose outcome is unknown. */
function publishSigned(url: string, seq: number, stats: { ambiguous: number }): Promise<string> {
  const body = JSON.stringify({ seq, note: 'ünïcødé ✓' });
  const headers = { 'content-type': 'application/json', 'x-github-event': 'push', 'x-github-delivery': `d-${seq}`, 'x-hub-signature-256': githubSignature(SECRET, body) };
  return publishUntilAccepted(url, seq, body, headers, stats, 30_000);
}

/** Every acknowledged id exactly once and in order; anything else only a publish whose answer the kill lost. */
function checkExactlyOnce(got: string[], accepted: string[], ambiguous: number, who: string): void {
  expect(new Set(got).size, `${who}: nothing twice`).toBe(got.length);
  expect(got.filter((id) => accepted.includes(id)), `${who}: nothing missed, in order`).toEqual(accepted);
  expect(got.length - accepted.length, `${who}: extras`).toBeLessThanOrEqual(ambiguous);
}

describe('a smee channel relay killed mid-traffic (SIGKILL)', () => {
  it('delivers every acknowledged message exactly once, in order, to smee-client and hookbot forward', async () => {
    const port = await freePort();
    let server = await serve(port);
    const channel = (await fetch(`http://127.0.0.1:${port}/new`, { redirect: 'manual' })).headers.get('location')!;

    const smeeApp = await WebhookApp.start(SECRET);
    const forwardApp = await WebhookApp.start(SECRET);
    const smee = new SmeeClient({ source: channel, target: smeeApp.url, logger: { info: () => {}, error: () => {} } });
    // What the EventSource dispatched, in order: the ids smee-client forwards.
    const seen: string[] = [];
    smee.onmessage = (e: MessageEvent) => void seen.push(e.lastEventId);
    await smee.start();
    const fwd = runCli(['forward', channel, '--to', forwardApp.url, '--min-backoff', '50ms', '--max-backoff', '300ms'], { HOOKBOT_KEY: KEY });
    procs.push(fwd);
    await fwd.waitForLine(/"msg":"connected"/);

    try {
      const total = 90;
      const accepted: string[] = [];
      const stats = { ambiguous: 0 };
      const publisher = (async () => {
        for (let seq = 1; seq <= total; seq++) accepted.push(await publishSigned(channel, seq, stats));
      })();

      await eventually(() => seen.length >= 30 && forwardApp.deliveries.length >= 30, 20_000, '30 deliveries before the kill');
      server.child.kill('SIGKILL');
      const acceptedAtKill = accepted.length;
      expect((await server.exit).signal).toBe('SIGKILL');
      server = await serve(port);
      await publisher;
      await eventually(() => seen.length >= total && forwardApp.deliveries.length >= total, 30_000, `all ${total} at both subscribers`);

      // Mid-traffic: publishes were still to come, and some found the server gone.
      expect(acceptedAtKill).toBeLessThan(total);
      expect(stats.ambiguous).toBeGreaterThan(0);
      checkExactlyOnce(seen, accepted, stats.ambiguous, 'smee-client');
      checkExactlyOnce(forwardApp.deliveries.map((d) => String(d.headers['x-hookbot-message-id'])), accepted, stats.ambiguous, 'hookbot forward');
      // smee-client forwarded each one it saw (compact JSON survives its re-serialising: the signatures verified).
      await smeeApp.waitFor(seen.length);
      expect(smeeApp.deliveries).toHaveLength(seen.length);
      expect(smeeApp.refused).toEqual([]);
      expect(forwardApp.refused).toEqual([]);
      expect(fwd.stderr()).toMatch(/"msg":"disconnected"/);
    } finally {
      await smee.stop();
      await smeeApp.close();
      await forwardApp.close();
    }
  }, 90_000);
});
