/**
 * Cluster mode end to end: a real redis-server (with an append-only file, as
 * the README recommends) and real `hookbot serve --redis` processes (dist must
 * be built: `npm test` builds first).
 */
import { existsSync } from 'node:fs';
import { Redis } from 'ioredis';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveServeConfig } from '../src/server/config.js';
import { compareIds } from '../src/protocol/message.js';
import { bearer, bodyOf, eventually, Inbox, SseStream, startServeProcess, wsConnect, type Proc } from './helpers.js';
import { startRedis, type RedisServer } from './redis-server.js';

type Node = Proc & { port: number; url: string };

let redis: RedisServer;
const nodes: Node[] = [];

beforeAll(async () => {
  if (!existsSync(fileURLToPath(new URL('../dist/server/backends/redis.js', import.meta.url)))) {
    throw new Error('dist/ is not built: run `npm run build` (npm test does it) before this file');
  }
  redis = await startRedis({ persistent: true });
});
afterEach(async () => {
  for (const n of nodes.splice(0)) {
    if (n.child.exitCode === null && n.child.signalCode === null) {
      n.child.kill('SIGKILL');
      await n.exit;
    }
  }
  if (!redis.running) await redis.start();
});
afterAll(async () => {
  await redis?.destroy();
});

let clusters = 0;

/** Nodes of one cluster share a Redis database of their own, so tests don't see each other's history. */
async function startNodes(count: number, args: string[] = ['--history', '1000']): Promise<Node[]> {
  const db = ++clusters;
  const started = await Promise.all(
    Array.from({ length: count }, () =>
      // The tests publish from one address far faster than a per-address rate limit allows.
      startServeProcess(args, { HOOKBOT_REDIS_URL: `${redis.url}/${db}`, HOOKBOT_RATE_LIMIT: '0' }),
    ),
  );
  nodes.push(...started);
  await Promise.all(started.map((n) => eventually(async () => (await fetch(`${n.url}/readyz`)).status === 200, 10_000, `${n.url} ready`)));
  return started;
}

function wsUrl(node: Node, path: string): string {
  return node.url.replace(/^http/, 'ws') + path;
}

async function rawSubscribe(node: Node, path: string): Promise<{ ws: WebSocket; inbox: Inbox }> {
  const ws = await wsConnect(wsUrl(node, path), { headers: bearer(path.split('?')[0]) });
  return { ws, inbox: new Inbox(ws) };
}

async function publish(node: Node, path: string, body: string | Buffer): Promise<Response> {
  return fetch(node.url + path, { method: 'POST', body: bodyOf(body), headers: bearer(path) });
}

/** An SSE subscriber on `node`: the events as they came. */
async function sseSubscribe(node: Node, path: string): Promise<SseStream> {
  const abort = new AbortController();
  const res = await fetch(node.url + path, { headers: { accept: 'text/event-stream', ...bearer(path) }, signal: abort.signal });
  expect(res.status).toBe(200);
  return new SseStream(res, abort);
}

/** The Redis client ids of the nodes' feed-reading connections (a cluster's nodes use database `db`). */
async function readLinks(admin: Redis, db: number): Promise<string[]> {
  return String(await admin.client('LIST'))
    .split('\n')
    .filter((l) => / name=hookbot-read-/.test(l) && l.includes(` db=${db} `))
    .map((l) => /id=(\d+)/.exec(l)![1]);
}

/**
 * A `hookbot.v1` subscriber that keeps its last id and, when its node goes
 * away, resumes on another node with `?since=`.
 */
class ResumingSubscriber {
  readonly received: Array<{ id: string; topic: string; body: string }> = [];
  gaps = 0;
  /** Messages and gaps in the order they came. */
  readonly events: Array<{ id: string } | { gap: string }> = [];
  connections = 0;
  #last: string | undefined;
  #ws: WebSocket | undefined;
  #path: string;
  dropped = false;

  constructor(path: string, since?: string) {
    this.#path = path;
    this.#last = since;
  }

  /** Connects (resuming after the last id if there is one); resolves once the server says it is live. */
  async connect(node: Node): Promise<void> {
    const query = this.#last ? `?since=${this.#last}` : '';
    // Listeners go on before the handshake completes: the first frames can arrive with it.
    const ws = new WebSocket(wsUrl(node, this.#path + query), ['hookbot.v1'], { headers: bearer(this.#path) });
    this.#ws = ws;
    this.dropped = false;
    this.connections++;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no live frame')), 5000);
      ws.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      ws.on('message', (data: Buffer, binary: boolean) => {
        expect(binary).toBe(false);
        const frame = JSON.parse(data.toString()) as { type: string; id: string; topic: string; body: string; since?: string };
        if (frame.type === 'message') {
          this.received.push({ id: frame.id, topic: frame.topic, body: frame.body });
          this.events.push({ id: frame.id });
          this.#last = frame.id;
        } else if (frame.type === 'gap') {
          this.gaps++;
          this.events.push({ gap: frame.since! });
        } else if (frame.type === 'live') {
          clearTimeout(timer);
          resolve();
        }
      });
      ws.on('close', () => {
        clearTimeout(timer);
        this.dropped = true;
        resolve();
      });
    });
  }

  close(): void {
    this.#ws?.close();
  }
}

describe('cluster mode (Redis)', () => {
  it('fans out a publish on one node to exact and recursive subscribers on every node', async () => {
    const [a, b] = await startNodes(2);
    const subs = await Promise.all([
      rawSubscribe(a, '/sub/fan/x'),
      rawSubscribe(b, '/sub/fan/x'),
      rawSubscribe(a, '/sub/fan/'),
      rawSubscribe(b, '/sub/fan/'),
    ]);
    const binary = Buffer.from([0, 1, 2, 255, 254, 10]);
    const sent: string[] = [];
    for (const [node, path, body] of [
      [a, '/pub/fan/x', 'one'],
      [b, '/pub/fan/x', binary],
      [a, '/pub/fan/y/z', 'deep'],
      [b, '/pub/other', 'nobody'],
    ] as const) {
      const res = await publish(node, path, body);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('OK\n');
      sent.push(res.headers.get('x-hookbot-message-id')!);
    }
    for (let i = 1; i < 3; i++) expect(compareIds(sent[i - 1], sent[i])).toBe(-1);

    for (const { inbox } of subs.slice(0, 2)) {
      const got = await inbox.waitFor(2);
      expect(got.map((m) => m.binary)).toEqual([true, true]);
      expect(got[0].data.toString()).toBe('one');
      expect(Buffer.compare(got[1].data, binary)).toBe(0);
    }
    for (const { inbox } of subs.slice(2)) {
      const got = await inbox.waitFor(3);
      expect(got[0].data.toString()).toBe('fan/x\0one');
      expect(Buffer.compare(got[1].data, Buffer.concat([Buffer.from('fan/x\0'), binary]))).toBe(0);
      expect(got[2].data.toString()).toBe('fan/y/z\0deep');
    }
    // Nothing extra (each node received each message once).
    const probe = await publish(a, '/pub/fan/x', 'last');
    expect(probe.status).toBe(200);
    await subs[0].inbox.waitFor(3);
    await subs[1].inbox.waitFor(3);
    expect(subs[0].inbox.texts()).toEqual(['one', binary.toString(), 'last']);
    expect(subs[1].inbox.texts()).toEqual(['one', binary.toString(), 'last']);
    // A marker after everything: fan-out is in id order, so once it arrives nothing else is still on the way.
    expect((await publish(b, '/pub/fan/end', 'end')).status).toBe(200);
    for (const { inbox } of subs.slice(2)) {
      await inbox.waitFor(5);
      expect(inbox.texts().slice(3)).toEqual(['fan/x\0last', 'fan/end\0end']);
    }
    expect(subs[0].inbox.messages.length).toBe(3);
    expect(subs[1].inbox.messages.length).toBe(3);
    for (const { ws } of subs) ws.close();
  });

  it('loses and duplicates nothing when a node is killed mid-stream and its subscribers move', async () => {
    const [a, b, c] = await startNodes(3);
    const exact = new ResumingSubscriber('/sub/move/k');
    const recursive = new ResumingSubscriber('/sub/move/');
    await exact.connect(a);
    await recursive.connect(a);

    const total = 300;
    const published: Array<{ id: string; topic: string; body: string }> = [];
    let killed = false;
    const publisher = (async () => {
      for (let i = 0; i < total; i++) {
        const topic = i % 3 === 0 ? 'move/other' : 'move/k';
        const res = await publish(c, `/pub/${topic}`, `m${i}`);
        expect(res.status).toBe(200);
        published.push({ id: res.headers.get('x-hookbot-message-id')!, topic, body: `m${i}` });
        if (i === 100) {
          // Mid-stream, as if the host died: no close frames, no goodbye.
          a.child.kill('SIGKILL');
          killed = true;
        }
      }
    })();
    // Move each subscriber to B as soon as it notices.
    const mover = async (s: ResumingSubscriber) => {
      await eventually(() => s.dropped, 10_000, 'subscriber dropped');
      await s.connect(b);
    };
    await Promise.all([publisher, mover(exact), mover(recursive)]);
    expect(killed).toBe(true);

    const expectAll = published.filter((p) => p.topic === 'move/k');
    await eventually(() => exact.received.length >= expectAll.length && recursive.received.length >= published.length, 10_000, 'all messages');
    expect(exact.received.map((m) => m.id)).toEqual(expectAll.map((m) => m.id));
    expect(exact.received.map((m) => m.body)).toEqual(expectAll.map((m) => m.body));
    expect(recursive.received.map((m) => m.id)).toEqual(published.map((m) => m.id));
    expect(recursive.received.map((m) => m.topic)).toEqual(published.map((m) => m.topic));
    expect(exact.gaps + recursive.gaps).toBe(0);
    expect(exact.connections).toBe(2);
    expect(recursive.connections).toBe(2);
    exact.close();
    recursive.close();
  });

  it("loses nothing when the nodes' read links drop under fast publishers (--history 5)", async () => {
    const [a, b] = await startNodes(2, ['--history', '5']);
    const db = clusters;
    const v1 = [new ResumingSubscriber('/sub/drop/x'), new ResumingSubscriber('/sub/drop/x'), new ResumingSubscriber('/sub/drop/'), new ResumingSubscriber('/sub/drop/')];
    await Promise.all(v1.map((s, i) => s.connect(i % 2 ? b : a)));
    const raw = await Promise.all([rawSubscribe(a, '/sub/drop/x'), rawSubscribe(b, '/sub/drop/x')]);

    const published: Array<{ id: string; topic: string; body: string }> = [];
    let publishing = true;
    // Eight publishers over both nodes, each as fast as it gets answers.
    const publishers = Array.from({ length: 8 }, async (_, p) => {
      for (let i = 0; publishing; i++) {
        const topic = i % 3 === 0 ? 'drop/y' : 'drop/x';
        const res = await publish(p % 2 ? b : a, `/pub/${topic}`, `p${p}-${i}`);
        expect(res.status).toBe(200);
        published.push({ id: res.headers.get('x-hookbot-message-id')!, topic, body: `p${p}-${i}` });
      }
    });
    const admin = new Redis(redis.url);
    admin.on('error', () => {});
    try {
      for (let k = 0; k < 5; k++) {
        const seen = v1[1].received.length;
        await eventually(() => v1[1].received.length > seen + 50, 10_000, 'live traffic');
        const links = await readLinks(admin, db);
        expect(links.length).toBe(2);
        for (const id of links) await admin.client('KILL', 'ID', id);
        // Both nodes read again, on new connections.
        await eventually(async () => (await readLinks(admin, db)).filter((id) => !links.includes(id)).length === 2, 10_000, 'new read links');
      }
    } finally {
      admin.disconnect();
      publishing = false;
      await Promise.all(publishers);
    }
    published.sort((p, q) => compareIds(p.id, q.id));
    const exact = published.filter((p) => p.topic === 'drop/x');
    await eventually(() => v1.every((s, i) => s.received.length >= (i < 2 ? exact : published).length), 10_000, 'every message');
    for (const [i, s] of v1.entries()) {
      expect(s.received.map((m) => m.id)).toEqual((i < 2 ? exact : published).map((m) => m.id));
      expect(s.gaps).toBe(0);
    }
    for (const { inbox } of raw) {
      await inbox.waitFor(exact.length, 10_000);
      expect(inbox.texts()).toEqual(exact.map((m) => m.body));
      expect(inbox.closed).toBeUndefined();
    }
    for (const s of v1) s.close();
    for (const { ws } of raw) ws.close();
  }, 40_000);

  it('a node that fell further behind than the catch-up window tells every subscriber: 4000, a gap frame, a gap event', async () => {
    const [a, b] = await startNodes(2, ['--history', '1000', '--catch-up-count', '10']);
    const raw = await rawSubscribe(b, '/sub/behind/x');
    const v1 = new ResumingSubscriber('/sub/behind/x');
    await v1.connect(b);
    const sse = await sseSubscribe(b, '/sub/behind/x');
    const first = await publish(a, '/pub/behind/x', 'first');
    expect(first.status).toBe(200);
    await raw.inbox.waitFor(1);
    await sse.until(() => sse.events.some((e) => e.data === 'first'), 'first on SSE');
    await eventually(() => v1.received.length === 1, 5000, 'first on hookbot.v1');
    // Resumed by id (so the broker holds it through a stand-in), recursive: told as well.
    const resumed = new ResumingSubscriber('/sub/behind/', first.headers.get('x-hookbot-message-id')!);
    await resumed.connect(b);

    // B stops reading (as if its event loop hung) while 50 messages go by: 10 fit in the window.
    b.child.kill('SIGSTOP');
    const sent: string[] = [];
    try {
      for (let i = 0; i < 50; i++) {
        const res = await publish(a, '/pub/behind/x', `m${i}`);
        expect(res.status).toBe(200);
        sent.push(res.headers.get('x-hookbot-message-id')!);
      }
    } finally {
      b.child.kill('SIGCONT');
    }

    expect(await raw.inbox.waitClose(10_000)).toEqual({ code: 4000, reason: 'messages were missed; reconnect with ?since=<last id>' });
    await eventually(() => v1.gaps === 1 && v1.received.at(-1)?.id === sent.at(-1), 10_000, 'gap and the rest on hookbot.v1');
    // The gap comes right after the last message B delivered, and what follows is what the window kept.
    const at = v1.events.findIndex((e) => 'gap' in e);
    const before = v1.events.slice(0, at).map((e) => (e as { id: string }).id);
    expect(before).toEqual([first.headers.get('x-hookbot-message-id')!, ...sent].slice(0, before.length));
    const since = (v1.events[at] as { gap: string }).gap;
    expect(since).toBe(before.at(-1));
    expect(v1.events.slice(at + 1).map((e) => (e as { id: string }).id)).toEqual(sent.slice(-10));
    await sse.until(() => sse.events.some((e) => e.event === 'gap') && sse.events.at(-1)?.id === sent.at(-1), 'gap on SSE', 10_000);
    expect(sse.events.find((e) => e.event === 'gap')!.data).toBe(JSON.stringify({ since }));
    await eventually(() => resumed.received.at(-1)?.id === sent.at(-1), 10_000, 'the rest on the resumed subscriber');
    expect(resumed.events.filter((e) => 'gap' in e)).toEqual([{ gap: since }]);
    resumed.close();
    // The raw subscriber resumes by id on reconnect and gets the rest; nothing else is closed.
    const again = await rawSubscribe(b, `/sub/behind/x?since=${since}`);
    const from = sent.indexOf(since) + 1;
    await again.inbox.waitFor(50 - from);
    expect(again.inbox.texts()).toEqual(Array.from({ length: 50 - from }, (_, i) => `m${from + i}`));
    again.ws.close();
    v1.close();
    sse.close();
  }, 30_000);

  it('answers a repeated Idempotency-Key (or X-GitHub-Delivery) with the original id on every node, and delivers it once', async () => {
    const [a, b] = await startNodes(2);
    const subs = await Promise.all([rawSubscribe(a, '/sub/idem/x'), rawSubscribe(b, '/sub/idem/x')]);
    const post = (node: Node, path: string, body: string, headers: Record<string, string>) =>
      fetch(node.url + path, { method: 'POST', body, headers: { ...bearer(path.split('?')[0]), ...headers } });
    const ids: string[] = [];
    for (const node of [a, b, a]) {
      const res = await post(node, '/pub/idem/x', 'one', { 'idempotency-key': 'order-1' });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('OK\n');
      ids.push(res.headers.get('x-hookbot-message-id')!);
    }
    expect(new Set(ids).size).toBe(1);
    const github = { 'x-github-delivery': '72d3162e-cc78-11e3-81ab-4c9367dc0958', 'x-github-event': 'push', 'content-type': 'application/json' };
    const g1 = await post(b, '/pub/idem/x?extra-metadata=github', '{"ref":"x"}', github);
    const g2 = await post(a, '/pub/idem/x?extra-metadata=github', '{"ref":"x"}', github);
    expect([g1.status, g2.status]).toEqual([200, 200]);
    expect(g2.headers.get('x-hookbot-message-id')).toBe(g1.headers.get('x-hookbot-message-id'));
    expect((await publish(b, '/pub/idem/x', 'end')).status).toBe(200);
    for (const { inbox, ws } of subs) {
      await inbox.waitFor(3);
      expect(inbox.texts()[0]).toBe('one');
      expect(inbox.texts()[1]).toContain('72d3162e-cc78-11e3-81ab-4c9367dc0958');
      expect(inbox.texts()[2]).toBe('end');
      expect(inbox.messages.length).toBe(3);
      ws.close();
    }
  });

  it('answers 503 while Redis is down, never 200-then-lost, and resumes by itself', async () => {
    const [a, b] = await startNodes(2);
    const onA = await rawSubscribe(a, '/sub/outage');
    const onB = await rawSubscribe(b, '/sub/outage');

    const accepted: string[] = [];
    const statuses = new Map<number, number>();
    let stop = false;
    let i = 0;
    // A 503 can come for a publish Redis stored just as it went away (its answer lost): the
    // publisher retries it with the same Idempotency-Key, as the README says, so it is stored once.
    const publisher = (async () => {
      while (!stop) {
        const body = `m${i++}`;
        for (;;) {
          const res = await fetch(a.url + '/pub/outage', { method: 'POST', body, headers: { ...bearer('/pub/outage'), 'idempotency-key': body } });
          const text = await res.text();
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          if (res.status === 200) {
            accepted.push(text === 'OK\n' ? body : 'bad body');
            break;
          }
          expect(res.status).toBe(503);
          expect(text).toMatch(/^503 Service Unavailable: redis unavailable/);
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    })();

    await eventually(() => accepted.length >= 20, 10_000, 'publishes before the outage');
    await redis.stop('SIGTERM');
    await eventually(() => (statuses.get(503) ?? 0) >= 5, 10_000, '503s during the outage');
    expect((await fetch(`${a.url}/readyz`)).status).toBe(503);
    expect((await fetch(`${b.url}/readyz`)).status).toBe(503);
    // Subscribers stay connected through the outage.
    expect(onA.inbox.closed).toBeUndefined();
    expect(onB.inbox.closed).toBeUndefined();

    await redis.start();
    const before = accepted.length;
    await eventually(() => accepted.length >= before + 20, 15_000, 'publishes after Redis returned');
    stop = true;
    await publisher;
    // Every publish answered 200 reached both nodes' subscribers, in order, once (and nothing else did).
    await onA.inbox.waitFor(accepted.length, 10_000);
    await onB.inbox.waitFor(accepted.length, 10_000);
    expect(onA.inbox.texts()).toEqual(accepted);
    expect(onB.inbox.texts()).toEqual(accepted);
    // Redis kept its data (append-only file), so no node had a gap to report.
    expect(onA.inbox.closed).toBeUndefined();
    expect(onB.inbox.closed).toBeUndefined();
    expect((await fetch(`${b.url}/readyz`)).status).toBe(200);
    onA.ws.close();
    onB.ws.close();
  });

  it('takes the Redis URL from --redis or HOOKBOT_REDIS_URL and names the option when it is bad', () => {
    expect(resolveServeConfig({ key: 'k' }, {}).redisUrl).toBeUndefined();
    expect(resolveServeConfig({ key: 'k', redis: 'redis://h:1/2' }, {}).redisUrl).toBe('redis://h:1/2');
    expect(resolveServeConfig({ key: 'k' }, { HOOKBOT_REDIS_URL: 'rediss://:pw@h:1' }).redisUrl).toBe('rediss://:pw@h:1');
    expect(resolveServeConfig({ key: 'k', redis: 'redis://flag:1' }, { HOOKBOT_REDIS_URL: 'redis://env:1' }).redisUrl).toBe('redis://flag:1');
    expect(() => resolveServeConfig({ key: 'k' }, { HOOKBOT_REDIS_URL: 'localhost:6379' })).toThrow(ConfigError);
    expect(() => resolveServeConfig({ key: 'k', redis: 'redis://:pw@h:1/db' }, {})).toThrow(/^--redis .*database number/);
    expect(() => resolveServeConfig({ key: 'k', redis: 'redis://:pw@h:1/db' }, {})).not.toThrow(/pw/);
  });

  it('takes the catch-up window from --catch-up-age/-count/-bytes and names the option when it is bad', () => {
    expect(resolveServeConfig({ key: 'k' }, {}).catchUp).toEqual({ ageMs: 300_000, count: 100_000, bytes: 64 * 1024 * 1024 });
    expect(resolveServeConfig({ key: 'k', catchUpAge: '90s', catchUpCount: '500', catchUpBytes: '1MiB' }, {}).catchUp).toEqual({ ageMs: 90_000, count: 500, bytes: 1024 * 1024 });
    expect(() => resolveServeConfig({ key: 'k', catchUpAge: '10ms' }, {})).toThrow(/^--catch-up-age must be at least 1s$/);
    expect(() => resolveServeConfig({ key: 'k', catchUpCount: '0' }, {})).toThrow(/^--catch-up-count must be at least 1$/);
    expect(() => resolveServeConfig({ key: 'k', catchUpCount: 'lots' }, {})).toThrow(/^--catch-up-count must be a whole number/);
    expect(() => resolveServeConfig({ key: 'k', catchUpBytes: '0' }, {})).toThrow(/^--catch-up-bytes must be at least 1 byte$/);
    expect(() => resolveServeConfig({ key: 'k', catchUpBytes: 'big' }, {})).toThrow(ConfigError);
  });

  it('refuses to start with a malformed --redis URL', async () => {
    await expect(startServeProcess(['--redis', 'http://nope:1'])).rejects.toThrow(/--redis.*scheme must be redis/);
  });
});
