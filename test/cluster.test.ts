/**
 * Cluster mode end to end: a real redis-server and real `hookbot serve --redis`
 * processes (dist must be built: `npm test` builds first).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveServeConfig } from '../src/server/config.js';
import { compareIds } from '../src/protocol/message.js';
import { bearer, bodyOf, eventually, Inbox, startServeProcess, wsConnect, type Proc } from './helpers.js';
import { startRedis, type RedisServer } from './redis-server.js';

type Node = Proc & { port: number; url: string };

let redis: RedisServer;
const nodes: Node[] = [];

beforeAll(async () => {
  if (!existsSync(fileURLToPath(new URL('../dist/server/backends/redis.js', import.meta.url)))) {
    throw new Error('dist/ is not built: run `npm run build` (npm test does it) before this file');
  }
  redis = await startRedis();
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
  await redis?.stop('SIGKILL');
});

let clusters = 0;

/** Nodes of one cluster share a Redis database of their own, so tests don't see each other's history. */
async function startNodes(count: number): Promise<Node[]> {
  const db = ++clusters;
  const started = await Promise.all(
    Array.from({ length: count }, () =>
      // The tests publish from one address far faster than a per-address rate limit allows.
      startServeProcess(['--history', '1000'], { HOOKBOT_REDIS_URL: `${redis.url}/${db}`, HOOKBOT_RATE_LIMIT: '0' }),
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
  const ws = await wsConnect(wsUrl(node, path), { headers: bearer(path) });
  return { ws, inbox: new Inbox(ws) };
}

async function publish(node: Node, path: string, body: string | Buffer): Promise<Response> {
  return fetch(node.url + path, { method: 'POST', body: bodyOf(body), headers: bearer(path) });
}

/**
 * A `hookbot.v1` subscriber that keeps its last id and, when its node goes
 * away, resumes on another node with `?since=`.
 */
class ResumingSubscriber {
  readonly received: Array<{ id: string; topic: string; body: string }> = [];
  gaps = 0;
  connections = 0;
  #last: string | undefined;
  #ws: WebSocket | undefined;
  #path: string;
  dropped = false;

  constructor(path: string) {
    this.#path = path;
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
        const frame = JSON.parse(data.toString()) as { type: string; id: string; topic: string; body: string };
        if (frame.type === 'message') {
          this.received.push({ id: frame.id, topic: frame.topic, body: frame.body });
          this.#last = frame.id;
        } else if (frame.type === 'gap') {
          this.gaps++;
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

  it('answers 503 while Redis is down, never 200-then-lost, and resumes by itself', async () => {
    const [a, b] = await startNodes(2);
    const onA = await rawSubscribe(a, '/sub/outage');
    const onB = await rawSubscribe(b, '/sub/outage');

    const accepted: string[] = [];
    const statuses = new Map<number, number>();
    let stop = false;
    let i = 0;
    const publisher = (async () => {
      while (!stop) {
        const res = await publish(a, '/pub/outage', `m${i++}`);
        const text = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 200) accepted.push(text === 'OK\n' ? `m${i - 1}` : 'bad body');
        else {
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
    // Every publish answered 200 reached both nodes' subscribers, in order, once.
    await onA.inbox.waitFor(accepted.length, 10_000);
    await onB.inbox.waitFor(accepted.length, 10_000);
    expect(onA.inbox.texts()).toEqual(accepted);
    expect(onB.inbox.texts()).toEqual(accepted);
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

  it('refuses to start with a malformed --redis URL', async () => {
    await expect(startServeProcess(['--redis', 'http://nope:1'])).rejects.toThrow(/--redis.*scheme must be redis/);
  });
});
