import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BackendUnavailableError, DEFAULT_RETENTION, type Retention } from '../src/server/backends/backend.js';
import { checkRedisUrl, RedisBackend } from '../src/server/backends/redis.js';
import { compareIds, type Message } from '../src/protocol/message.js';
import { backendContract } from './contract/backend.contract.js';
import { waitFor } from './helpers.js';
import { startRedis, type RedisServer } from './redis-server.js';

let redis: RedisServer;
let namespaces = 0;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop('SIGKILL');
});

async function makeBackend(
  retention: Retention = DEFAULT_RETENTION,
  namespace = `test${++namespaces}`,
  reconnectDelayMs = 50,
): Promise<RedisBackend> {
  const backend = new RedisBackend(redis.url, retention, undefined, {
    namespace,
    minReconnectDelayMs: reconnectDelayMs,
    maxReconnectDelayMs: Math.max(200, reconnectDelayMs),
  });
  await backend.whenReady(5000);
  return backend;
}

// Each backend gets its own key namespace, so history starts empty without flushing.
backendContract(
  'redis',
  async (retention) => {
    const backend = await makeBackend(retention);
    return { backend, cleanup: () => backend.close() };
  },
  { capsTopics: false },
);

describe('RedisBackend', () => {
  const open: RedisBackend[] = [];
  const cleanup = open;
  afterEach(async () => {
    for (const b of open.splice(0)) await b.close();
    if (!redis.running) await redis.start();
  });
  async function node(
    namespace: string,
    reconnectDelayMs?: number,
    retention = DEFAULT_RETENTION,
  ): Promise<{ backend: RedisBackend; received: Message[] }> {
    const backend = await makeBackend(retention, namespace, reconnectDelayMs);
    open.push(backend);
    const received: Message[] = [];
    backend.setListener((m) => received.push(m));
    return { backend, received };
  }

  it('rejects malformed URLs without echoing the password', () => {
    expect(() => checkRedisUrl('not a url')).toThrow(/invalid Redis URL/);
    expect(() => checkRedisUrl('http://127.0.0.1:6379')).toThrow(/scheme must be redis/);
    expect(() => checkRedisUrl('redis://:s3cret@127.0.0.1:6379/x')).toThrow(/database number/);
    try {
      checkRedisUrl('redis://:s3cret@127.0.0.1:6379/x');
    } catch (err) {
      expect((err as Error).message).not.toContain('s3cret');
    }
    expect(() => checkRedisUrl('redis://127.0.0.1:6379/2')).not.toThrow();
    expect(() => checkRedisUrl('rediss://user:pw@redis.example.com')).not.toThrow();
    expect(() => new RedisBackend('ftp://x', DEFAULT_RETENTION)).toThrow(/invalid Redis URL/);
  });

  it('fans out to every node once, in one id order', async () => {
    const a = await node('two');
    const b = await node('two');
    const sent = await Promise.all(
      Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).backend.publish(`n/${i % 3}`, {}, Buffer.from(`m${i}`))),
    );
    await waitFor(() => a.received.length >= 60 && b.received.length >= 60, 5000, 'both nodes');
    const order = sent.map((m) => m.id).sort(compareIds);
    expect(a.received.map((m) => m.id)).toEqual(order);
    expect(b.received.map((m) => m.id)).toEqual(order);
    // History written by one node is read by the other.
    const h = await b.backend.history('n/', undefined);
    expect(h.messages.map((m) => m.id)).toEqual(order);
  });

  it('rejects publishes while Redis is down and recovers by itself', async () => {
    const { backend, received } = await node('down');
    const changes: boolean[] = [];
    backend.onReadyChange((r) => changes.push(r));
    await backend.publish('d', {}, Buffer.from('before'));

    await redis.stop('SIGKILL');
    await waitFor(() => !backend.ready(), 5000, 'not ready');
    const started = Date.now();
    const err = await backend.publish('d', {}, Buffer.from('lost?')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BackendUnavailableError);
    expect((err as Error).message).toMatch(/^redis unavailable: /);
    expect(Date.now() - started).toBeLessThan(1000);
    await expect(backend.history('d')).rejects.toBeInstanceOf(BackendUnavailableError);
    expect(changes).toContain(false);

    await redis.start();
    await backend.whenReady(10_000);
    expect(changes.at(-1)).toBe(true);
    const after = await backend.publish('d', {}, Buffer.from('after'));
    await waitFor(() => received.some((m) => m.id === after.id), 5000, 'delivery after restart');
    expect(received.map((m) => m.body.toString())).toEqual(['before', 'after']);
  });

  it('a publish in flight when Redis dies is settled (rejected or accepted), never left hanging', async () => {
    const { backend } = await node('inflight');
    const inFlight = Array.from({ length: 200 }, (_, i) => backend.publish('f', {}, Buffer.alloc(2000, i)));
    const killed = redis.stop('SIGKILL');
    const results = await Promise.allSettled(inFlight);
    await killed;
    for (const r of results) {
      if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(BackendUnavailableError);
    }
    await expect(backend.publish('f', {}, Buffer.from('x'))).rejects.toBeInstanceOf(BackendUnavailableError);
  });

  it('rejects publishes to a hung Redis after the command timeout', async () => {
    const backend = new RedisBackend(redis.url, DEFAULT_RETENTION, undefined, { namespace: 'hung', commandTimeoutMs: 300 });
    open.push(backend);
    await backend.whenReady(5000);
    redis.signal('SIGSTOP');
    try {
      const started = Date.now();
      await expect(backend.publish('h', {}, Buffer.from('x'))).rejects.toBeInstanceOf(BackendUnavailableError);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      redis.signal('SIGCONT');
    }
    await backend.whenReady(5000);
    await backend.publish('h', {}, Buffer.from('y'));
  });

  /** The Redis client id of one of a node's connections (`cmd` or `read`). */
  async function connectionId(admin: Redis, ns: string, backend: RedisBackend, role: 'cmd' | 'read'): Promise<string> {
    const name = `${ns}-${role}-${backend.nodeId.slice(0, 8)}`;
    const ids = String(await admin.client('LIST'))
      .split('\n')
      .filter((l) => l.includes(` name=${name} `))
      .map((l) => /id=(\d+)/.exec(l)![1]);
    expect(ids.length).toBe(1);
    return ids[0];
  }

  function admin(): Redis {
    const r = new Redis(redis.url);
    r.on('error', () => {});
    return r;
  }

  function lostOf(backend: RedisBackend): string[] {
    const lost: string[] = [];
    backend.onLost((afterId) => lost.push(afterId));
    return lost;
  }

  it.each([
    ['--history 5', { ...DEFAULT_RETENTION, count: 5 }],
    ['history off', { ...DEFAULT_RETENTION, count: 0 }],
  ])('loses nothing when its read link drops under a fast publisher (%s)', async (label, retention) => {
    const ns = `drops-${label.replace(/\W+/g, '')}`;
    const a = await node(ns, undefined, retention);
    const b = await node(ns, undefined, retention);
    const lostA = lostOf(a.backend);
    const lostB = lostOf(b.backend);
    const r = admin();
    try {
      const sent: string[] = [];
      let publishing = true;
      // Eight publishes in flight, as fast as Redis takes them: far more than 5 per topic land in every blink.
      const publishers = Array.from({ length: 8 }, async (_, p) => {
        for (let i = 0; publishing; i++) sent.push((await a.backend.publish(`c/${(p + i) % 2}`, {}, Buffer.from(`p${p}-${i}`))).id);
      });
      for (let k = 0; k < 5; k++) {
        const seen = b.received.length;
        await waitFor(() => b.backend.ready() && b.received.length > seen + 50, 5000, 'live traffic on B');
        const reattaches = b.backend.stats.reattaches;
        await r.client('KILL', 'ID', await connectionId(r, ns, b.backend, 'read'));
        await waitFor(() => b.backend.stats.reattaches > reattaches, 5000, 'B re-attached');
      }
      publishing = false;
      await Promise.all(publishers);
      const order = [...sent].sort(compareIds);
      await waitFor(() => a.received.length >= sent.length && b.received.length >= sent.length, 10_000, 'everything delivered');
      await new Promise((resolve) => setImmediate(resolve));
      expect(a.received.map((m) => m.id)).toEqual(order);
      expect(b.received.map((m) => m.id)).toEqual(order);
      expect(lostA).toEqual([]);
      expect(lostB).toEqual([]);
      expect(a.backend.stats.reattaches).toBe(0);
      // The blinks were real: B found messages waiting when it came back.
      expect(b.backend.stats.caughtUp).toBeGreaterThan(0);
      if (retention.count > 0) {
        // History itself kept only 5 per topic: catch-up did not come from it.
        expect((await b.backend.history('c/0')).messages.length).toBe(5);
      }
    } finally {
      r.disconnect();
    }
  });

  it.each([
    ['count', { count: 10 }, 10],
    // 64 overhead + 1-byte topic + 1000-byte body = 1065 bytes each: 18 fit in 20 000.
    ['bytes', { bytes: 20_000 }, 18],
    ['age', { ageMs: 1000 }, 1],
  ] as const)('tells its listener once when it fell behind the catch-up window (%s), then carries on', async (label, catchUp, kept) => {
    const ns = `window-${label}`;
    const open = async (reconnectMs: number) => {
      const backend = new RedisBackend(redis.url, DEFAULT_RETENTION, undefined, { namespace: ns, catchUp, minReconnectDelayMs: reconnectMs, maxReconnectDelayMs: reconnectMs });
      cleanup.push(backend);
      await backend.whenReady(5000);
      const received: Message[] = [];
      backend.setListener((m) => received.push(m));
      return { backend, received, lost: lostOf(backend) };
    };
    const a = await open(50);
    // B takes 4-8 s to come back once cut, so what follows happens while it is away.
    const b = await open(8000);
    const r = admin();
    try {
      const first = await a.backend.publish('w', {}, Buffer.alloc(1000, 1));
      await waitFor(() => b.received.length === 1, 5000, 'first message on B');
      await r.client('KILL', 'ID', await connectionId(r, ns, b.backend, 'read'));
      await waitFor(() => !b.backend.ready(), 5000, 'B cut off');
      const sent: string[] = [];
      for (let i = 0; i < 50; i++) sent.push((await a.backend.publish('w', {}, Buffer.alloc(1000, 2))).id);
      const feed = `{${ns}}:feed`;
      if (label === 'age') {
        // Aged out by A's own cursor refreshes, within a few seconds.
        await waitFor(async () => (await r.xlen(feed)) === 1, 5000, 'feed aged out');
      }
      expect(await r.xlen(feed)).toBe(kept);
      expect(Number(await r.get(`{${ns}}:feed-bytes`))).toBe(kept * 1065);
      expect(b.backend.ready()).toBe(false);

      await waitFor(() => b.lost.length === 1, 15_000, 'B reports the loss');
      expect(b.lost).toEqual([first.id]);
      await waitFor(() => b.received.length === 1 + kept, 5000, 'what the window kept');
      expect(b.received.slice(1).map((m) => m.id)).toEqual(sent.slice(-kept));
      // Carries on from there, without another notice.
      const next = await a.backend.publish('w', {}, Buffer.from('next'));
      await waitFor(() => b.received.some((m) => m.id === next.id), 5000, 'next on B');
      expect(b.lost.length).toBe(1);
      expect(a.lost).toEqual([]);
    } finally {
      r.disconnect();
    }
  }, 30_000);

  it("keeps what a cut-off node has not read, and trims what every node has read", async () => {
    const ns = 'floor';
    const r = admin();
    try {
      // A set of cursors younger than the cursor lifetime may lack nodes not back yet, so only the
      // window trims then; this one is made to look old.
      await r.hset(`{${ns}}:cursors`, '*since', '0');
      const a = await node(ns);
      const b = await node(ns, 8000);
      const feed = `{${ns}}:feed`;
      for (let i = 0; i < 50; i++) await a.backend.publish('f', {}, Buffer.from(`a${i}`));
      await waitFor(() => b.received.length === 50, 5000, 'B has all');
      // Read by both: trimmed down to the newest entry by the next cursor refreshes.
      await waitFor(async () => (await r.xlen(feed)) === 1, 5000, 'feed trimmed to what is unread');

      await r.client('KILL', 'ID', await connectionId(r, ns, b.backend, 'read'));
      await waitFor(() => !b.backend.ready(), 5000, 'B cut off');
      const sent: string[] = [];
      for (let i = 0; i < 30; i++) sent.push((await a.backend.publish('f', {}, Buffer.from(`b${i}`))).id);
      // Wait for a refresh of A's cursor that saw all of them: it trimmed as far as B let it.
      const refreshed = async () => {
        const [cursor, at] = String(await r.hget(`{${ns}}:cursors`, a.backend.nodeId)).split(' ');
        return cursor === sent.at(-1) ? Number(at) : 0;
      };
      const firstRefresh = await waitFor(refreshed, 5000, "A's cursor at the end");
      await waitFor(async () => (await refreshed()) > firstRefresh, 5000, 'another refresh of A');
      expect(b.backend.ready()).toBe(false);
      // Everything after B's cursor (the entry at it, B has read).
      expect(await r.xlen(feed)).toBe(30);

      await waitFor(() => b.received.length === 80, 15_000, 'B caught up');
      expect(b.received.slice(50).map((m) => m.id)).toEqual(sent);
      expect(b.backend.stats.lost).toBe(0);
      await waitFor(async () => (await r.xlen(feed)) === 1, 5000, 'feed trimmed again');

      // A node that leaves takes its cursor with it.
      await a.backend.close();
      expect(await r.hexists(`{${ns}}:cursors`, a.backend.nodeId)).toBe(0);
      expect(await r.hexists(`{${ns}}:cursors`, b.backend.nodeId)).toBe(1);
    } finally {
      r.disconnect();
    }
  }, 30_000);

  it('stores a repeated idempotency key once, on any node, and answers with the original id', async () => {
    const ns = 'idem';
    const open = async () => {
      const backend = new RedisBackend(redis.url, DEFAULT_RETENTION, undefined, { namespace: ns, idempotencyWindowMs: 1500 });
      cleanup.push(backend);
      await backend.whenReady(5000);
      const received: Message[] = [];
      backend.setListener((m) => received.push(m));
      return { backend, received };
    };
    const a = await open();
    const b = await open();
    const first = await a.backend.publish('i', {}, Buffer.from('one'), { idempotencyKey: 'k1' });
    const again = await b.backend.publish('i', {}, Buffer.from('one'), { idempotencyKey: 'k1' });
    expect(again.id).toBe(first.id);
    // Both nodes at once: one of them stores it, both answer with its id.
    const [x, y] = await Promise.all([
      a.backend.publish('i', {}, Buffer.from('two'), { idempotencyKey: 'k2' }),
      b.backend.publish('i', {}, Buffer.from('two'), { idempotencyKey: 'k2' }),
    ]);
    expect(x.id).toBe(y.id);
    // The key is per topic, and no key is no dedupe.
    const other = await a.backend.publish('j', {}, Buffer.from('one'), { idempotencyKey: 'k1' });
    expect(other.id).not.toBe(first.id);
    const plain = [await a.backend.publish('i', {}, Buffer.from('p')), await a.backend.publish('i', {}, Buffer.from('p'))];
    expect(plain[0].id).not.toBe(plain[1].id);
    const marker = await b.backend.publish('i', {}, Buffer.from('end'));
    for (const n of [a, b]) {
      await waitFor(() => n.received.some((m) => m.id === marker.id), 5000, 'marker');
      expect(n.received.map((m) => m.body.toString())).toEqual(['one', 'two', 'one', 'p', 'p', 'end']);
    }
    expect((await a.backend.history('i')).messages.map((m) => m.body.toString())).toEqual(['one', 'two', 'p', 'p', 'end']);
    // Past the window the key is new again.
    await waitFor(async () => (await a.backend.publish('i', {}, Buffer.from('late'), { idempotencyKey: 'k1' })).id !== first.id, 5000, 'key forgotten after the window');
  });

  it('delivers messages published while its link was down after Redis restarts, and says Redis forgot', async () => {
    const a = await node('restart');
    // B waits longer before reconnecting, so A is back and publishing first.
    const b = await node('restart', 1500);
    const lostB = lostOf(b.backend);
    const first = await a.backend.publish('r', {}, Buffer.from('first'));
    await waitFor(() => b.received.length === 1, 5000, 'first');
    // Without persistence: Redis comes back empty.
    await redis.stop();
    await waitFor(() => !a.backend.ready() && !b.backend.ready(), 5000, 'both down');
    await redis.start();
    // Publish from A as soon as it can, before B is necessarily back.
    await waitFor(() => a.backend.ready(), 10_000, 'A back');
    const sent: string[] = [];
    for (let i = 0; i < 50; i++) sent.push((await a.backend.publish('r', {}, Buffer.from(`m${i}`))).id);
    expect(b.backend.ready()).toBe(false);
    await waitFor(() => b.received.length === 51, 10_000, 'B caught up');
    expect(b.backend.stats.caughtUp).toBe(50);
    expect(b.received.slice(1).map((m) => m.id)).toEqual(sent);
    expect(a.received.slice(1).map((m) => m.id)).toEqual(sent);
    // Whatever was accepted between 'first' and the restart is gone with Redis's data: both nodes say so.
    expect(lostB).toEqual([first.id]);
    expect(a.backend.stats.lost).toBe(1);
  });
});
