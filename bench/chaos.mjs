#!/usr/bin/env node
// hookbot cluster chaos run: a real redis-server (append-only file, fsync before every
// answer) and 3 `hookbot serve --redis` nodes (dist/, via bin/hookbot.js); ~30
// subscribers, half of them through a small TCP balancer that picks a live node; and
// publishers that retry every publish with the same Idempotency-Key until it is answered
// 200. For a while it SIGKILLs and restarts random nodes, cuts the nodes' Redis links
// (CLIENT KILL) and restarts Redis once (SIGKILL). Then it checks every subscriber got
// every acknowledged message for its topic exactly once, in id order.
//
//   node bench/chaos.mjs [--seconds 60] [--seed N]      (npm run chaos builds first)
//
// Prints per subscriber: acknowledged (expected), received, lost, duplicated, out of
// order and gaps reported, then a summary; exits 1 on any loss, duplicate or disorder
// (2 if the run itself broke). Only 127.0.0.1; every child process is killed at the end.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import WebSocket from 'ws';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin', 'hookbot.js');
const KEY = 'chaos-key';

const { subscribe } = await import(path.join(ROOT, 'dist', 'client', 'index.js'));
const { makeToken } = await import(path.join(ROOT, 'dist', 'protocol', 'tokens.js'));

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(name);
  return i === -1 ? fallback : Number(argv[i + 1]);
};
const SECONDS = opt('--seconds', 60);
let seed = opt('--seed', Date.now() % 1_000_000);
const SEED = seed;
// A small deterministic PRNG, so a failing run can be replayed with --seed.
const random = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
};
const pick = (list) => list[Math.floor(random() * list.length)];
const between = (lo, hi) => lo + random() * (hi - lo);

const NODES = 3;
const PUBLISHERS = 4;
const PUBLISH_GAP_MS = 15; // per publisher, between answered publishes (at most ~250 publishes/s in all)
const TOPICS = ['chaos/a', 'chaos/b', 'chaos/c/deep', 'chaos/d'];
const HARD_LIMIT_MS = (SECONDS + 150) * 1000;

const log = (...a) => process.stderr.write(`[chaos] ${a.join(' ')}\n`);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hookbot-chaos-'));

// ---------------------------------------------------------------- processes

const children = new Set();
function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
}
process.on('exit', () => {
  killAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(2));
const hardLimit = setTimeout(() => {
  log(`run exceeded ${HARD_LIMIT_MS / 1000} s; giving up`);
  process.exit(2);
}, HARD_LIMIT_MS);
hardLimit.unref();

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function spawnTracked(cmd, args, options) {
  const child = spawn(cmd, args, options);
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

class RedisProc {
  constructor(port) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.proc = undefined;
  }

  async start() {
    this.proc = spawnTracked(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', tmp, '--loglevel', 'warning'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    const deadline = Date.now() + 10_000;
    const probe = new Redis({ port: this.port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: null });
    probe.on('error', () => {});
    try {
      for (;;) {
        try {
          await Promise.race([probe.ping(), sleep(200).then(() => Promise.reject(new Error('slow')))]);
          return;
        } catch {
          if (Date.now() > deadline) throw new Error('redis-server did not start');
        }
      }
    } finally {
      probe.disconnect();
    }
  }

  async kill() {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }
}

class NodeProc {
  constructor(index, port, redisUrl) {
    this.index = index;
    this.port = port;
    this.redisUrl = redisUrl;
    this.proc = undefined;
    this.output = '';
    this.starts = 0;
    this.unexpectedExits = [];
  }

  get up() {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start() {
    this.starts++;
    const child = spawnTracked(
      process.execPath,
      [BIN, 'serve', '--bind', `127.0.0.1:${this.port}`, '--redis', this.redisUrl, '--history', '20000', '--history-age', '1h', '--log-level', 'warn'],
      {
        cwd: ROOT,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, HOOKBOT_KEY: KEY, HOOKBOT_LOG_JSON: '1', HOOKBOT_RATE_LIMIT: '0', HOOKBOT_MAX_SUBSCRIBERS_PER_IP: '0' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.proc = child;
    this.killing = false;
    const keep = (d) => {
      this.output = (this.output + d.toString()).slice(-20_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('exit', (code, signal) => {
      if (!this.killing) this.unexpectedExits.push(`${code ?? signal}`);
    });
    const deadline = Date.now() + 15_000;
    while (!(await canConnect(this.port))) {
      if (!this.up) throw new Error(`node ${this.index} exited at start:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`node ${this.index} did not listen:\n${this.output}`);
      await sleep(50);
    }
  }

  async kill() {
    if (!this.up) return;
    this.killing = true;
    const p = this.proc;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }
}

// ---------------------------------------------------------------- balancer

/** A TCP balancer: each connection goes to the next node that accepts one. */
function startBalancer(nodes) {
  let next = 0;
  const server = net.createServer((client) => {
    client.pause();
    client.on('error', () => {});
    const attempt = (tries) => {
      if (tries >= nodes.length) return client.destroy();
      const node = nodes[next++ % nodes.length];
      const upstream = net.connect(node.port, '127.0.0.1');
      upstream.once('error', () => {
        if (!upstream.connected) attempt(tries + 1);
      });
      upstream.once('connect', () => {
        upstream.connected = true;
        upstream.on('error', () => client.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        client.once('close', () => upstream.destroy());
        upstream.once('close', () => client.destroy());
      });
    };
    attempt(0);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: server.address().port })));
}

// ---------------------------------------------------------------- subscribers

class Tally {
  constructor(name, topic, via) {
    this.name = name;
    this.topic = topic;
    this.via = via;
    this.ids = [];
    this.bodies = [];
    this.gaps = 0;
    this.connections = 0;
  }

  record(id, body) {
    this.ids.push(id);
    this.bodies.push(body);
  }

  matches(topic) {
    return this.topic.endsWith('/') ? topic.startsWith(this.topic) : topic === this.topic;
  }
}

function compareIds(a, b) {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am - bm || as - bs;
}

/** A raw `hookbot.v1` WebSocket subscriber that reconnects with ?since=<last id>. */
class V1Subscriber {
  constructor(tally, portOf, since) {
    this.tally = tally;
    this.portOf = portOf;
    this.last = since;
    this.closed = false;
    this.liveOnce = undefined;
    this.live = new Promise((r) => (this.liveOnce = r));
    this.#connect();
  }

  #connect() {
    if (this.closed) return;
    const sub = `/sub/${this.tally.topic}`;
    const url = `ws://127.0.0.1:${this.portOf()}${sub}?since=${this.last}`;
    const ws = new WebSocket(url, ['hookbot.v1'], { headers: { authorization: `Bearer ${makeToken(KEY, sub)}` }, handshakeTimeout: 5000 });
    this.ws = ws;
    ws.on('open', () => this.tally.connections++);
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.type === 'message') {
        this.tally.record(frame.id, frame.body);
        this.last = frame.id;
      } else if (frame.type === 'gap') {
        this.tally.gaps++;
      } else if (frame.type === 'live') {
        this.liveOnce();
      }
    });
    ws.on('error', () => {});
    ws.on('close', () => {
      if (!this.closed) setTimeout(() => this.#connect(), between(50, 300));
    });
  }

  close() {
    this.closed = true;
    this.ws?.close();
  }
}

/** The `subscribe()` library (dist/client), which resumes by id by itself. */
class LibrarySubscriber {
  constructor(tally, port, since) {
    this.tally = tally;
    const sub = `/sub/${tally.topic}`;
    let liveOnce;
    this.live = new Promise((r) => (liveOnce = r));
    this.sub = subscribe(`ws://127.0.0.1:${port}${sub}`, {
      token: makeToken(KEY, sub),
      since,
      minBackoffMs: 50,
      maxBackoffMs: 500,
      pingIntervalMs: 2000,
      deadlineMs: 6000,
      onMessage: (m) => tally.record(m.id, m.body.toString()),
      onGap: () => tally.gaps++,
    });
    this.sub.on('open', () => tally.connections++);
    this.sub.on('live', () => liveOnce());
    this.sub.on('warning', () => {});
  }

  close() {
    return this.sub.close();
  }
}

// ---------------------------------------------------------------- publishers

const stats = { acked: 0, attempts: 0, retries: 0, deduplicated: 0, status: {}, networkErrors: 0, kills: 0, linkDrops: 0, redisRestarts: 0 };
const acked = []; // { id, topic, body }

async function publishOnce(port, topic, body) {
  const pub = `/pub/${topic}`;
  const res = await fetch(`http://127.0.0.1:${port}${pub}`, {
    method: 'POST',
    body,
    headers: { authorization: `Bearer ${makeToken(KEY, pub)}`, 'idempotency-key': body },
    signal: AbortSignal.timeout(5000),
  });
  await res.arrayBuffer();
  return res;
}

async function publisher(p, portFor, running) {
  for (let seq = 0; running(); seq++) {
    const topic = pick(TOPICS);
    const body = `pub${p}-${seq}`;
    // Retried with the same key until answered 200, however long that takes.
    for (let attempt = 0; ; attempt++) {
      stats.attempts++;
      if (attempt > 0) stats.retries++;
      const at = Date.now();
      try {
        const res = await publishOnce(portFor(p, attempt), topic, body);
        stats.status[res.status] = (stats.status[res.status] ?? 0) + 1;
        if (res.status === 200) {
          const id = res.headers.get('x-hookbot-message-id');
          acked.push({ id, topic, body });
          stats.acked++;
          // An id from before this attempt began: an earlier attempt stored it, and its answer was lost.
          if (attempt > 0 && Number(id.split('-')[0]) < at) stats.deduplicated++;
          break;
        }
      } catch {
        stats.networkErrors++;
      }
      await sleep(between(20, 150));
    }
    await sleep(PUBLISH_GAP_MS);
  }
}

// ---------------------------------------------------------------- the run

async function main() {
  log(`seed ${SEED}, ${SECONDS} s of chaos`);
  const redis = new RedisProc(await freePort());
  await redis.start();
  const nodes = [];
  for (let i = 0; i < NODES; i++) nodes.push(new NodeProc(i, await freePort(), redis.url));
  await Promise.all(nodes.map((n) => n.start()));
  const balancer = await startBalancer(nodes);
  const admin = new Redis({ port: redis.port, host: '127.0.0.1', retryStrategy: () => 100, maxRetriesPerRequest: 1 });
  admin.on('error', () => {});

  // A marker before everything: every subscriber starts from it, so each expects exactly
  // the acknowledged messages of its topics.
  const marker = await publishOnce(nodes[0].port, 'chaos/marker', 'marker');
  if (marker.status !== 200) throw new Error(`marker publish answered ${marker.status}`);
  const since = marker.headers.get('x-hookbot-message-id');

  const tallies = [];
  const subscribers = [];
  const directPort = (i) => () => nodes[i % NODES].port;
  const topicsFor = [...TOPICS, 'chaos/', 'chaos/c/'];
  // 20 raw hookbot.v1 and 10 library subscribers; every other one through the balancer.
  for (let i = 0; i < 30; i++) {
    const topic = topicsFor[i % topicsFor.length];
    const viaBalancer = i % 2 === 0;
    const kind = i < 20 ? 'v1' : 'lib';
    const tally = new Tally(`${kind}-${i}`, topic, viaBalancer ? 'balancer' : `node${i % NODES}`);
    tallies.push(tally);
    if (kind === 'v1') subscribers.push(new V1Subscriber(tally, viaBalancer ? () => balancer.port : directPort(i), since));
    else subscribers.push(new LibrarySubscriber(tally, viaBalancer ? balancer.port : nodes[i % NODES].port, since));
  }
  await Promise.race([Promise.all(subscribers.map((s) => s.live)), sleep(20_000).then(() => Promise.reject(new Error('subscribers not live in 20 s')))]);
  log(`${subscribers.length} subscribers live; publishing`);

  let publishing = true;
  const portFor = (p, attempt) => {
    // Half the publishers go through the balancer; the others to a node of their own, or any live one after a failure.
    if (p % 2 === 0) return balancer.port;
    const own = nodes[p % NODES];
    return attempt === 0 || own.up ? own.port : pick(nodes.filter((n) => n.up).concat(own)).port;
  };
  const pubs = Array.from({ length: PUBLISHERS }, (_, p) => publisher(p, portFor, () => publishing));

  // The chaos itself.
  const started = Date.now();
  const until = started + SECONDS * 1000;
  const redisRestartAt = started + SECONDS * 500;
  let redisRestarted = false;
  const killer = (async () => {
    while (Date.now() < until) {
      await sleep(between(2000, 5000));
      if (Date.now() >= until) break;
      const live = nodes.filter((n) => n.up);
      if (live.length < 2) continue;
      const victim = pick(live);
      await victim.kill();
      stats.kills++;
      await sleep(between(300, 2500));
      await victim.start();
    }
  })();
  const cutter = (async () => {
    while (Date.now() < until) {
      await sleep(between(1500, 4000));
      if (Date.now() >= until) break;
      if (!redisRestarted && Date.now() >= redisRestartAt) {
        redisRestarted = true;
        log('restarting Redis (SIGKILL)');
        await redis.kill();
        await sleep(between(200, 1000));
        await redis.start();
        stats.redisRestarts++;
        continue;
      }
      try {
        // The nodes' read links, and their command links (publishes in flight then fail: retried by key).
        const list = String(await admin.client('LIST'));
        const ids = list
          .split('\n')
          .filter((l) => / name=hookbot-(read|cmd)-/.test(l) && (random() < 0.7))
          .map((l) => /id=(\d+)/.exec(l)[1]);
        for (const id of ids) await admin.client('KILL', 'ID', id).catch(() => {});
        stats.linkDrops += ids.length;
      } catch {
        // Redis away: next time
      }
    }
  })();
  const progress = setInterval(() => log(`${Math.round((Date.now() - started) / 1000)} s: ${stats.acked} acknowledged, ${stats.retries} retries, ${stats.kills} node kills, ${stats.linkDrops} links cut, nodes up: ${nodes.filter((n) => n.up).length}`), 10_000);
  await Promise.all([killer, cutter]);
  for (const n of nodes) if (!n.up) await n.start();
  publishing = false;
  await Promise.all(pubs);
  clearInterval(progress);
  log(`chaos over after ${Math.round((Date.now() - started) / 1000)} s; ${stats.acked} acknowledged; waiting for delivery`);

  // Drain: until every subscriber has as many messages as it expects, or 60 s.
  const expected = new Map(tallies.map((t) => [t, acked.filter((a) => t.matches(a.topic))]));
  const drainDeadline = Date.now() + 60_000;
  while (Date.now() < drainDeadline && tallies.some((t) => new Set(t.ids).size < expected.get(t).length)) await sleep(200);
  // A little longer, so late duplicates would show too.
  await sleep(1000);
  await Promise.all(subscribers.map((s) => s.close()));

  // Count.
  const bodyOf = new Map(acked.map((a) => [a.id, a.body]));
  let failures = 0;
  const rows = [];
  for (const t of tallies) {
    const want = expected.get(t);
    const got = new Set(t.ids);
    const lost = want.filter((a) => !got.has(a.id)).length;
    let duplicated = t.ids.length - got.size;
    // The same publish stored twice (a retry that made a second message): one body under two ids.
    const byBody = new Map();
    for (let i = 0; i < t.ids.length; i++) {
      const ids = byBody.get(t.bodies[i]) ?? new Set();
      ids.add(t.ids[i]);
      byBody.set(t.bodies[i], ids);
    }
    for (const ids of byBody.values()) duplicated += ids.size - 1;
    let disorder = 0;
    for (let i = 1; i < t.ids.length; i++) if (compareIds(t.ids[i], t.ids[i - 1]) <= 0) disorder++;
    // Received but never acknowledged (stored, and its publisher still retrying when the run ended): not an error.
    const unacked = [...got].filter((id) => !bodyOf.has(id) && id !== since).length;
    if (lost || duplicated || disorder) failures++;
    rows.push({ subscriber: t.name, topic: t.topic, via: t.via, acknowledged: want.length, received: t.ids.length, lost, duplicated, out_of_order: disorder, gaps: t.gaps, connections: t.connections, unacknowledged: unacked });
  }
  admin.disconnect();
  balancer.server.close();
  for (const n of nodes) await n.kill();
  await redis.kill();

  const cols = ['subscriber', 'topic', 'via', 'acknowledged', 'received', 'lost', 'duplicated', 'out_of_order', 'gaps', 'connections'];
  const width = (c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length));
  process.stdout.write(cols.map((c) => c.padEnd(width(c))).join('  ') + '\n');
  for (const r of rows) process.stdout.write(cols.map((c) => String(r[c]).padEnd(width(c))).join('  ') + '\n');
  const sum = (k) => rows.reduce((n, r) => n + r[k], 0);
  const unexpected = nodes.flatMap((n) => n.unexpectedExits.map((e) => `node ${n.index} exited by itself (${e})`));
  const summary = {
    seed: SEED,
    seconds: SECONDS,
    acknowledged: stats.acked,
    publish_attempts: stats.attempts,
    retries: stats.retries,
    retries_answered_with_the_original_id: stats.deduplicated,
    answers: stats.status,
    network_errors: stats.networkErrors,
    node_kills: stats.kills,
    links_cut: stats.linkDrops,
    redis_restarts: stats.redisRestarts,
    subscribers: rows.length,
    deliveries: sum('received'),
    received_unacknowledged: sum('unacknowledged'),
    lost: sum('lost'),
    duplicated: sum('duplicated'),
    out_of_order: sum('out_of_order'),
    gaps_reported: sum('gaps'),
    problems: unexpected,
  };
  process.stdout.write(JSON.stringify(summary) + '\n');
  if (failures || unexpected.length) {
    log(`FAIL: ${failures} subscribers lost, duplicated or reordered messages; ${unexpected.length} unexpected exits`);
    for (const n of nodes) if (n.unexpectedExits.length) log(`node ${n.index} output:\n${n.output}`);
    process.exitCode = 1;
  } else {
    log('PASS: every acknowledged message reached every subscriber once, in order');
  }
}

main()
  .then(() => process.exit(process.exitCode ?? 0))
  .catch((err) => {
    log(`run broke: ${err.stack ?? err}`);
    process.exit(2);
  });
