/**
 * The durable default store, end to end with real `hookbot serve` processes:
 * a 200 means the message survives the process being killed at any instant,
 * one process per data directory, refusal of files that are not ours, a full
 * disk answered with 503 and recovered from, router dedupe across restarts,
 * and a data directory that stays bounded under churn.
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_RETENTION } from '../src/server/backends/backend.js';
import { SqliteBackend } from '../src/server/backends/sqlite.js';
import { STORE_FILE } from '../src/server/backends/sqlite-file.js';
import { ConfigError, resolveServeConfig } from '../src/server/config.js';
import { createLogger } from '../src/server/log.js';
import { startServer, type HookbotServer } from '../src/server/server.js';
import { compareIds, Message, type MessageJSON } from '../src/protocol/message.js';
import { bearer, bodyOf, eventually, freePort, githubSignature, Inbox, KEY, removeDir, runCli, startServeProcess, tempDir, wsConnect, type Proc } from './helpers.js';

const procs: Proc[] = [];
const dirs: string[] = [];
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  const running = procs.splice(0);
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await Promise.all(running.map((p) => p.exit));
  for (const c of closers.splice(0)) await c();
  for (const d of dirs.splice(0)) removeDir(d);
});

function dataDir(): string {
  const d = tempDir('hookbot-durable-');
  dirs.push(d);
  return d;
}

async function serve(dir: string, args: string[] = []): Promise<Proc & { port: number; url: string }> {
  const p = await startServeProcess(['--data-dir', dir, ...args]);
  procs.push(p);
  return p;
}

const wsBase = (url: string) => url.replace(/^http/, 'ws');

interface Envelope {
  type: 'message' | 'gap' | 'live';
  since?: string;
}

/** A hookbot.v1 subscriber, with its messages decoded. */
async function subscribeV1(url: string, path: string): Promise<{ inbox: Inbox; close(): void; messages(): Message[]; envelopes(): Envelope[] }> {
  const ws = await wsConnect(wsBase(url) + path, { headers: bearer(path.split('?')[0]), protocol: 'hookbot.v1' });
  const inbox = new Inbox(ws);
  const envelopes = () => inbox.messages.map((m) => JSON.parse(m.data.toString()) as Envelope);
  return {
    inbox,
    close: () => ws.terminate(),
    envelopes,
    messages: () => inbox.messages.map((m) => JSON.parse(m.data.toString()) as MessageJSON).filter((e) => e.type === 'message').map((e) => Message.fromJSON(e)),
  };
}

/** Everything retained under `prefix` after `since`, read as a resuming subscriber reads it. */
async function replay(url: string, prefix: string, since = '0'): Promise<{ gap: boolean; messages: Message[] }> {
  const sub = await subscribeV1(url, `/sub/${prefix}?since=${since}`);
  try {
    await sub.inbox.until(() => sub.envelopes().some((e) => e.type === 'live'), 20_000, 'the end of the replay');
    return { gap: sub.envelopes().some((e) => e.type === 'gap'), messages: sub.messages() };
  } finally {
    sub.close();
  }
}

interface Sent {
  id: string;
  topic: string;
  body: Buffer;
  tag: string;
}

const WORKERS = 24;

/** A body that says who sent it (round, worker, sequence) followed by random bytes of any value, NUL and 0xff included. */
function makeBody(round: number, worker: number, seq: number): Buffer {
  const head = Buffer.alloc(6);
  head.writeUInt8(round, 0);
  head.writeUInt8(worker, 1);
  head.writeUInt32BE(seq, 2);
  return Buffer.concat([head, randomBytes(Math.floor(Math.random() * 1500))]);
}

/**
 * WORKERS publishers, one publish at a time each, until the server is gone
 * (a connection error). Only publishes answered 200 are recorded.
 */
function publishUntilGone(url: string, round: number, acked: Sent[], statuses: number[]): Promise<void> {
  return Promise.all(
    Array.from({ length: WORKERS }, async (_, worker) => {
      const topic = `crash/t${worker % 4}`;
      for (let seq = 0; ; seq++) {
        const body = makeBody(round, worker, seq);
        const tag = `${round}-${worker}-${seq}`;
        let res: Response;
        try {
          res = await fetch(`${url}/pub/${topic}`, { method: 'POST', body: bodyOf(body), headers: { ...bearer(`/pub/${topic}`), 'x-crash': tag } });
          await res.arrayBuffer();
        } catch {
          return;
        }
        if (res.status === 200) acked.push({ id: res.headers.get('x-hookbot-message-id')!, topic, body, tag });
        else statuses.push(res.status);
      }
    }),
  ).then(() => undefined);
}

/**
 * Every acknowledged message, and every one a live subscriber saw, is in the
 * replay with its topic, header and bytes, in id order, with no gap; nothing
 * else is there but the few publishes in flight when a server died; a resume
 * from the middle gets exactly the rest.
 */
async function expectEverything(url: string, acked: Sent[], seen: Map<string, Buffer>, ambiguous: number): Promise<void> {
  const { gap, messages } = await replay(url, 'crash/');
  expect(gap).toBe(false);
  for (let i = 1; i < messages.length; i++) expect(compareIds(messages[i - 1].id, messages[i].id)).toBe(-1);
  const byId = new Map(messages.map((m) => [m.id, m]));
  for (const a of acked) {
    const m = byId.get(a.id);
    expect(m, `acknowledged ${a.tag} (${a.id}) is missing`).toBeDefined();
    expect(m!.topic).toBe(a.topic);
    expect(m!.headers['x-crash']).toBe(a.tag);
    expect(Buffer.compare(m!.body, a.body)).toBe(0);
  }
  for (const [id, body] of seen) expect(Buffer.compare(byId.get(id)?.body ?? Buffer.alloc(0), body), `delivered ${id} is missing`).toBe(0);
  // Each worker published one at a time, so its messages are in its order.
  const lastSeq = new Map<string, number>();
  for (const m of messages) {
    const who = `${m.body[0]}-${m.body[1]}`;
    const seq = m.body.readUInt32BE(2);
    expect(seq).toBeGreaterThan(lastSeq.get(who) ?? -1);
    lastSeq.set(who, seq);
  }
  expect(messages.length - acked.length).toBeLessThanOrEqual(ambiguous);
  if (acked.length === 0) return;
  const mid = acked[Math.floor(acked.length / 2)];
  const rest = await replay(url, 'crash/', mid.id);
  expect(rest.gap).toBe(false);
  expect(rest.messages.map((m) => m.id)).toEqual(messages.filter((m) => compareIds(m.id, mid.id) > 0).map((m) => m.id));
}

describe('a 200 is on disk', () => {
  it.each([
    ['SIGKILL', 4],
    ['SIGTERM', 2],
  ] as const)(
    'every acknowledged message is replayed after %s mid-stream (%i times), bytes and order intact, with no gap',
    async (signal, rounds) => {
      const dir = dataDir();
      const acked: Sent[] = [];
      const seen = new Map<string, Buffer>();
      const flags = ['--history', '100000', '--history-bytes', '1GiB', '--keep-header', 'x-crash'];
      let ambiguous = 0;
      for (let round = 0; round < rounds; round++) {
        const srv = await serve(dir, flags);
        await expectEverything(srv.url, acked, seen, ambiguous);
        const live = await subscribeV1(srv.url, '/sub/crash/');
        const before = acked.length;
        const statuses: number[] = [];
        const publishing = publishUntilGone(srv.url, round, acked, statuses);
        // Kill it while every worker has a publish in flight.
        await eventually(() => acked.length >= before + 150, 30_000, '150 acknowledged publishes');
        srv.child.kill(signal);
        await publishing;
        const exit = await srv.exit;
        if (signal === 'SIGKILL') expect(exit.signal).toBe('SIGKILL');
        else expect(exit.code).toBe(0);
        // Shutting down may refuse publishes (503), never anything else.
        expect(statuses.filter((s) => s !== 503)).toEqual([]);
        for (const m of live.messages()) seen.set(m.id, m.body);
        live.close();
        ambiguous += WORKERS;
      }
      const last = await serve(dir, flags);
      await expectEverything(last.url, acked, seen, ambiguous);
      // Ids go on growing after every restart.
      const next = await fetch(`${last.url}/pub/crash/t0`, { method: 'POST', body: 'after', headers: bearer('/pub/crash/t0') });
      expect(next.status).toBe(200);
      for (const a of acked) expect(compareIds(next.headers.get('x-hookbot-message-id')!, a.id)).toBe(1);
    },
    180_000,
  );
});

describe('one process per data directory', () => {
  it('refuses a second serve on the same directory with exit 1, naming it; the first is unharmed; a kill -9 leaves no stale lock', async () => {
    const dir = dataDir();
    const first = await serve(dir);
    const live = new Inbox(await wsConnect(`${wsBase(first.url)}/sub/one`, { headers: bearer('/sub/one') }));
    const publishOne = (url: string, body: string) => fetch(`${url}/pub/one`, { method: 'POST', body, headers: bearer('/pub/one') });
    expect((await publishOne(first.url, 'before')).status).toBe(200);

    const second = runCli(['serve', '--bind', `127.0.0.1:${await freePort()}`, '--data-dir', dir], { HOOKBOT_KEY: KEY });
    procs.push(second);
    expect((await second.exit).code).toBe(1);
    expect(second.stderr()).toContain(`data directory ${dir} is in use by another hookbot serve`);
    expect(second.stdout()).not.toMatch(/Listening on/);

    expect((await publishOne(first.url, 'after')).status).toBe(200);
    expect((await live.waitFor(2)).map((m) => m.data.toString())).toEqual(['before', 'after']);
    first.child.kill('SIGKILL');
    await first.exit;

    const third = await serve(dir);
    expect((await replay(third.url, 'one', '0')).messages.map((m) => m.body.toString())).toEqual(['before', 'after']);
  });
});

describe('the inspector after a restart', () => {
  it('lists the stored topics and messages a killed server kept', async () => {
    const dir = dataDir();
    const a = await serve(dir);
    for (const body of ['one', 'two']) expect((await fetch(`${a.url}/pub/seen/x`, { method: 'POST', body, headers: bearer('/pub/seen/x') })).status).toBe(200);
    a.child.kill('SIGKILL');
    await a.exit;
    const b = await serve(dir);
    const topics = (await (await fetch(`${b.url}/_/api/topics`, { headers: bearer('/_/') })).json()) as { topics: Array<{ topic: string; messages: number }> };
    expect(topics.topics).toContainEqual(expect.objectContaining({ topic: 'seen/x', messages: 2 }));
    const recent = (await (await fetch(`${b.url}/_/api/messages?topic=seen/x`, { headers: bearer('/_/') })).json()) as { messages: Array<{ body: string }> };
    expect(recent.messages.map((m) => m.body)).toEqual(['one', 'two']);
  });
});

describe('refusing what is not ours', () => {
  it('refuses to start on a file that is not a store, naming it, and leaves it as it was', async () => {
    const dir = dataDir();
    const file = join(dir, STORE_FILE);
    const notes = Buffer.from('my notes, not a database\n'.repeat(500));
    writeFileSync(file, notes);
    const p = runCli(['serve', '--bind', '127.0.0.1:0', '--data-dir', dir], { HOOKBOT_KEY: KEY });
    procs.push(p);
    expect((await p.exit).code).toBe(1);
    expect(p.stderr()).toContain(`${file} is not a hookbot data file`);
    expect(Buffer.compare(readFileSync(file), notes)).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['hookbot.db', 'hookbot.lock']);
  });

  it('names the data directory it cannot create', async () => {
    const dir = dataDir();
    writeFileSync(join(dir, 'file'), 'x');
    const p = runCli(['serve', '--bind', '127.0.0.1:0', '--data-dir', join(dir, 'file', 'data')], { HOOKBOT_KEY: KEY });
    procs.push(p);
    expect((await p.exit).code).toBe(1);
    expect(p.stderr()).toContain(`cannot create data directory ${join(dir, 'file', 'data')}: ENOTDIR`);
  });
});

describe('a full disk', () => {
  it('answers 503 naming the reason (never 200 for a message it did not keep), /readyz says so, and recovers when space returns', async () => {
    const dir = dataDir();
    const backend = new SqliteBackend(dir, DEFAULT_RETENTION);
    const config = resolveServeConfig({ bind: '127.0.0.1:0', key: KEY, dataDir: dir }, {});
    const server: HookbotServer = await startServer(config, createLogger('silent'), backend);
    closers.push(() => server.close());
    const live = await subscribeV1(server.url, '/sub/full');
    await live.inbox.waitFor(1); // {"type":"live"}
    const post = (body: Buffer) => fetch(`${server.url}/pub/full`, { method: 'POST', body: bodyOf(body), headers: bearer('/pub/full') });
    const accepted: string[] = [];
    const first = await post(Buffer.from('first'));
    expect(first.status).toBe(200);
    accepted.push(first.headers.get('x-hookbot-message-id')!);

    backend.setMaxPageCount(backend.pageCount() + 8);
    let refused: Response | undefined;
    for (let i = 0; i < 100 && !refused; i++) {
      const res = await post(randomBytes(32 * 1024));
      if (res.status === 200) accepted.push(res.headers.get('x-hookbot-message-id')!);
      else refused = res;
    }
    expect(refused?.status).toBe(503);
    expect(refused!.headers.get('retry-after')).toBe('1');
    expect(await refused!.text()).toBe('503 Service Unavailable: storage full (the disk or the store file is full); the message was not stored\n');
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toMatch(/backend sqlite not ready/);
    expect((await post(randomBytes(32 * 1024))).status).toBe(503);

    backend.setMaxPageCount(1_000_000_000);
    const back = await post(Buffer.from('space again'));
    expect(back.status).toBe(200);
    accepted.push(back.headers.get('x-hookbot-message-id')!);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);

    await live.inbox.until(() => live.messages().length === accepted.length, 5000, 'deliveries');
    expect(live.messages().map((m) => m.id)).toEqual(accepted);
    expect((await server.broker.history('full')).messages.map((m) => m.id)).toEqual(accepted);
    live.close();
  });
});

describe('router dedupe survives restarts', () => {
  const SECRET = 'durable secret';
  const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as Array<{ name: string; examples: Array<Record<string, unknown>> }>;
  const branchPush = examples.find((e) => e.name === 'push')!.examples.find((p) => p.ref === 'refs/heads/master')!;
  const BRANCH = '/sub/github.com/repo/Codertocat/Hello-World/branch/master';

  async function hook(url: string, org: string, delivery: string, sha: string): Promise<Response> {
    const body = Buffer.from(JSON.stringify({ ...branchPush, after: sha.repeat(40) }));
    const res = await fetch(`${url}/unsafe/pub/github.com/${org}/Codertocat?extra-metadata=github`, {
      method: 'POST',
      body,
      headers: {
        'content-type': 'application/json',
        'x-github-event': 'push',
        'x-github-delivery': delivery,
        'x-hub-signature-256': githubSignature(SECRET, body),
      },
    });
    expect(res.status).toBe(200);
    return res;
  }

  it('a redelivery after a kill -9 is recognised: by its idempotency key on the same feed, by the router on another', async () => {
    const dir = dataDir();
    const flags = ['--router', 'github', '--github-secret', SECRET];
    const a = await serve(dir, flags);
    const before = new Inbox(await wsConnect(wsBase(a.url) + BRANCH, { headers: bearer(BRANCH) }));
    const original = (await hook(a.url, 'org', 'delivery-1', 'a')).headers.get('x-hookbot-message-id');
    expect(JSON.parse((await before.waitFor(1))[0].data.toString())).toMatchObject({ SHA: 'a'.repeat(40) });
    a.child.kill('SIGKILL');
    await a.exit;

    const b = await serve(dir, flags);
    const after = new Inbox(await wsConnect(wsBase(b.url) + BRANCH, { headers: bearer(BRANCH) }));
    // Same feed, same delivery id: the store answers with the original message and stores nothing.
    expect((await hook(b.url, 'org', 'delivery-1', 'a')).headers.get('x-hookbot-message-id')).toBe(original);
    // Another feed topic: stored, but the router remembers the delivery and does not re-publish it.
    await hook(b.url, 'other-org', 'delivery-1', 'a');
    await hook(b.url, 'org', 'delivery-2', 'b');
    const [m] = await after.waitFor(1);
    expect(JSON.parse(m.data.toString())).toMatchObject({ SHA: 'b'.repeat(40) });
    expect(after.messages.length).toBe(1);
  });
});

describe('retention bounds the data directory', () => {
  it('stays below twice --history-total-bytes under sustained churn', async () => {
    const dir = dataDir();
    const total = 8 * 1024 * 1024;
    const srv = await serve(dir, ['--history-total-bytes', String(total), '--history', '100000', '--history-bytes', '1GiB']);
    const dirSize = () => readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    let sent = 0;
    let largest = 0;
    await Promise.all(
      Array.from({ length: 16 }, async (_, w) => {
        for (let i = 0; sent < 6 * total; i++) {
          const body = randomBytes(Math.floor(Math.random() ** 3 * 64 * 1024));
          sent += body.length;
          const topic = `churn/${(w * 7 + i) % 50}`;
          const res = await fetch(`${srv.url}/pub/${topic}`, { method: 'POST', body, headers: bearer(`/pub/${topic}`) });
          await res.arrayBuffer();
          expect(res.status).toBe(200);
          largest = Math.max(largest, dirSize());
        }
      }),
    );
    expect(largest).toBeLessThan(2 * total);
    // And what is retained is what the limit allows: the newest, about total's worth.
    const kept = await replay(srv.url, 'churn/');
    const keptBytes = kept.messages.reduce((n, m) => n + m.body.length, 0);
    expect(keptBytes).toBeLessThanOrEqual(total);
    expect(keptBytes).toBeGreaterThan(total / 2);
  }, 120_000);
});

describe('store options', () => {
  it('default to ./hookbot-data; --memory, --data-dir, --fsync and their environment variables; --redis wins with a warning', () => {
    const base = { key: 'k' };
    expect(resolveServeConfig(base, {})).toMatchObject({ dataDir: join(process.cwd(), 'hookbot-data'), fsync: 'normal' });
    expect(resolveServeConfig({ ...base, dataDir: '/var/lib/hookbot' }, {})).toMatchObject({ dataDir: '/var/lib/hookbot' });
    expect(resolveServeConfig(base, { HOOKBOT_DATA_DIR: '/srv/h', HOOKBOT_FSYNC: 'always' })).toMatchObject({ dataDir: '/srv/h', fsync: 'always' });
    expect(resolveServeConfig({ ...base, memory: true }, {}).dataDir).toBeUndefined();
    expect(resolveServeConfig(base, { HOOKBOT_MEMORY: '1' }).dataDir).toBeUndefined();
    // A flag beats the other choice's environment variable.
    expect(resolveServeConfig({ ...base, dataDir: '/d' }, { HOOKBOT_MEMORY: '1' }).dataDir).toBe('/d');
    expect(resolveServeConfig({ ...base, memory: true }, { HOOKBOT_DATA_DIR: '/d' }).dataDir).toBeUndefined();
    expect(() => resolveServeConfig({ ...base, memory: true, dataDir: '/d' }, {})).toThrow('--memory and --data-dir cannot be used together');
    expect(() => resolveServeConfig(base, { HOOKBOT_MEMORY: 'true', HOOKBOT_DATA_DIR: '/d' })).toThrow(/HOOKBOT_MEMORY and HOOKBOT_DATA_DIR/);
    expect(() => resolveServeConfig(base, { HOOKBOT_MEMORY: 'maybe' })).toThrow('--memory must be true or false, got "maybe" (from HOOKBOT_MEMORY)');
    expect(() => resolveServeConfig({ ...base, fsync: 'sometimes' }, {})).toThrow(ConfigError);
    expect(() => resolveServeConfig({ ...base, fsync: 'sometimes' }, {})).toThrow('--fsync must be one of normal, always, got "sometimes"');
    expect(() => resolveServeConfig({ ...base, memory: true, fsync: 'always' }, {})).toThrow(/--fsync always needs the durable store/);
    const redis = resolveServeConfig({ ...base, redis: 'redis://127.0.0.1:1', dataDir: '/d', fsync: 'always' }, {});
    expect(redis.dataDir).toBeUndefined();
    expect(redis.storeWarning).toBe('--redis takes precedence: history is kept in Redis, and --data-dir and --fsync are ignored');
    expect(resolveServeConfig({ ...base, redis: 'redis://127.0.0.1:1' }, {}).storeWarning).toBeUndefined();
  });

  it('serve --fsync always serves and keeps what it acknowledged across a kill -9', async () => {
    const dir = dataDir();
    const a = await serve(dir, ['--fsync', 'always']);
    const ids = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const res = await fetch(`${a.url}/pub/sync/x`, { method: 'POST', body: `m${i}`, headers: bearer('/pub/sync/x') });
        expect(res.status).toBe(200);
        return res.headers.get('x-hookbot-message-id')!;
      }),
    );
    a.child.kill('SIGKILL');
    await a.exit;
    const b = await serve(dir);
    expect((await replay(b.url, 'sync/')).messages.map((m) => m.id)).toEqual([...ids].sort(compareIds));
  });
});
