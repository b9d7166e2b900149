/**
 * The real smee-client (npm, 5.x, the client Probot's WEBHOOK_PROXY_URL
 * runs) against a real hookbot server with --smee: minting through its own
 * createChannel, forwarding a signed GitHub delivery that the local app
 * verifies, query forwarding, and resuming across a server restart, with
 * Redis keeping the history (restarted servers in this process, on the port
 * the client keeps reconnecting to).
 */
import { createRequire } from 'node:module';
import SmeeClient from 'smee-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { startRedis, type RedisServer } from './redis-server.js';
import { freePort, githubSignature, startTestServer, WebhookApp } from './helpers.js';

const SECRET = 'smee-github-secret';
const quiet = { info: () => {}, error: () => {} };

const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as Array<{ name: string; examples: Array<Record<string, unknown>> }>;
const pullRequest = examples.find((e) => e.name === 'pull_request')!.examples[0];

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A smee-client forwarding `source` to `target`, started (connected) and stopped after the test. */
async function smee(source: string, target: string, options: { queryForwarding?: boolean } = {}): Promise<SmeeClient> {
  const client = new SmeeClient({ source, target, logger: quiet, ...options });
  await client.start();
  cleanup.push(() => client.stop());
  return client;
}

/** Publishes like GitHub: compact JSON, signed, its usual headers. */
function deliver(url: string, payload: unknown, delivery: string, event = 'pull_request'): Promise<Response> {
  const body = JSON.stringify(payload);
  return fetch(url, {
    method: 'POST',
    body,
    headers: {
      'content-type': 'application/json',
      'user-agent': 'GitHub-Hookshot/044aadd',
      'x-github-event': event,
      'x-github-delivery': delivery,
      'x-github-hook-id': '123',
      'x-hub-signature-256': githubSignature(SECRET, body),
    },
  });
}

describe('smee-client against hookbot serve --smee', () => {
  let server: HookbotServer;
  beforeAll(async () => {
    server = await startTestServer({ smee: true });
  });
  afterAll(async () => {
    await server.close();
  });

  it('mints with createChannel({ newChannelUrl }) and forwards a signed GitHub delivery that the app verifies', async () => {
    const source = await SmeeClient.createChannel({ newChannelUrl: `${server.url}/new` });
    expect(source).toMatch(new RegExp(`^${server.url}/[a-z2-7]{40}$`));
    const app = await WebhookApp.start(SECRET);
    cleanup.push(() => app.close());
    await smee(source, app.url);

    const res = await deliver(source, pullRequest, 'd-1');
    expect(res.status).toBe(200);
    const [got] = await app.waitFor(1);
    expect(got.method).toBe('POST');
    expect(got.url).toBe('/webhook');
    expect(got.body.toString()).toBe(JSON.stringify(pullRequest));
    expect(got.headers).toMatchObject({
      'content-type': 'application/json',
      'user-agent': 'GitHub-Hookshot/044aadd',
      'x-github-event': 'pull_request',
      'x-github-delivery': 'd-1',
      'x-github-hook-id': '123',
      'x-hub-signature-256': githubSignature(SECRET, got.body),
    });
    // smee-client makes a header of every top-level key but body and query: only the original headers, and
    // content-length and timestamp exactly as smee.io sends them.
    const extra = Object.keys(got.headers).filter((h) => !['host', 'connection', 'content-type', 'user-agent', 'content-length', 'accept', 'accept-language', 'accept-encoding', 'sec-fetch-mode', 'timestamp'].includes(h) && !h.startsWith('x-'));
    expect(extra).toEqual([]);
    expect(got.headers.timestamp).toMatch(/^\d{13}$/);
  });

  it('forwards the query string it was posted with, merged into the target query (and not with queryForwarding off)', async () => {
    const res = await fetch(`${server.url}/new`, { method: 'HEAD', redirect: 'manual' });
    const source = res.headers.get('location')!;
    const app = await WebhookApp.start();
    cleanup.push(() => app.close());
    await smee(source, `${app.url}?existing=1`);
    const plainApp = await WebhookApp.start();
    cleanup.push(() => plainApp.close());
    await smee(source, plainApp.url, { queryForwarding: false });

    expect((await fetch(`${source}?foo=bar&a%20b=c%26d`, { method: 'POST', body: '{"q":1}', headers: { 'content-type': 'application/json' } })).status).toBe(200);
    const [got] = await app.waitFor(1);
    expect(got.url).toBe('/webhook?existing=1&foo=bar&a+b=c%26d');
    expect(got.body.toString()).toBe('{"q":1}');
    const [plain] = await plainApp.waitFor(1);
    expect(plain.url).toBe('/webhook');
  });
});

describe('smee-client across a server restart (history in Redis)', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('receives what was published while the server was away, once, whether or not it had seen a message before', async () => {
    const port = await freePort();
    const options = { smee: true, redis: redis.url };
    let node: HookbotServer = await startTestServer({ ...options, bind: `127.0.0.1:${port}` });
    // Another node on the same Redis takes the publishes while the first one is down.
    const other = await startTestServer(options);
    cleanup.push(() => other.close());
    cleanup.push(() => node.close());

    const mint = await fetch(`${node.url}/new`, { redirect: 'manual' });
    const source = mint.headers.get('location')!;
    const id = source.slice(source.lastIndexOf('/') + 1);
    const app = await WebhookApp.start(SECRET);
    cleanup.push(() => app.close());
    await smee(source, app.url);

    // 1. Restarted before any message: the stream's start id is what the client resumes from.
    await node.close();
    expect((await deliver(`${other.url}/${id}`, { seq: 1 }, 'd-1', 'push')).status).toBe(200);
    node = await startTestServer({ ...options, bind: `127.0.0.1:${port}` });
    await app.waitFor(1, 20_000);

    // 2. Restarted after a live message: its id is the resume point.
    expect((await deliver(source, { seq: 2 }, 'd-2', 'push')).status).toBe(200);
    await app.waitFor(2);
    await node.close();
    expect((await deliver(`${other.url}/${id}`, { seq: 3 }, 'd-3', 'push')).status).toBe(200);
    expect((await deliver(`${other.url}/${id}`, { seq: 4 }, 'd-4', 'push')).status).toBe(200);
    node = await startTestServer({ ...options, bind: `127.0.0.1:${port}` });
    await app.waitFor(4, 20_000);
    expect((await deliver(source, { seq: 5 }, 'd-5', 'push')).status).toBe(200);
    await app.waitFor(5);

    expect(app.deliveries.map((d) => d.headers['x-github-delivery'])).toEqual(['d-1', 'd-2', 'd-3', 'd-4', 'd-5']);
    expect(app.deliveries.map((d) => d.body.toString())).toEqual([1, 2, 3, 4, 5].map((seq) => JSON.stringify({ seq })));
  }, 60_000);
});
