/**
 * Redis Sentinel and Redis Cluster: real redis-server processes (a master and
 * a sentinel; three cluster nodes joined by `redis-cli --cluster create`), the
 * backend contract against the cluster, and a `hookbot serve` node through
 * Sentinel (dist must be built).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_RETENTION, type Retention } from '../src/server/backends/backend.js';
import { checkRedisUrl, RedisBackend } from '../src/server/backends/redis.js';
import { parseRedisUrl } from '../src/server/backends/redis-connect.js';
import { compareIds, type Message } from '../src/protocol/message.js';
import { backendContract } from './contract/backend.contract.js';
import { bearer, Inbox, startServeProcess, waitFor, wsConnect, type Proc } from './helpers.js';
import { freePort, startRedis, type RedisServer } from './redis-server.js';

const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
const hasServer = has('redis-server', ['--version']);
const hasCli = has('redis-cli', ['--version']);
const noSentinel = hasServer ? undefined : 'redis-server is not on PATH (Debian package redis-server)';
const noCluster = !hasServer ? noSentinel : !hasCli ? 'redis-cli is not on PATH (Debian package redis-tools)' : undefined;
if (noSentinel) console.warn(`skipping Sentinel tests: ${noSentinel}`);
if (noCluster) console.warn(`skipping Cluster tests: ${noCluster}`);

const tmp = mkdtempSync(join(tmpdir(), 'hookbot-topologies-'));
const procs: ChildProcess[] = [];

afterAll(async () => {
  await Promise.all(
    procs.map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    }),
  );
  rmSync(tmp, { recursive: true, force: true });
});

/** Spawns a redis-server with `args` and waits until `port` answers PING. */
async function spawnRedis(port: number, args: string[]): Promise<ChildProcess> {
  const proc = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: tmp });
  procs.push(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d.toString()));
  let exited: string | undefined;
  proc.once('exit', (code, signal) => (exited = `redis-server ${args.join(' ')} exited (${code ?? signal}): ${stderr}`));
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 50, enableOfflineQueue: true, maxRetriesPerRequest: null });
  probe.on('error', () => {});
  try {
    const pong = probe.ping();
    await waitFor(() => exited ?? Promise.race([pong, new Promise((r) => setTimeout(r, 50))]), 10_000, `redis on ${port}`);
    if (exited) throw new Error(exited);
  } finally {
    probe.disconnect();
  }
  return proc;
}

function adminOf(port: number): Redis {
  const r = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  r.on('error', () => {});
  return r;
}

let namespaces = 0;

describe('Redis URL forms', () => {
  it('parses Sentinel and Cluster URLs', () => {
    expect(parseRedisUrl('redis-sentinel://:p%40ss@10.0.0.1,10.0.0.2:26380/mymaster/3?sentinelPassword=sp')).toEqual({
      kind: 'sentinel',
      tls: false,
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: '10.0.0.2', port: 26380 },
      ],
      name: 'mymaster',
      db: 3,
      password: 'p@ss',
      sentinelPassword: 'sp',
    });
    expect(parseRedisUrl('rediss-cluster://u:pw@[::1]:7000,redis-a.example:7001')).toEqual({
      kind: 'cluster',
      tls: true,
      nodes: [
        { host: '::1', port: 7000 },
        { host: 'redis-a.example', port: 7001 },
      ],
      username: 'u',
      password: 'pw',
    });
    expect(parseRedisUrl('redis://127.0.0.1:6379/2')).toEqual({ kind: 'standalone', url: 'redis://127.0.0.1:6379/2' });
  });

  it.each([
    ['redis-sentinel://:s3cret@127.0.0.1:26379', /Sentinel master name/],
    ['redis-sentinel://:s3cret@127.0.0.1:26379/m/x', /Sentinel master name/],
    ['redis-sentinel://:s3cret@127.0.0.1:26379/m?password=s3cret', /unknown query parameter "password"/],
    ['redis-cluster://:s3cret@127.0.0.1:7000/3', /only has database 0/],
    ['redis-cluster://:s3cret@127.0.0.1:7000,,127.0.0.1:7001', /"" is not host\[:port\]/],
    ['redis-cluster://:s3cret@127.0.0.1:99999', /port 99999 of 127.0.0.1 is not 1-65535/],
    ['redis-cluster://:s3cret@/', /host missing/],
    ['redis-cluster://:s3cret@127.0.0.1:7000?x=1', /takes no query parameters/],
    ['redis+cluster://:s3cret@127.0.0.1', /scheme must be redis:\/\//],
  ])('rejects %s without echoing the password', (url, message) => {
    let err: Error | undefined;
    try {
      checkRedisUrl(url);
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).toMatch(/^invalid Redis URL/);
    expect(err?.message).toMatch(message);
    expect(err?.message).not.toContain('s3cret');
  });
});

describe.skipIf(noSentinel)('Redis Sentinel', () => {
  let master: RedisServer;
  let sentinelPort: number;
  let url: string;
  const open: RedisBackend[] = [];

  beforeAll(async () => {
    master = await startRedis();
    sentinelPort = await freePort();
    const conf = join(tmp, `sentinel-${sentinelPort}.conf`);
    writeFileSync(
      conf,
      [
        `port ${sentinelPort}`,
        'bind 127.0.0.1',
        `dir ${tmp}`,
        `sentinel monitor mymaster 127.0.0.1 ${master.port} 1`,
        'sentinel down-after-milliseconds mymaster 1000',
        '',
      ].join('\n'),
    );
    await spawnRedis(sentinelPort, [conf, '--sentinel']);
    const admin = adminOf(sentinelPort);
    try {
      await waitFor(async () => {
        const addr = (await admin.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'mymaster')) as string[] | null;
        return addr?.[1] === String(master.port);
      }, 10_000, 'sentinel knows the master');
    } finally {
      admin.disconnect();
    }
    url = `redis-sentinel://127.0.0.1:${sentinelPort}/mymaster`;
  });
  afterAll(async () => {
    await master?.stop('SIGKILL');
  });
  afterEach(async () => {
    for (const b of open.splice(0)) await b.close();
  });

  it('finds the master through the sentinel: fan-out to two nodes and history', async () => {
    const ns = `sentinel${++namespaces}`;
    const nodes = await Promise.all(
      [0, 1].map(async () => {
        const backend = new RedisBackend(url, DEFAULT_RETENTION, undefined, { namespace: ns });
        open.push(backend);
        await backend.whenReady(10_000);
        const received: Message[] = [];
        backend.setListener((m) => received.push(m));
        return { backend, received };
      }),
    );
    const sent: Message[] = [];
    for (let i = 0; i < 20; i++) sent.push(await nodes[i % 2].backend.publish(`s/${i % 3}`, {}, Buffer.from(`m${i}`)));
    await waitFor(() => nodes.every((n) => n.received.length >= 20), 5000, 'both nodes');
    for (const n of nodes) expect(n.received.map((m) => m.id)).toEqual(sent.map((m) => m.id));
    const h = await nodes[1].backend.history('s/1', sent[0].id);
    expect(h.gap).toBe(false);
    expect(h.messages.map((m) => m.body.toString())).toEqual(['m1', 'm4', 'm7', 'm10', 'm13', 'm16', 'm19']);
    // The data really is on the master the sentinel named.
    const direct = adminOf(master.port);
    try {
      expect(await direct.xlen(`{${ns}}:log`)).toBe(20);
    } finally {
      direct.disconnect();
    }
  });

  it('serves through `hookbot serve --redis redis-sentinel://...`', async () => {
    if (!existsSync(fileURLToPath(new URL('../dist/server/backends/redis-connect.js', import.meta.url)))) {
      throw new Error('dist/ is not built: run `npx tsc -p .` (npm test does it) before this file');
    }
    const node: Proc & { url: string } = await startServeProcess(['--redis', `${url}/5`], { HOOKBOT_RATE_LIMIT: '0' });
    try {
      await waitFor(async () => (await fetch(`${node.url}/readyz`)).status === 200, 10_000, 'node ready');
      const path = '/sub/sentinel/topic';
      const ws = await wsConnect(node.url.replace(/^http/, 'ws') + path, { headers: bearer(path) });
      const inbox = new Inbox(ws);
      const pub = '/pub/sentinel/topic';
      const res = await fetch(node.url + pub, { method: 'POST', body: 'via sentinel', headers: bearer(pub) });
      expect(res.status).toBe(200);
      const id = res.headers.get('x-hookbot-message-id')!;
      const [m] = await inbox.waitFor(1);
      expect(m.data.toString()).toBe('via sentinel');
      ws.close();
      // Resume from before it: history through the sentinel-found master.
      const again = await wsConnect(node.url.replace(/^http/, 'ws') + `${path}?since=0`, { headers: bearer(path) });
      const replay = new Inbox(again);
      expect((await replay.waitFor(1))[0].data.toString()).toBe('via sentinel');
      again.close();
      const direct = adminOf(master.port);
      try {
        await direct.select(5);
        expect((await direct.xrange('{hookbot}:log', '-', '+')).map((e) => e[0])).toEqual([id]);
      } finally {
        direct.disconnect();
      }
    } finally {
      node.child.kill('SIGKILL');
      await node.exit;
    }
  });
});

describe.skipIf(noCluster)('Redis Cluster', () => {
  const ports: number[] = [];
  const running = new Map<number, ChildProcess>();
  let url: string;

  // Restarted on the same port with the same nodes file, a node rejoins with its node id and slots.
  // Its append-only file (fsynced before every answer) brings its data back too, unless a test deletes it.
  const startNode = async (p: number) =>
    running.set(
      p,
      await spawnRedis(p, [
        '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--loglevel', 'warning',
        '--appendonly', 'yes', '--appendfsync', 'always', '--dir', tmp, '--appenddirname', `aof-${p}`,
        '--cluster-enabled', 'yes', '--cluster-config-file', join(tmp, `nodes-${p}.conf`), '--cluster-node-timeout', '2000',
      ]),
    );

  async function killNode(p: number): Promise<void> {
    const proc = running.get(p)!;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await exited;
  }

  async function clusterOk(): Promise<void> {
    const admins = ports.map(adminOf);
    try {
      await waitFor(async () => {
        const infos = await Promise.all(admins.map((a) => (a.call('CLUSTER', 'INFO') as Promise<string>).catch(() => '')));
        return infos.every((i) => i.includes('cluster_state:ok'));
      }, 15_000, 'cluster_state:ok on every node');
    } finally {
      for (const a of admins) a.disconnect();
    }
  }

  beforeAll(async () => {
    for (let i = 0; i < 3; i++) ports.push(await freePort());
    await Promise.all(ports.map(startNode));
    const create = spawn('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(create);
    let out = '';
    create.stdout.on('data', (d) => (out += d.toString()));
    create.stderr.on('data', (d) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => create.once('exit', resolve));
    if (code !== 0) throw new Error(`redis-cli --cluster create failed (${code}): ${out}`);
    await clusterOk();
    url = `redis-cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`;
  }, 30_000);

  async function makeBackend(retention: Retention = DEFAULT_RETENTION, namespace = `cluster${++namespaces}`, backendUrl = url): Promise<RedisBackend> {
    const backend = new RedisBackend(backendUrl, retention, undefined, { namespace, minReconnectDelayMs: 50, maxReconnectDelayMs: 200 });
    await backend.whenReady(10_000);
    return backend;
  }

  // Each backend's own namespace is its own hash tag, so the suite's backends land on different nodes.
  backendContract(
    'redis cluster',
    async (retention) => {
      const backend = await makeBackend(retention);
      return { backend, cleanup: () => backend.close() };
    },
    { capsTopics: false },
  );

  describe('across nodes', () => {
    const open: RedisBackend[] = [];
    const cleanup = open;
    afterEach(async () => {
      for (const b of open.splice(0)) await b.close();
    });

    /** The port of the node serving the namespace's slot, and the others. */
    async function placement(ns: string): Promise<{ owner: number; others: number[] }> {
      const admin = adminOf(ports[0]);
      try {
        const slot = Number(await admin.call('CLUSTER', 'KEYSLOT', `{${ns}}:log`));
        const ranges = (await admin.call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number, ...unknown[]]]>;
        const owner = ranges.find(([from, to]) => slot >= from && slot <= to)![2][1];
        return { owner, others: ports.filter((p) => p !== owner) };
      } finally {
        admin.disconnect();
      }
    }

    /** The port of the node holding `name`'s connection. */
    async function whereIs(name: string): Promise<{ port: number; id: string }[]> {
      const found: { port: number; id: string }[] = [];
      for (const p of ports) {
        const admin = adminOf(p);
        try {
          for (const line of String(await admin.client('LIST')).split('\n')) {
            if (line.includes(` name=${name} `)) found.push({ port: p, id: /id=(\d+)/.exec(line)![1] });
          }
        } finally {
          admin.disconnect();
        }
      }
      return found;
    }

    async function node(ns: string, seedsFirst: number[]): Promise<{ backend: RedisBackend; received: Message[] }> {
      const ordered = [...seedsFirst, ...ports.filter((p) => !seedsFirst.includes(p))];
      const backend = await makeBackend(DEFAULT_RETENTION, ns, `redis-cluster://${ordered.map((p) => `127.0.0.1:${p}`).join(',')}`);
      open.push(backend);
      const received: Message[] = [];
      backend.setListener((m) => received.push(m));
      return { backend, received };
    }

    /** A node's own connections by role, wherever they are in the cluster. */
    const linksOf = (ns: string, backend: RedisBackend, role: 'cmd' | 'read') => whereIs(`${ns}-${role}-${backend.nodeId.slice(0, 8)}`);

    it("two nodes receive each other's publishes once, in order, each reading the feed from the slot owner", async () => {
      const ns = `fan${++namespaces}`;
      const { owner, others } = await placement(ns);
      // Each is given a node that does not own the slot: its reads are routed to the owner all the same.
      const a = await node(ns, [others[0]]);
      const b = await node(ns, [others[1]]);
      // (A Cluster client connects to every master; the read is the link to the owner.)
      for (const n of [a, b]) expect((await linksOf(ns, n.backend, 'read')).filter((l) => l.port === owner).length).toBe(1);

      const sent = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).backend.publish(`n/${i % 3}`, {}, Buffer.from(`m${i}`))));
      await waitFor(() => a.received.length >= 60 && b.received.length >= 60, 5000, 'both nodes');
      await new Promise((r) => setImmediate(r));
      const order = sent.map((m) => m.id).sort(compareIds);
      expect(a.received.map((m) => m.id)).toEqual(order);
      expect(b.received.map((m) => m.id)).toEqual(order);
      const h = await b.backend.history('n/');
      expect(h.messages.map((m) => m.id)).toEqual(order);
    });

    it('loses nothing when its read link to the slot owner is cut under a fast publisher (--history 5)', async () => {
      const ns = `cut${++namespaces}`;
      const { owner, others } = await placement(ns);
      const retention = { ...DEFAULT_RETENTION, count: 5 };
      const open = async (seed: number) => {
        const backend = await makeBackend(retention, ns, `redis-cluster://127.0.0.1:${seed}`);
        cleanup.push(backend);
        const received: Message[] = [];
        const lost: string[] = [];
        backend.setListener((m) => received.push(m));
        backend.onLost((id) => lost.push(id));
        return { backend, received, lost };
      };
      const a = await open(others[0]);
      const b = await open(others[1]);
      const sent: string[] = [];
      let publishing = true;
      const publishers = Array.from({ length: 8 }, async (_, p) => {
        for (let i = 0; publishing; i++) sent.push((await a.backend.publish(`c/${(p + i) % 2}`, {}, Buffer.from(`p${p}-${i}`))).id);
      });
      const admin = adminOf(owner);
      try {
        for (let k = 0; k < 3; k++) {
          const seen = b.received.length;
          await waitFor(() => b.backend.ready() && b.received.length > seen + 50, 10_000, 'live traffic on B');
          const [link] = (await linksOf(ns, b.backend, 'read')).filter((l) => l.port === owner);
          const reattaches = b.backend.stats.reattaches;
          await admin.client('KILL', 'ID', link.id);
          await waitFor(() => b.backend.stats.reattaches > reattaches, 10_000, 'B re-attached');
        }
      } finally {
        admin.disconnect();
        publishing = false;
        await Promise.all(publishers);
      }
      const order = [...sent].sort(compareIds);
      await waitFor(() => a.received.length >= sent.length && b.received.length >= sent.length, 10_000, 'everything delivered');
      await new Promise((r) => setImmediate(r));
      expect(a.received.map((m) => m.id)).toEqual(order);
      expect(b.received.map((m) => m.id)).toEqual(order);
      expect(a.lost).toEqual([]);
      expect(b.lost).toEqual([]);
      expect(b.backend.stats.caughtUp).toBeGreaterThan(0);
    });

    it.each([
      ['with its data (append-only file)', true],
      ['empty (its data lost)', false],
    ])('a message the slot owner accepted just before it was killed reaches the other nodes, or they report a gap: owner back %s', async (_label, keepData) => {
      const ns = `killed${++namespaces}`;
      const { owner, others } = await placement(ns);
      const open = async (seed: number, reconnectMs: number) => {
        const backend = new RedisBackend(`redis-cluster://127.0.0.1:${seed}`, DEFAULT_RETENTION, undefined, { namespace: ns, minReconnectDelayMs: reconnectMs, maxReconnectDelayMs: reconnectMs });
        cleanup.push(backend);
        await backend.whenReady(10_000);
        const received: Message[] = [];
        const lost: string[] = [];
        backend.setListener((m) => received.push(m));
        backend.onLost((id) => lost.push(id));
        return { backend, received, lost };
      };
      const a = await open(others[0], 50);
      // B is slow to come back once cut, so it certainly has not read what follows when the owner dies.
      const b = await open(others[1], 3000);
      const before = await a.backend.publish('k', {}, Buffer.from('before'));
      await waitFor(() => b.received.length === 1 && a.received.length === 1, 5000, 'before, on both');
      const admin = adminOf(owner);
      try {
        const [link] = (await linksOf(ns, b.backend, 'read')).filter((l) => l.port === owner);
        await admin.client('KILL', 'ID', link.id);
      } finally {
        admin.disconnect();
      }
      const accepted = await a.backend.publish('k', {}, Buffer.from('accepted'));
      await killNode(owner);
      expect(b.received.map((m) => m.id)).toEqual([before.id]);
      if (!keepData) rmSync(join(tmp, `aof-${owner}`), { recursive: true, force: true });
      await startNode(owner);
      await clusterOk();

      const after = await waitFor(() => a.backend.publish('k', {}, Buffer.from('after')).catch(() => undefined), 20_000, 'publish after the owner returned');
      for (const n of [a, b]) await waitFor(() => n.received.some((m) => m.id === after.id), 15_000, 'after, on both');
      if (keepData) {
        // The owner came back with it: it reached B too, which was cut off when it was accepted.
        for (const n of [a, b]) {
          expect(n.received.map((m) => m.id)).toEqual([before.id, accepted.id, after.id]);
          expect(n.lost).toEqual([]);
        }
      } else {
        // Never silent: each node says it may have missed messages after the last one it had
        // (A may have read 'accepted' before the kill; B certainly had not).
        expect(b.received.map((m) => m.id)).toEqual([before.id, after.id]);
        expect(b.lost).toEqual([before.id]);
        const gotA = a.received.map((m) => m.id);
        const lastA = gotA.includes(accepted.id) ? accepted.id : before.id;
        expect(gotA).toEqual(lastA === accepted.id ? [before.id, accepted.id, after.id] : [before.id, after.id]);
        expect(a.lost).toEqual([lastA]);
      }
    }, 60_000);

    it('rejects publishes while the node owning its slot is down, and recovers (data and all) when it returns', async () => {
      const ns = `down${++namespaces}`;
      const { owner, others } = await placement(ns);
      const a = await node(ns, [others[0]]);
      const first = await a.backend.publish('d', {}, Buffer.from('before'));
      await waitFor(() => a.received.some((m) => m.id === first.id), 5000, 'delivery before the kill');

      await killNode(owner);
      const started = Date.now();
      await expect(a.backend.publish('d', {}, Buffer.from('lost?'))).rejects.toThrow(/^redis unavailable: /);
      // Bounded by the command timeout (3 s) plus ioredis's CLUSTERDOWN retries, not hanging.
      expect(Date.now() - started).toBeLessThan(6000);

      await startNode(owner);
      await clusterOk();
      const after = await waitFor(() => a.backend.publish('d', {}, Buffer.from('after')).catch(() => undefined), 15_000, 'publish after the node returned');
      await waitFor(() => a.received.some((m) => m.id === after.id), 5000, 'delivery after the node returned');
      expect(a.received.map((m) => m.body.toString())).toEqual(['before', 'after']);
      expect(a.backend.stats.lost).toBe(0);
      expect(compareIds(after.id, first.id)).toBe(1);
    }, 40_000);
  });
});
