/**
 * `hookbot forward` and `hookbot sub` as real processes against a real
 * `hookbot serve` process: GitHub-signed deliveries to an express receiver,
 * server and client restarts mid-stream, a stalling proxy, --exec, and the
 * exit status of bad input. Needs `npm run build` first (dist/).
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { timingSafeEqual } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, connect, type Server as NetServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import { eventually, freePort, githubSignature, KEY, publishUntilAccepted, removeDir, ROOT, runCli, tempDir, token, type Proc } from './helpers.js';

const SECRET = 'e2e-github-secret';
const FAST = ['--min-backoff', '50ms', '--max-backoff', '300ms', '--retry-delay', '30ms'];

beforeAll(() => {
  if (!existsSync(join(ROOT, 'dist/cli/sub.js'))) throw new Error('run `npm run build` before this test');
});

const procs: Proc[] = [];
const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  for (const c of closers.splice(0)) await c();
});

function cli(args: string[], env: Record<string, string> = {}): Proc {
  const p = runCli(args, env);
  procs.push(p);
  return p;
}

/** `hookbot serve` on a given port (so it can be restarted on the same one), on its own store or on `dataDir`'s. */
async function serve(port: number, dataDir?: string): Promise<Proc> {
  const p = cli(['serve', '--bind', `127.0.0.1:${port}`, ...(dataDir ? ['--data-dir', dataDir] : [])], { HOOKBOT_KEY: KEY });
  await p.waitForLine(/Listening on/);
  return p;
}

async function stopProc(p: Proc, signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  p.child.kill(signal);
  return p.exit;
}

function subUrl(port: number, topic: string, tok = token(`/sub/${topic}`)): string {
  return `ws://${tok}@127.0.0.1:${port}/sub/${topic}`;
}


interface Delivery {
  id: string;
  seq: number;
  event: string;
  contentType: string;
  body: Buffer;
}

/** An express app that, like a real GitHub webhook consumer, checks X-Hub-Signature-256 on the raw body. */
async function receiver(respond: (d: Delivery, attempt: number) => number = () => 200) {
  const deliveries: Delivery[] = [];
  const attempts = new Map<number, number>();
  const badSignatures: string[] = [];
  const app = express();
  app.post('/webhook', express.raw({ type: () => true, limit: '5mb' }), (req, res) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const expected = Buffer.from(githubSignature(SECRET, body));
    const got = Buffer.from(String(req.headers['x-hub-signature-256'] ?? ''));
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      badSignatures.push(String(req.headers['x-hookbot-message-id']));
      res.status(401).send('bad signature');
      return;
    }
    const seq = Number(JSON.parse(body.toString()).seq);
    const d: Delivery = {
      id: String(req.headers['x-hookbot-message-id']),
      seq,
      event: String(req.headers['x-github-event']),
      contentType: String(req.headers['content-type']),
      body,
    };
    const n = (attempts.get(seq) ?? 0) + 1;
    attempts.set(seq, n);
    const status = respond(d, n);
    if (status < 300) deliveries.push(d);
    res.status(status).send('ok');
  });
  const server: Server = createHttpServer(app);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.closeIdleConnections?.();
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}/webhook`, deliveries, attempts, badSignatures, server };
}

/** A GitHub-style push delivery for sequence number `seq`. */
function githubEvent(seq: number): { body: Buffer; headers: Record<string, string> } {
  const body = Buffer.from(JSON.stringify({ seq, ref: 'refs/heads/main', note: 'ünïcødé ✓', pad: 'x'.repeat(seq % 7) }));
  return {
    body,
    headers: {
      'content-type': 'application/json',
      'x-github-event': 'push',
      'x-github-delivery': `delivery-${seq}`,
      'x-hub-signature-256': githubSignature(SECRET, body),
    },
  };
}

/** A signed GitHub event `seq` to /pub/<topic>, retried until the server says 200. */
function publishEventUntilAccepted(port: number, topic: string, seq: number, stats: { ambiguous: number }): Promise<string> {
  const { body, headers } = githubEvent(seq);
  return publishUntilAccepted(`http://127.0.0.1:${port}/pub/${topic}`, seq, body, { ...headers, authorization: `Bearer ${token(`/pub/${topic}`)}` }, stats);
}

function summaryLines(p: Proc): Array<Record<string, unknown>> {
  return p
    .stderr()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => typeof l.msg === 'string' && l.msg.startsWith('delivered '));
}

describe('hookbot forward', () => {
  it('re-delivers the original request: headers, exact bytes, valid GitHub signature, one summary line each', async () => {
    const port = await freePort();
    await serve(port);
    const rx = await receiver();
    const fwd = cli(['forward', subUrl(port, 'gh/app'), '--to', rx.url, ...FAST]);
    await fwd.waitForLine(/"msg":"connected"/);
    const stats = { ambiguous: 0 };
    const ids: string[] = [];
    for (let seq = 1; seq <= 5; seq++) ids.push(await publishEventUntilAccepted(port, 'gh/app', seq, stats));
    await eventually(() => rx.deliveries.length >= 5, 10_000, '5 deliveries');
    expect(rx.badSignatures).toEqual([]);
    expect(rx.deliveries.map((d) => d.id)).toEqual(ids);
    expect(rx.deliveries.map((d) => d.seq)).toEqual([1, 2, 3, 4, 5]);
    for (const d of rx.deliveries) {
      expect(d.event).toBe('push');
      expect(d.contentType).toBe('application/json');
      expect(Buffer.compare(d.body, githubEvent(d.seq).body)).toBe(0);
    }
    await eventually(() => summaryLines(fwd).length >= 5, 5000, 'summary lines');
    const lines = summaryLines(fwd);
    expect(lines.map((l) => l.id)).toEqual(ids);
    for (const l of lines) {
      expect(l).toMatchObject({ event: 'push', status: 200 });
      expect(typeof l.ms).toBe('number');
    }
    // The token never reaches a log line.
    expect(fwd.stderr()).not.toContain(token('/sub/gh/app'));
  });

  it('retries 5xx and connection errors with backoff, does not retry 4xx, and keeps order', async () => {
    const port = await freePort();
    await serve(port);
    const rx = await receiver((d, attempt) => {
      if (d.seq === 2 && attempt <= 2) return 503;
      if (d.seq === 3) return 422;
      return 200;
    });
    const fwd = cli(['forward', subUrl(port, 'retry'), '--to', rx.url, '--retries', '4', ...FAST]);
    await fwd.waitForLine(/"msg":"connected"/);
    const stats = { ambiguous: 0 };
    for (let seq = 1; seq <= 4; seq++) await publishEventUntilAccepted(port, 'retry', seq, stats);
    await eventually(() => rx.deliveries.length >= 3, 10_000, 'deliveries');
    expect(rx.deliveries.map((d) => d.seq)).toEqual([1, 2, 4]);
    expect(rx.attempts.get(2)).toBe(3);
    expect(rx.attempts.get(3)).toBe(1);
    expect(fwd.stderr()).toMatch(/refused \(HTTP 422\); not retried/);

    // A target that is not listening: connection refused is retried, then given up on.
    const deadPort = await freePort();
    const fwd2 = cli(['forward', subUrl(port, 'retry'), '--since', '0', '--to', `http://127.0.0.1:${deadPort}/x`, '--retries', '2', ...FAST]);
    await fwd2.waitForLine(/giving up on it/, 10_000);
    const failures = fwd2.stderr().split('\n').filter((l) => l.includes('"attempt"') && l.includes('ECONNREFUSED'));
    expect(failures.length).toBeGreaterThanOrEqual(3);
  });

  it('delivers to a self-signed local HTTPS target with --insecure or --ca, and not without', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-tls-'));
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    const received: string[] = [];
    const tls = createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push(`${String(req.headers['x-github-event'])}:${Buffer.concat(chunks).toString()}`);
        res.end('ok');
      });
    });
    tls.listen(0, '127.0.0.1');
    await once(tls, 'listening');
    closers.push(() => new Promise<void>((resolve) => tls.close(() => resolve())));
    const target = `https://127.0.0.1:${(tls.address() as { port: number }).port}/hook`;

    const port = await freePort();
    await serve(port);
    const stats = { ambiguous: 0 };
    await publishEventUntilAccepted(port, 'tls', 1, stats);
    const base = ['forward', subUrl(port, 'tls'), '--since', '0', '--to', target, '--retries', '0', ...FAST];
    const untrusted = cli(base);
    await untrusted.waitForLine(/giving up on it/);
    expect(untrusted.stderr()).toMatch(/self-signed certificate/);
    expect(received).toEqual([]);

    const insecure = cli([...base, '--insecure']);
    const withCa = cli([...base, '--ca', join(dir, 'cert.pem')]);
    await Promise.all([insecure.waitForLine(/"msg":"delivered /), withCa.waitForLine(/"msg":"delivered /)]);
    const body = githubEvent(1).body.toString();
    expect(received).toEqual([`push:${body}`, `push:${body}`]);
  });

  it('survives a server restart mid-stream: every accepted message exactly once, in order', async () => {
    const port = await freePort();
    // The restarted server opens the same store, so the client resumes from it.
    const dataDir = tempDir();
    closers.push(async () => removeDir(dataDir));
    const server = await serve(port, dataDir);
    const rx = await receiver();
    const fwd = cli(['forward', subUrl(port, 'restart'), '--to', rx.url, ...FAST]);
    await fwd.waitForLine(/"msg":"connected"/);

    const accepted: string[] = [];
    const stats = { ambiguous: 0 };
    const total = 60;
    const publisher = (async () => {
      for (let seq = 1; seq <= total; seq++) {
        accepted.push(await publishEventUntilAccepted(port, 'restart', seq, stats));
        await new Promise((r) => setTimeout(r, 10));
      }
    })();

    await eventually(() => rx.deliveries.length >= 20, 15_000, '20 deliveries before the restart');
    await stopProc(server);
    // The publisher keeps trying (connection refused) while the server is down; cli() children are killed after each test.
    await serve(port, dataDir);
    await publisher;
    await eventually(() => rx.deliveries.length >= accepted.length, 20_000, `all ${total} deliveries`);
    expect(fwd.stderr()).toMatch(/"msg":"disconnected"/);

    const got = rx.deliveries.map((d) => d.id);
    expect(new Set(got).size).toBe(got.length); // nothing twice
    expect(got.filter((id) => accepted.includes(id))).toEqual(accepted); // nothing missed, in order
    // Anything else can only be a publish whose answer was lost in the restart.
    expect(got.length - accepted.length).toBeLessThanOrEqual(stats.ambiguous);
    const seqs = rx.deliveries.map((d) => d.seq);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    expect(rx.badSignatures).toEqual([]);
  });

  it('survives a client restart with --state-file: exactly once, in order', async () => {
    const port = await freePort();
    await serve(port);
    const rx = await receiver();
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-e2e-'));
    const stateFile = join(dir, 'forward.state');
    const args = ['forward', subUrl(port, 'state'), '--to', rx.url, '--state-file', stateFile, ...FAST];
    const first = cli(args);
    await first.waitForLine(/"msg":"connected"/);

    const accepted: string[] = [];
    const stats = { ambiguous: 0 };
    const total = 50;
    const publisher = (async () => {
      for (let seq = 1; seq <= total; seq++) {
        accepted.push(await publishEventUntilAccepted(port, 'state', seq, stats));
        await new Promise((r) => setTimeout(r, 10));
      }
    })();

    await eventually(() => rx.deliveries.length >= 15, 15_000, '15 deliveries before the client restart');
    const exit = await stopProc(first);
    expect(exit.code).toBe(0);
    const saved = readFileSync(stateFile, 'utf8').trim();
    expect(saved).toBe(rx.deliveries.at(-1)!.id);

    // Messages published while no client runs stay in the server's history.
    const second = cli(args);
    await publisher;
    await eventually(() => rx.deliveries.length >= total, 20_000, `all ${total} deliveries`);
    expect(rx.deliveries.map((d) => d.id)).toEqual(accepted);
    expect(rx.deliveries.map((d) => d.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    await eventually(() => readFileSync(stateFile, 'utf8').trim() === accepted.at(-1), 5000, 'state file at the last id');
    expect(stats.ambiguous).toBe(0);
    await stopProc(second);
  });

  it('detects a connection that stalls without closing (a proxy that stops passing bytes) and recovers', async () => {
    const port = await freePort();
    await serve(port);
    const proxy = await stallingProxy(port);
    const rx = await receiver();
    const deadlineMs = 1000;
    const fwd = cli([
      'forward',
      subUrl(proxy.port, 'stall'),
      '--to',
      rx.url,
      '--ping-interval',
      '200ms',
      '--deadline',
      `${deadlineMs}ms`,
      ...FAST,
    ]);
    await fwd.waitForLine(/"msg":"connected"/);
    const stats = { ambiguous: 0 };
    const before = await publishEventUntilAccepted(port, 'stall', 1, stats);
    await eventually(() => rx.deliveries.length === 1, 5000, 'first delivery');

    proxy.stallAll();
    const stalledAt = Date.now();
    const during = await publishEventUntilAccepted(port, 'stall', 2, stats);
    await fwd.waitForLine(/no traffic from the server/, 5000);
    await eventually(() => rx.deliveries.length === 2, 5000, 'delivery after recovery');
    const recoveredMs = Date.now() - stalledAt;
    expect(recoveredMs).toBeLessThan(deadlineMs + 1500);
    expect(rx.deliveries.map((d) => d.id)).toEqual([before, during]);
    expect(proxy.connections()).toBeGreaterThanOrEqual(2);
  });
});

/** A TCP proxy whose existing connections can be frozen: nothing passes, nothing closes. */
async function stallingProxy(targetPort: number) {
  const pairs: Array<[Socket, Socket]> = [];
  let count = 0;
  const server: NetServer = createNetServer((client) => {
    count++;
    const upstream = connect(targetPort, '127.0.0.1');
    client.pipe(upstream);
    upstream.pipe(client);
    const destroy = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', destroy);
    upstream.on('error', destroy);
    client.on('close', destroy);
    upstream.on('close', destroy);
    pairs.push([client, upstream]);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(() => {
    for (const [a, b] of pairs) {
      a.destroy();
      b.destroy();
    }
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port: (server.address() as { port: number }).port,
    connections: () => count,
    stallAll() {
      for (const [a, b] of pairs) {
        a.unpipe(b);
        b.unpipe(a);
        a.pause();
        b.pause();
      }
    },
  };
}

describe('hookbot sub', () => {
  it('prints bodies per line (topic<TAB>body when recursive) and --json objects', async () => {
    const port = await freePort();
    await serve(port);
    const plain = cli(['sub', subUrl(port, 'print/'), ...FAST]);
    const json = cli(['sub', subUrl(port, 'print/x'), '--json', ...FAST]);
    await plain.waitForLine(/"msg":"connected"/);
    await json.waitForLine(/"msg":"connected"/);
    const pub = (topic: string, body: Buffer, headers: Record<string, string> = {}) =>
      fetch(`http://127.0.0.1:${port}/pub/${topic}`, {
        method: 'POST',
        body: new Uint8Array(body),
        headers: { ...headers, authorization: `Bearer ${token('/pub/print/')}` },
      }).then((r) => r.headers.get('x-hookbot-message-id')!);
    const id1 = await pub('print/x', Buffer.from('first'), { 'x-gitlab-event': 'Push Hook', 'content-type': 'text/plain' });
    const id2 = await pub('print/x', Buffer.from([0, 1, 2, 0xff]));
    await pub('print/y', Buffer.from('second\n'));
    await eventually(() => plain.stdout().split('\n').length > 3, 5000, 'plain lines');
    await eventually(() => json.stdout().split('\n').length > 2, 5000, 'json lines');
    const lines = plain.stdout().split('\n');
    expect(lines[0]).toBe('print/x\tfirst');
    expect(lines[2]).toBe('print/y\tsecond');
    const objs = json.stdout().trim().split('\n').map((l) => JSON.parse(l));
    expect(objs[0]).toMatchObject({ id: id1, topic: 'print/x', body: 'first', headers: { 'x-gitlab-event': 'Push Hook', 'content-type': 'text/plain' } });
    expect(objs[1]).toMatchObject({ id: id2, topic: 'print/x', encoding: 'base64', body: Buffer.from([0, 1, 2, 0xff]).toString('base64') });
  });

  it('--exec runs one at a time, in order, with body on stdin and HOOKBOT_* env; retries with --retry', async () => {
    const port = await freePort();
    await serve(port);
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-exec-'));
    const script = join(dir, 'handler.sh');
    // Appends start/end markers (so overlap would show), saves the body, and fails on demand.
    writeFileSync(
      script,
      [
        'set -e',
        'echo "start $HOOKBOT_ID" >> "$OUT/log"',
        'cat > "$OUT/$HOOKBOT_ID.body"',
        'echo "env $HOOKBOT_ID|$HOOKBOT_TOPIC|$HOOKBOT_EVENT" >> "$OUT/log"',
        'sleep 0.05',
        'n=$(cat "$OUT/$HOOKBOT_ID.count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$OUT/$HOOKBOT_ID.count"',
        'echo "end $HOOKBOT_ID" >> "$OUT/log"',
        'if grep -q failtwice "$OUT/$HOOKBOT_ID.body" && [ $n -le 2 ]; then exit 3; fi',
        'if grep -q alwaysfail "$OUT/$HOOKBOT_ID.body"; then exit 4; fi',
        'exit 0',
      ].join('\n'),
    );
    const sub = cli(['sub', subUrl(port, 'exec'), '--exec', `sh ${script}`, '--retry', '2', ...FAST], { OUT: dir });
    await sub.waitForLine(/"msg":"connected"/);
    const bodies = [
      Buffer.from('one'),
      Buffer.from('failtwice'),
      Buffer.from([0, 1, 2, 3, 0xfe, 0xff]),
      Buffer.from('alwaysfail'),
      Buffer.from('five'),
    ];
    const ids: string[] = [];
    for (const [i, body] of bodies.entries()) {
      const res = await fetch(`http://127.0.0.1:${port}/pub/exec`, {
        method: 'POST',
        body,
        headers: { authorization: `Bearer ${token('/pub/exec')}`, ...(i === 0 ? { 'x-github-event': 'pull_request' } : {}) },
      });
      ids.push(res.headers.get('x-hookbot-message-id')!);
    }
    await eventually(() => existsSync(join(dir, `${ids[4]}.count`)) && readFileSync(join(dir, 'log'), 'utf8').includes(`end ${ids[4]}`), 15_000, 'last exec');

    const log = readFileSync(join(dir, 'log'), 'utf8').trim().split('\n');
    // Strictly sequential: every start is followed by its own env and end before the next start.
    const runs: string[] = [];
    for (let i = 0; i < log.length; i += 3) {
      const id = log[i].split(' ')[1];
      expect(log[i]).toBe(`start ${id}`);
      expect(log[i + 1].startsWith(`env ${id}|exec|`)).toBe(true);
      expect(log[i + 2]).toBe(`end ${id}`);
      runs.push(id);
    }
    // One run each, three for failtwice (two retries), three for alwaysfail (then given up), in order.
    expect(runs).toEqual([ids[0], ids[1], ids[1], ids[1], ids[2], ids[3], ids[3], ids[3], ids[4]]);
    expect(log[1]).toBe(`env ${ids[0]}|exec|pull_request`);
    expect(log[4]).toBe(`env ${ids[1]}|exec|`);
    bodies.forEach((b, i) => expect(Buffer.compare(readFileSync(join(dir, `${ids[i]}.body`)), b)).toBe(0));
    expect(sub.stderr()).toMatch(new RegExp(`exec ${ids[3]} failed \\(exit code 4\\); giving up on it`));
    expect(sub.stderr()).toMatch(new RegExp(`exec ${ids[1]} failed \\(exit code 3\\); retrying`));
  });
});

describe('bad input', () => {
  it('bad URLs, refused tokens and bad options: one clear line on stderr, exit code 2', async () => {
    const port = await freePort();
    await serve(port);
    const wrong = 'f'.repeat(40);
    const cases: Array<{ args: string[]; match: RegExp }> = [
      { args: ['sub', 'ftp://host/sub/x'], match: /unsupported URL scheme/ },
      { args: ['sub', 'not a url'], match: /invalid URL/ },
      { args: ['sub', `ws://${wrong}@127.0.0.1:${port}/sub/foo`], match: /refused: 401 Unauthorized/ },
      { args: ['forward', `ws://${wrong}@127.0.0.1:${port}/sub/foo`, '--to', 'http://127.0.0.1:1/x'], match: /401/ },
      { args: ['forward', subUrl(port, 'foo'), '--to', 'ftp://x/'], match: /--to must be an http/ },
      { args: ['sub', subUrl(port, 'foo'), '--deadline', 'soon'], match: /--deadline must be a duration/ },
      { args: ['sub', `ws://127.0.0.1:${port}/unsafe/sub/foo`, '--token', token('/unsafe/sub/foo')], match: /X-Hookbot-Unsafe-Is-Ok header required/ },
    ];
    const runs = cases.map((c) => ({ ...c, p: cli(c.args) }));
    for (const { args, match, p } of runs) {
      const exit = await p.exit;
      const lines = p.stderr().trim().split('\n');
      expect({ args, code: exit.code }).toEqual({ args, code: 2 });
      expect(lines.length, p.stderr()).toBe(1);
      expect(lines[0]).toMatch(/^hookbot: /);
      expect(lines[0]).toMatch(match);
      expect(lines[0]).not.toContain(wrong);
      expect(p.stdout()).toBe('');
    }
  });
});
