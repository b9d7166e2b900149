import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BackendUnavailableError, DEFAULT_RETENTION, type Retention } from '../src/server/backends/backend.js';
import { checkRedisUrl, RedisBackend } from '../src/server/backends/redis.js';
import { compareIds, type Message } from '../src/protocol/message.js';
import { backendContract, waitFor } from './contract/backend.contract.js';
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
// idempotency: false until RedisBackend implements PublishOptions.idempotencyKey (its tests show as skipped).
backendContract(
  'redis',
  async (retention) => {
    const backend = await makeBackend(retention);
    return { backend, cleanup: () => backend.close() };
  },
  { idempotency: false },
);

describe('RedisBackend', () => {
  const open: RedisBackend[] = [];
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

  it.each([
    ['history on', DEFAULT_RETENTION],
    ['history off', { ...DEFAULT_RETENTION, count: 0 }],
  ])("catches up on what other nodes published while this node's link was down (%s)", async (label, retention) => {
    const ns = `catchup-${label.replace(' ', '-')}`;
    const a = await node(ns, undefined, retention);
    const b = await node(ns, undefined, retention);
    const admin = new Redis(redis.url);
    try {
      const sent: string[] = [];
      let publishing = true;
      const publisher = (async () => {
        for (let i = 0; publishing; i++) sent.push((await a.backend.publish(`c/${i % 2}`, {}, Buffer.from(`m${i}`))).id);
      })();
      // Cut B's pub/sub link several times while A keeps publishing; B
      // reconnects after a backoff, so messages fall into every window.
      for (let k = 0; k < 3; k++) {
        await waitFor(() => b.backend.ready(), 5000, 'B ready');
        await waitFor(() => b.received.length > sent.length / 2, 5000, 'some live traffic');
        const list = String(await admin.client('LIST'));
        const ids = list
          .split('\n')
          .filter((l) => l.includes(`name=${ns}-sub`))
          .map((l) => Number(/id=(\d+)/.exec(l)![1]));
        expect(ids.length).toBe(2);
        // B connected after A, so its subscriber connection has the larger id.
        const resubscribes = b.backend.stats.resubscribes;
        await admin.client('KILL', 'ID', String(Math.max(...ids)));
        await waitFor(() => b.backend.stats.resubscribes > resubscribes, 5000, 'B resubscribed');
        expect(a.backend.stats.resubscribes).toBe(1);
      }
      await waitFor(() => a.backend.ready() && b.backend.ready(), 5000, 'both ready');
      publishing = false;
      await publisher;
      await waitFor(() => a.received.length >= sent.length && b.received.length >= sent.length, 5000, 'catch-up');
      // The windows were real: B got some messages only from the stream.
      expect(b.backend.stats.caughtUp).toBeGreaterThan(0);
      expect(a.received.map((m) => m.id)).toEqual(sent);
      expect(b.received.map((m) => m.id)).toEqual(sent);
    } finally {
      admin.disconnect();
    }
  });

  it('delivers messages published while its link was down after Redis restarts', async () => {
    const a = await node('restart');
    // B waits longer before reconnecting, so A is back and publishing first.
    const b = await node('restart', 1500);
    await a.backend.publish('r', {}, Buffer.from('first'));
    await waitFor(() => b.received.length === 1, 5000, 'first');
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
  });
});
