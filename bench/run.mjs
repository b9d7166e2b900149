#!/usr/bin/env node
// hookbot load benchmark: runs each scenario against the real server (dist/, via
// bin/hookbot.js) and against the minimal floor server (bench/floor-server.mjs), prints
// one JSON line per scenario and server on stdout, then one ratio line per target.
// Progress and a human summary go to stderr. A missed target is a figure, not a failure:
// the exit code is 0 unless the bench itself broke.
//
//   node bench/run.mjs [fanout|fanout8|steady|sse|pubrate|idle|topics|twonode ...] [--quick] [--rounds N]
//                      [--hookbot-is-floor]
//
// Only 127.0.0.1 traffic; every child process is killed on exit, error or signal.
import { spawn, fork, execFileSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHmac } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KEY = 'benchkey';
const ALL = ['fanout', 'fanout8', 'steady', 'sse', 'pubrate', 'idle', 'topics', 'twonode'];

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
if (argv.includes('--help') || argv.includes('-h')) {
  process.stderr.write(
    'usage: node bench/run.mjs [fanout|fanout8|steady|sse|pubrate|idle|topics|twonode ...] [--quick] [--rounds N] [--hookbot-is-floor]\n',
  );
  process.exit(0);
}
const quick = argv.includes('--quick');
const hookbotIsFloor = argv.includes('--hookbot-is-floor');
const roundsIdx = argv.indexOf('--rounds');
const roundsFlag = roundsIdx !== -1 ? Math.max(1, Number(argv[roundsIdx + 1]) || 1) : undefined;
// Rounds per side; the reported figure is the median. Cheap scenarios get more.
const DEFAULT_ROUNDS = { fanout: 3, fanout8: 3, steady: 3, sse: 3, pubrate: 5, topics: 5, twonode: 3, idle: 1 };
const roundsFor = (scenario) => (scenario === 'idle' ? 1 : roundsFlag ?? (quick ? 1 : DEFAULT_ROUNDS[scenario]));
const selected = argv.filter((a, i) => !a.startsWith('--') && argv[i - 1] !== '--rounds');
for (const s of selected) {
  if (!ALL.includes(s)) {
    process.stderr.write(`unknown scenario ${s}; known: ${ALL.join(', ')}\n`);
    process.exit(2);
  }
}
const scenarios = selected.length ? ALL.filter((s) => selected.includes(s)) : ALL;

const SIZES = quick
  ? {
      fanout: { subscribers: 200, messages: 100, bytes: 1024, warmup: 10, concurrency: 1 },
      fanout8: { subscribers: 200, messages: 100, bytes: 1024, warmup: 10, concurrency: 8 },
      steady: { subscribers: 200, messages: 40, bytes: 1024, warmup: 10, concurrency: 1, rate: 20 },
      sse: { subscribers: 100, messages: 50, bytes: 1024, warmup: 10, concurrency: 1 },
      pubrate: { publishes: 3000, bytes: 256, concurrency: 32, warmup: 500, subscribers: 1 },
      idle: { connections: 1000 },
      topics: { many: 1000, few: 100, recursive: 10, publishes: 2000, warmup: 300, bytes: 256, concurrency: 32 },
      twonode: { subscribers: 200, messages: 100, bytes: 1024, warmup: 10, concurrency: 1 },
    }
  : {
      fanout: { subscribers: 1000, messages: 500, bytes: 1024, warmup: 20, concurrency: 1 },
      // The same load with 8 publishes in flight, as when a burst of webhooks arrives.
      fanout8: { subscribers: 1000, messages: 500, bytes: 1024, warmup: 20, concurrency: 8 },
      // The same at a steady 20 publishes/s, well below either server's capacity, so
      // both carry the same load and latency compares like with like.
      steady: { subscribers: 1000, messages: 200, bytes: 1024, warmup: 20, concurrency: 1, rate: 20 },
      // The fanout load over Server-Sent Events against the same over WebSocket, both hookbot.
      sse: { subscribers: 500, messages: 200, bytes: 1024, warmup: 20, concurrency: 1 },
      pubrate: { publishes: 20000, bytes: 256, concurrency: 32, warmup: 2000, subscribers: 1 },
      idle: { connections: 5000 },
      topics: { many: 10000, few: 100, recursive: 10, publishes: 10000, warmup: 1000, bytes: 256, concurrency: 32 },
      twonode: { subscribers: 1000, messages: 500, bytes: 1024, warmup: 20, concurrency: 1 },
    };

const TARGETS = {
  fanoutCpu: 0.4, // hookbot / floor CPU µs per delivery, at most
  fanoutP99Memory: 1.2, // hookbot (durable default) / hookbot --memory p99 fan-out latency, at most
  pubrateCpu: 1.5, // hookbot (durable default) / floor CPU µs per publish, at most
  idleKb: 12, // hookbot KB RSS per idle subscriber, at most (absolute)
  topicsScale: 1.2, // hookbot CPU per publish at many topics / at few, at most
  twonodeRate: 0.7, // two-node / single-node deliveries per second, at least
  sseCpu: 1.3, // hookbot SSE / hookbot WebSocket CPU µs per delivery, at most
};

// ---------------------------------------------------------------- child processes

const children = new Set();
function track(proc) {
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  return proc;
}
// hookbot's data directories (its default durable store), removed with their servers or at exit.
const dataDirs = new Set();
function removeDataDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  dataDirs.delete(dir);
}
function killAll() {
  for (const p of children) {
    try {
      p.kill('SIGKILL');
    } catch {}
  }
  for (const dir of dataDirs) removeDataDir(dir);
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    progress(`${sig}: killing child processes`);
    killAll();
    process.exit(130);
  });
}
// Hard bound on the whole run, whatever happens inside a scenario.
setTimeout(
  () => {
    progress('bench exceeded its time limit; killing child processes');
    killAll();
    process.exit(3);
  },
  (quick ? 5 : 25) * 60_000,
).unref();

function progress(msg) {
  process.stderr.write(`[bench] ${msg}\n`);
}
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ---------------------------------------------------------------- /proc helpers

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime+stime of every thread of the process, in µs (resolution 1/CLK_TCK s). */
function cpuUs(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
}
function rssKb(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}
/** Polls RSS until it stops moving (GC, lazy allocation), within a time bound. */
async function settledRss(pid, { intervalMs = 250, samples = 6, maxMs = 15000 } = {}) {
  const start = Date.now();
  const window = [rssKb(pid)];
  while (Date.now() - start < maxMs) {
    await sleep(intervalMs);
    window.push(rssKb(pid));
    if (window.length > samples) window.shift();
    if (window.length === samples) {
      const lo = Math.min(...window);
      const hi = Math.max(...window);
      if (hi - lo <= Math.max(64, hi * 0.002)) return { kb: window[window.length - 1], settled: true, ms: Date.now() - start };
    }
  }
  return { kb: window[window.length - 1], settled: false, ms: Date.now() - start };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function onPath(cmd) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    try {
      fs.accessSync(path.join(dir, cmd), fs.constants.X_OK);
      return path.join(dir, cmd);
    } catch {}
  }
  return undefined;
}

// ---------------------------------------------------------------- servers

function httpGet(port, urlPath, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
  });
}

/**
 * Starts one server process on a port picked here (the real server logs its port only
 * at info level and the bench runs it at warn) and waits until GET /status answers 200.
 * The real server runs on its default durable store in a fresh temporary data directory
 * (`fsync` sets --fsync), unless `memory` (--memory) or `redis` (cluster mode).
 */
async function startServer(kind, { redis, memory, fsync, readyMs = 15000 } = {}) {
  const port = await freePort();
  const real = kind === 'hookbot' && !hookbotIsFloor;
  const env = { ...process.env };
  delete env.HOOKBOT_REDIS_URL;
  delete env.HOOKBOT_DATA_DIR;
  delete env.HOOKBOT_MEMORY;
  delete env.HOOKBOT_FSYNC;
  let args;
  let dataDir;
  if (real) {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'index.js'))) throw new Error('dist/cli/index.js is missing: run `npm run build`');
    args = [path.join(ROOT, 'bin', 'hookbot.js'), 'serve', '--bind', `127.0.0.1:${port}`, '--log-level', 'warn'];
    if (redis) args.push('--redis', redis);
    else if (memory) args.push('--memory');
    else {
      dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hookbot-bench-'));
      dataDirs.add(dataDir);
      args.push('--data-dir', dataDir);
      if (fsync) args.push('--fsync', fsync);
    }
    env.HOOKBOT_KEY = KEY;
    // The bench is one client address opening thousands of subscriptions and
    // publishing as fast as it can: the abuse limits must be off (0 disables each).
    // Environment rather than flags, so a build without these limits still starts.
    env.HOOKBOT_RATE_LIMIT = '0';
    env.HOOKBOT_MAX_SUBSCRIBERS_PER_IP = '0';
    env.HOOKBOT_MAX_SUBSCRIPTIONS = '0';
  } else {
    args = [path.join(ROOT, 'bench', 'floor-server.mjs'), String(port)];
  }
  const proc = track(spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  const tail = [];
  let logLines = 0;
  for (const stream of [proc.stdout, proc.stderr]) {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!/^Listening on /.test(line)) logLines++;
        tail.push(line.length > 400 ? line.slice(0, 400) + '…' : line);
        if (tail.length > 20) tail.shift();
      }
    });
  }
  const exited = () => proc.exitCode !== null || proc.signalCode !== null;
  const srv = {
    kind,
    real,
    port,
    pid: proc.pid,
    base: `http://127.0.0.1:${port}`,
    wsBase: `ws://127.0.0.1:${port}`,
    tail,
    exited,
    /** log lines the server printed besides its "Listening" line (warnings, errors) */
    logLines: () => logLines,
    describeExit: () => `exit code ${proc.exitCode}${proc.signalCode ? ` signal ${proc.signalCode}` : ''}`,
    async stop() {
      if (exited()) {
        if (dataDir) removeDataDir(dataDir);
        return { alreadyExited: srv.describeExit() };
      }
      const start = Date.now();
      const done = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const graceful = await Promise.race([done.then(() => true), sleep(5000).then(() => false)]);
      if (!graceful) {
        proc.kill('SIGKILL');
        await done;
      }
      if (dataDir) removeDataDir(dataDir);
      return { graceful, ms: Date.now() - start, code: proc.exitCode };
    },
  };
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (exited()) throw new Error(`${kind} server exited before ready (${srv.describeExit()}): ${tail.slice(-5).join(' | ')}`);
    if ((await httpGet(port, '/status')) === 200) break;
    if (Date.now() > deadline) {
      await srv.stop();
      throw new Error(`${kind} server not ready within ${readyMs} ms: ${tail.slice(-5).join(' | ')}`);
    }
    await sleep(50);
  }
  return srv;
}

// ---------------------------------------------------------------- subscriber worker

class Clients {
  #proc;
  #pending = new Map();
  #seq = 0;
  constructor() {
    this.#proc = track(fork(path.join(ROOT, 'bench', 'clients.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    this.#proc.on('message', (m) => {
      const p = this.#pending.get(m.id);
      if (p) {
        this.#pending.delete(m.id);
        p.resolve(m);
      }
    });
    this.#proc.on('exit', (code, signal) => {
      for (const p of this.#pending.values()) p.reject(new Error(`subscriber worker exited (${code ?? signal})`));
      this.#pending.clear();
    });
  }
  call(cmd, args = {}, timeoutMs = 180_000) {
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`subscriber worker: ${cmd} timed out`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (m) => (clearTimeout(timer), resolve(m)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.#proc.send({ cmd, id, ...args });
    });
  }
  async close() {
    if (this.#proc.exitCode !== null) return;
    const done = new Promise((r) => this.#proc.once('exit', r));
    await this.call('close', {}, 10_000).catch(() => {});
    await Promise.race([done, sleep(2000)]);
    this.#proc.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------- publishing

const tokens = new Map();
function token(p) {
  let t = tokens.get(p);
  if (!t) tokens.set(p, (t = createHmac('sha1', KEY).update(p).digest('hex')));
  return t;
}
function subTarget(srv, topic, framed = false, sse = false) {
  return { url: `${sse ? srv.base : srv.wsBase}/sub/${topic}`, token: token(`/sub/${topic}`), framed, sse };
}

let seqCounter = 0;
const fillers = new Map();
/** A payload of `bytes` bytes: send time (hrtime ns, LE) + sequence number + filler. */
function payload(bytes) {
  let filler = fillers.get(bytes);
  if (!filler) fillers.set(bytes, (filler = Buffer.alloc(Math.max(12, bytes), 0x61)));
  const b = Buffer.allocUnsafe(filler.length);
  filler.copy(b);
  b.writeBigUInt64LE(process.hrtime.bigint(), 0);
  b.writeUInt32LE(++seqCounter, 8);
  return b;
}

/**
 * Publishes n messages over keep-alive connections with `concurrency` requests in
 * flight. The body is built (and time-stamped) just before each request is sent.
 * With `rate` (per second), publish i is not sent before i / rate seconds from the
 * start: a steady load instead of as fast as the server answers.
 */
async function publishMany(srv, { n, concurrency, topicFor, bytes, rate }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const statuses = {};
  const errors = {};
  const errorBodies = [];
  let next = 0;
  const one = (i) =>
    new Promise((resolve) => {
      const p = `/pub/${topicFor(i)}`;
      const body = payload(bytes);
      const req = http.request(
        {
          agent,
          host: '127.0.0.1',
          port: srv.port,
          method: 'POST',
          path: p,
          headers: {
            authorization: `Bearer ${token(p)}`,
            'content-type': 'application/octet-stream',
            'content-length': body.length,
          },
        },
        (res) => {
          statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
          if (res.statusCode !== 200 && errorBodies.length < 2) {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (d) => (text += d));
            res.on('end', () => {
              errorBodies.push(`${res.statusCode} ${text.trim().slice(0, 200)}`);
              resolve();
            });
            return;
          }
          res.resume();
          res.on('end', resolve);
        },
      );
      inflight.add(req);
      req.on('close', () => inflight.delete(req));
      req.on('error', (e) => {
        errors[e.code || e.message] = (errors[e.code || e.message] || 0) + 1;
        resolve();
      });
      req.end(body);
    });
  // One watchdog for the whole batch rather than a timer per request (cheaper for the
  // publisher, which shares the machine with the server under test).
  const inflight = new Set();
  let done = 0;
  let seen = -1;
  const watchdog = setInterval(() => {
    if (done === seen) for (const req of inflight) req.destroy(new Error('no response within 15 s'));
    seen = done;
  }, 15000);
  const start = process.hrtime.bigint();
  const startMs = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) {
        const i = next++;
        if (rate) {
          const wait = startMs + (i * 1000) / rate - performance.now();
          if (wait > 0) await sleep(wait);
        }
        await one(i);
        done++;
      }
    }),
  );
  clearInterval(watchdog);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  agent.destroy();
  const ok = statuses[200] || 0;
  return { ok, failed: n - ok, statuses, errors, errorBodies, seconds };
}

// ---------------------------------------------------------------- small utils

function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
function round(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return x ?? null;
  const p = 10 ** Math.max(0, digits - Math.max(0, Math.floor(Math.log10(Math.abs(x) || 1)) + 1));
  return Math.round(x * p) / p;
}
function mulberry32(seed) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** Problems worth a reader's attention; an empty list means a clean run. */
function problems({ pubs = [], expected, received, conn, stats, servers }) {
  const out = [];
  for (const p of pubs) {
    if (p.failed) out.push(`publish: ${p.failed} not 200 (${JSON.stringify(p.statuses)} ${JSON.stringify(p.errors)}) ${p.errorBodies.join(' / ')}`);
  }
  if (conn && conn.failed) out.push(`subscribe: ${conn.failed} failed (${JSON.stringify(conn.statuses)} ${JSON.stringify(conn.errors)})`);
  if (expected !== undefined && received !== expected) out.push(`deliveries: ${received} of ${expected} expected`);
  if (stats) {
    if (stats.orderErrors) out.push(`order: ${stats.orderErrors} frames out of publish order`);
    if (stats.textFrames) out.push(`frames: ${stats.textFrames} text frames (expected binary)`);
    if (Object.keys(stats.closes).length) out.push(`closed by server: ${JSON.stringify(stats.closes)}`);
  }
  for (const s of servers || []) {
    if (s.exited()) out.push(`${s.kind} server died: ${s.describeExit()}: ${s.tail.slice(-3).join(' | ')}`);
    else if (s.logLines()) out.push(`${s.kind} server logged ${s.logLines()} warn/error lines, last: ${s.tail.slice(-2).join(' | ')}`);
  }
  return out;
}

// ---------------------------------------------------------------- sessions
//
// A session is one or more started servers, a subscriber worker already connected to
// them, and a `round()` that measures once. Sessions being compared are all opened
// first and their rounds interleaved (A B, B A, A B …), so a change in background load
// on a shared machine lands on both sides instead of skewing one ratio.

async function startServers(specs) {
  const servers = [];
  try {
    for (const spec of specs) servers.push(await startServer(spec.kind, spec));
    return servers;
  } catch (e) {
    for (const s of servers) await s.stop();
    throw e;
  }
}

/** Opens servers + a worker, runs `prepare`, and gives the session a `close()`. */
async function openSession(specs, prepare, { onClose } = {}) {
  const servers = await startServers(specs);
  const clients = new Clients();
  const close = async () => {
    await clients.close();
    for (const s of servers) await s.stop();
    if (onClose) await onClose();
  };
  try {
    return { ...(await prepare(servers, clients)), servers, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * Opens every session, interleaves `n` rounds, and returns per label either
 * `{figures}` (from the session's `result(perRound)`) or `{error}`.
 */
async function compare(specs, n) {
  const open = [];
  const out = {};
  try {
    for (const { label, open: opener } of specs) {
      progress(`  ${label}: starting and connecting subscribers`);
      try {
        open.push({ label, session: await opener(), rounds: [] });
      } catch (e) {
        out[label] = { error: e.message };
      }
    }
    for (let r = 0; r < n; r++) {
      const order = r % 2 ? [...open].reverse() : open;
      for (const o of order) {
        if (o.error) continue;
        try {
          o.rounds.push(await o.session.round());
        } catch (e) {
          o.error = `round ${r + 1}: ${e.message}`;
        }
      }
      progress(`  round ${r + 1}/${n} done`);
    }
    for (const o of open) {
      out[o.label] = o.error ? { error: o.error } : o.session.result(o.rounds);
    }
    return out;
  } finally {
    for (const o of open) await o.session.close();
  }
}

/** Bookkeeping a session keeps so its line can say what went wrong. */
function ledger() {
  return { pubs: [], expected: 0, received: 0, conn: undefined, stats: undefined };
}

// ---------------------------------------------------------------- scenarios

/**
 * One publisher, many subscribers on one topic (spread over all the session's servers,
 * publishing to the first), frames published one after another. CPU is summed over the
 * servers from the first publish of a round until its last delivery arrived.
 */
function fanoutSession(specs, cfg, { extraPids = () => [], onClose } = {}) {
  return openSession(
    specs,
    async (servers, clients) => {
      const topic = 'bench/fanout';
      const pubServer = servers[0];
      const L = ledger();
      const targets = Array.from({ length: cfg.subscribers }, (_, i) => subTarget(servers[i % servers.length], topic, false, cfg.sse));
      const conn = (L.conn = await clients.call('connect', { targets, concurrency: 100 }));
      if (conn.ok === 0) throw new Error(`no subscriber could connect: ${JSON.stringify(conn)}`);
      const topicFor = () => topic;
      await clients.call('reset', {});
      const warm = await publishMany(pubServer, { n: cfg.warmup, concurrency: cfg.concurrency, topicFor, bytes: cfg.bytes, rate: cfg.rate });
      L.pubs.push(warm);
      await clients.call('expect', { total: warm.ok * conn.ok, timeoutMs: 30000, stallMs: 3000 });
      return {
        async round() {
          await clients.call('reset', { latency: true, order: cfg.concurrency === 1 });
          const pids = servers.map((s) => s.pid);
          const more = extraPids();
          const cpu0 = pids.map(cpuUs);
          const extra0 = more.map(cpuUs);
          const t0 = process.hrtime.bigint();
          const pub = await publishMany(pubServer, { n: cfg.messages, concurrency: cfg.concurrency, topicFor, bytes: cfg.bytes, rate: cfg.rate });
          L.pubs.push(pub);
          await clients.call('expect', { total: pub.ok * conn.ok, timeoutMs: 120000, stallMs: 5000 });
          const cpu = pids.reduce((sum, pid, i) => sum + cpuUs(pid) - cpu0[i], 0);
          const extra = more.reduce((sum, pid, i) => sum + cpuUs(pid) - extra0[i], 0);
          const st = (L.stats = await clients.call('stats'));
          L.expected += pub.ok * conn.ok;
          L.received += st.received;
          const seconds = st.received ? Number(BigInt(st.lastAt) - t0) / 1e9 : NaN;
          return {
            deliveriesPerS: st.received / seconds,
            cpuUsPerDelivery: cpu / st.received,
            extraCpuUsPerDelivery: extra / st.received,
            publishesPerS: pub.ok / pub.seconds,
            p50: st.latencyMs?.p50,
            p99: st.latencyMs?.p99,
          };
        },
        result(perRound) {
          return {
            ...(servers.length > 1 ? { nodes: servers.length } : {}),
            subscribers: conn.ok,
            messages: cfg.messages,
            bytes: cfg.bytes,
            publish_concurrency: cfg.concurrency,
            ...(cfg.rate ? { publish_rate_per_s: cfg.rate } : {}),
            rounds: perRound.length,
            deliveries_per_s: round(median(perRound.map((r) => r.deliveriesPerS)), 4),
            cpu_us_per_delivery: round(median(perRound.map((r) => r.cpuUsPerDelivery)), 3),
            cpu_us_per_delivery_rounds: perRound.map((r) => round(r.cpuUsPerDelivery, 3)),
            ...(extraPids().length ? { redis_cpu_us_per_delivery: round(median(perRound.map((r) => r.extraCpuUsPerDelivery)), 3) } : {}),
            latency_ms_p50: round(median(perRound.map((r) => r.p50)), 3),
            latency_ms_p99: round(median(perRound.map((r) => r.p99)), 3),
            publishes_per_s: round(median(perRound.map((r) => r.publishesPerS)), 4),
            connect_ms: conn.ms,
            problems: problems({ ...L, servers }),
          };
        },
      };
    },
    { onClose },
  );
}

/** Many small publishes, `concurrency` in flight over keep-alive connections. */
function pubrateSession(kind, cfg, options = {}) {
  return openSession([{ kind, ...options }], async ([srv], clients) => {
    const topic = 'bench/rate';
    const L = ledger();
    const conn = (L.conn = await clients.call('connect', {
      targets: Array.from({ length: cfg.subscribers }, () => subTarget(srv, topic)),
    }));
    const topicFor = () => topic;
    await clients.call('reset', {});
    const warm = await publishMany(srv, { n: cfg.warmup, concurrency: cfg.concurrency, topicFor, bytes: cfg.bytes });
    L.pubs.push(warm);
    await clients.call('expect', { total: warm.ok * conn.ok, timeoutMs: 30000, stallMs: 3000 });
    return {
      async round() {
        await clients.call('reset', {});
        const cpu0 = cpuUs(srv.pid);
        const pub = await publishMany(srv, { n: cfg.publishes, concurrency: cfg.concurrency, topicFor, bytes: cfg.bytes });
        L.pubs.push(pub);
        await clients.call('expect', { total: pub.ok * conn.ok, timeoutMs: 60000, stallMs: 5000 });
        const cpu = cpuUs(srv.pid) - cpu0;
        const st = (L.stats = await clients.call('stats'));
        L.expected += pub.ok * conn.ok;
        L.received += st.received;
        return { rate: pub.ok / pub.seconds, cpu: cpu / cfg.publishes };
      },
      result(perRound) {
        return {
          publishes: cfg.publishes,
          bytes: cfg.bytes,
          concurrency: cfg.concurrency,
          subscribers: conn.ok,
          rounds: perRound.length,
          publishes_per_s: round(median(perRound.map((r) => r.rate)), 4),
          cpu_us_per_publish: round(median(perRound.map((r) => r.cpu)), 3),
          cpu_us_per_publish_rounds: perRound.map((r) => round(r.cpu, 3)),
          problems: problems({ ...L, servers: [srv] }),
        };
      },
    };
  });
}

/**
 * `count` topics with one exact subscriber each plus `recursive` recursive
 * subscribers, publishes to random topics. Topic i is `topics/g<i % 100>/t<i>` and the
 * recursive subscribers take `topics/g0/` … so the share of publishes that also reach a
 * recursive subscriber (10 %) is the same at every topic count.
 */
function topicsSession(kind, count, cfg) {
  const topicName = (i) => `topics/g${i % 100}/t${i}`;
  return openSession([{ kind }], async ([srv], clients) => {
    const L = ledger();
    const targets = Array.from({ length: count }, (_, i) => subTarget(srv, topicName(i)));
    // The floor has exact topics only: there these are exact subscriptions to names
    // nobody publishes to, so both servers hold the same number of connections.
    for (let g = 0; g < cfg.recursive; g++) targets.push(subTarget(srv, `topics/g${g}/`, true));
    const conn = (L.conn = await clients.call('connect', { targets, concurrency: 100 }));
    const rng = mulberry32(count);
    // `cover`: every topic once (in random order) before any repeats, so the
    // warmup pays each topic's first-touch costs (its token digests, history
    // entry, first write on its connection) and rounds measure steady matching.
    const run = async (n, cover = false) => {
      const picks = Array.from({ length: n }, () => Math.floor(rng() * count));
      if (cover) {
        const all = Array.from({ length: count }, (_, i) => i);
        for (let i = count - 1; i > 0; i--) {
          const j = Math.floor(rng() * (i + 1));
          [all[i], all[j]] = [all[j], all[i]];
        }
        picks.unshift(...all);
        picks.length = n;
      }
      const recursiveHits = srv.real ? picks.filter((i) => i % 100 < cfg.recursive).length : 0;
      const pub = await publishMany(srv, { n, concurrency: cfg.concurrency, topicFor: (i) => topicName(picks[i]), bytes: cfg.bytes });
      L.pubs.push(pub);
      // With failed publishes the exact expectation is unknown; count what succeeded.
      return { pub, expected: pub.failed ? pub.ok : n + recursiveHits };
    };
    await clients.call('reset', {});
    const warm = await run(Math.max(cfg.warmup, count), true);
    await clients.call('expect', { total: warm.expected, timeoutMs: 30000, stallMs: 3000 });
    return {
      async round() {
        await clients.call('reset', {});
        const cpu0 = cpuUs(srv.pid);
        const { pub, expected } = await run(cfg.publishes);
        await clients.call('expect', { total: expected, timeoutMs: 60000, stallMs: 5000 });
        const cpu = cpuUs(srv.pid) - cpu0;
        const st = (L.stats = await clients.call('stats'));
        L.expected += expected;
        L.received += st.received;
        return { cpu: cpu / cfg.publishes, rate: pub.ok / pub.seconds };
      },
      result(perRound) {
        return {
          topics: count,
          recursive: srv.real ? cfg.recursive : 0,
          subscribers: conn.ok,
          publishes: cfg.publishes,
          rounds: perRound.length,
          publishes_per_s: round(median(perRound.map((r) => r.rate)), 4),
          cpu_us_per_publish: round(median(perRound.map((r) => r.cpu)), 3),
          cpu_us_per_publish_rounds: perRound.map((r) => round(r.cpu, 3)),
          // Only counts are checked: with 32 publishes in flight the order in which
          // the server receives them is not the publisher's order.
          problems: problems({ ...L, servers: [srv] }),
        };
      },
    };
  });
}

/**
 * RSS growth per idle subscriber, over a first and then a second batch of
 * `cfg.connections`; one measurement, servers one after the other. The first
 * batch also pays for the heap sizing itself once (V8 grows its young
 * generation, up to 2 x 16 MB, somewhere in the first thousands of
 * connections, sooner or later depending on what ran before); the second is
 * what each further subscriber costs.
 */
async function idle(kind, cfg) {
  const [srv] = await startServers([{ kind }]);
  const clients = new Clients();
  try {
    // Warm the upgrade and publish paths first so lazily loaded code and JIT output
    // are in the baseline, not charged to the idle connections.
    const warmTopics = Array.from({ length: 20 }, (_, i) => `idle-warm/${i}`);
    const warmConn = await clients.call('connect', { targets: warmTopics.map((t) => subTarget(srv, t)) });
    await clients.call('reset', {});
    const warm = await publishMany(srv, { n: 200, concurrency: 8, topicFor: (i) => warmTopics[i % warmTopics.length], bytes: 256 });
    await clients.call('expect', { total: warm.ok, timeoutMs: 10000, stallMs: 3000 });
    // The durable store checkpoints a second after its last commit, in its worker thread, whose
    // first run then grows (code, page cache); wait past that, so it is in the baseline too.
    await sleep(2500);
    const before = await settledRss(srv.pid);
    const batch = (b) => Array.from({ length: cfg.connections }, (_, i) => subTarget(srv, `idle/${b * cfg.connections + i}`));
    const conn = await clients.call('connect', { targets: batch(0), concurrency: 100 });
    const after = await settledRss(srv.pid);
    const conn2 = await clients.call('connect', { targets: batch(1), concurrency: 100 });
    const after2 = await settledRss(srv.pid);
    const all = 2 * cfg.connections;
    // Are the idle subscriptions live? Publish to a few of them.
    await clients.call('reset', {});
    const probe = await publishMany(srv, { n: 50, concurrency: 4, topicFor: (i) => `idle/${(i * 97) % all}`, bytes: 64 });
    await clients.call('expect', { total: probe.ok, timeoutMs: 10000, stallMs: 3000 });
    const st = await clients.call('stats');
    return {
      connections: conn.ok + conn2.ok,
      kb_per_connection_first: round((after.kb - before.kb) / conn.ok, 3),
      kb_per_connection_next: round((after2.kb - after.kb) / conn2.ok, 3),
      rss_kb: [before.kb, after.kb, after2.kb],
      settled: before.settled && after.settled && after2.settled,
      settle_ms: [before.ms, after.ms, after2.ms],
      connect_ms: conn.ms,
      connects_per_s: round(conn.ok / (conn.ms / 1000), 3),
      problems: problems({
        pubs: [warm, probe],
        expected: probe.ok,
        received: st.received,
        conn: {
          ...conn,
          ok: conn.ok + conn2.ok,
          failed: conn.failed + conn2.failed + warmConn.failed,
          statuses: { ...warmConn.statuses, ...conn.statuses, ...conn2.statuses },
        },
        stats: st,
        servers: [srv],
      }),
    };
  } finally {
    await clients.close();
    await srv.stop();
  }
}

async function startRedis() {
  const port = await freePort();
  const proc = track(
    spawn(onPath('redis-server'), ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }),
  );
  let err = '';
  proc.stderr.on('data', (d) => (err = (err + d).slice(-500)));
  const ping = () =>
    new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      let got = '';
      s.setTimeout(500, () => s.destroy());
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        got += d;
        if (got.includes('\r\n')) {
          s.end();
          resolve(got.startsWith('+PONG'));
        }
      });
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(got.startsWith('+PONG')));
    });
  const deadline = Date.now() + 10000;
  while (!(await ping())) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`redis-server did not start: ${err.trim()}`);
    }
    await sleep(50);
  }
  return {
    port,
    pid: proc.pid,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode !== null) return;
      const done = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([done, sleep(3000)]);
      proc.kill('SIGKILL');
    },
  };
}


// ---------------------------------------------------------------- main

function ratioLine(name, metric, hookbot, floor, target, cmp) {
  const value = Number.isFinite(hookbot) && Number.isFinite(floor) && floor ? hookbot / floor : null;
  const pass = value === null || target === null ? null : cmp === '<=' ? value <= target : value >= target;
  return { ratio: name, metric, hookbot: hookbot ?? null, floor: floor ?? null, value: round(value, 3), target: target === null ? null : `${cmp} ${target}`, pass };
}
const info = (name, metric, a, b) => ratioLine(name, metric, a, b, null, '');

async function main() {
  progress(
    `scenarios: ${scenarios.join(', ')}${quick ? ' (quick)' : ''}; ` +
      `hookbot = ${hookbotIsFloor ? 'FLOOR (--hookbot-is-floor)' : 'node bin/hookbot.js serve'}; CLK_TCK=${CLK_TCK}; ` +
      `load average ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
  );
  const lines = [];
  const ratios = [];
  const line = (scenario, server, r, started) => {
    const l = { scenario, server, ...r, seconds: Math.round((Date.now() - started) / 100) / 10 };
    emit(l);
    lines.push(l);
    return l;
  };

  for (const scenario of scenarios) {
    const n = roundsFor(scenario);
    const started = Date.now();
    const how = { twonode: 'single node and two nodes interleaved', idle: 'hookbot, then floor' }[scenario];
    progress(`${scenario}: ${n} round(s), ${how ?? 'hookbot and floor interleaved'}`);
    if (scenario === 'fanout' || scenario === 'fanout8' || scenario === 'steady') {
      const cfg = SIZES[scenario];
      // Sequential fanout also runs hookbot --memory, to see what the durable store adds to latency.
      const withMemory = scenario === 'fanout';
      const r = await compare(
        [
          { label: 'hookbot', open: () => fanoutSession([{ kind: 'hookbot' }], cfg) },
          ...(withMemory ? [{ label: 'hookbot --memory', open: () => fanoutSession([{ kind: 'hookbot', memory: true }], cfg) }] : []),
          { label: 'floor', open: () => fanoutSession([{ kind: 'floor' }], cfg) },
        ],
        n,
      );
      const h = line(scenario, 'hookbot', r.hookbot, started);
      const m = withMemory ? line(scenario, 'hookbot --memory', r['hookbot --memory'], started) : undefined;
      const f = line(scenario, 'floor', r.floor, started);
      if (cfg.rate) {
        // A fixed rate sets the load: latency is the comparison, with no target.
        ratios.push(info(scenario, 'latency_ms_p50 hookbot / floor', h.latency_ms_p50, f.latency_ms_p50));
        ratios.push(info(scenario, 'latency_ms_p99 hookbot / floor', h.latency_ms_p99, f.latency_ms_p99));
        ratios.push(info(scenario, 'cpu_us_per_delivery hookbot / floor', h.cpu_us_per_delivery, f.cpu_us_per_delivery));
      } else {
        ratios.push(ratioLine(scenario, 'cpu_us_per_delivery hookbot / floor', h.cpu_us_per_delivery, f.cpu_us_per_delivery, TARGETS.fanoutCpu, '<='));
        ratios.push(info(scenario, 'deliveries_per_s hookbot / floor', h.deliveries_per_s, f.deliveries_per_s));
        if (m) {
          ratios.push(ratioLine(scenario, 'latency_ms_p99 hookbot / hookbot --memory', h.latency_ms_p99, m.latency_ms_p99, TARGETS.fanoutP99Memory, '<='));
          ratios.push(info(scenario, 'cpu_us_per_delivery hookbot / hookbot --memory', h.cpu_us_per_delivery, m.cpu_us_per_delivery));
        }
      }
    } else if (scenario === 'sse') {
      if (hookbotIsFloor) {
        line('sse', 'hookbot', { skipped: 'the floor has no Server-Sent Events (running with --hookbot-is-floor)' }, started);
        continue;
      }
      const cfg = SIZES.sse;
      const r = await compare(
        [
          { label: 'ws', open: () => fanoutSession([{ kind: 'hookbot' }], cfg) },
          { label: 'sse', open: () => fanoutSession([{ kind: 'hookbot' }], { ...cfg, sse: true }) },
        ],
        n,
      );
      const w = line('sse', 'hookbot-ws', r.ws, started);
      const e = line('sse', 'hookbot-sse', r.sse, started);
      // Both sides are hookbot here: name them for what they are.
      const named = ({ hookbot, floor, ...rest }) => ({ ...rest, sse: hookbot, ws: floor });
      ratios.push(named(ratioLine('sse', 'cpu_us_per_delivery SSE / WebSocket', e.cpu_us_per_delivery, w.cpu_us_per_delivery, TARGETS.sseCpu, '<=')));
      ratios.push(named(info('sse', 'latency_ms_p99 SSE / WebSocket', e.latency_ms_p99, w.latency_ms_p99)));
    } else if (scenario === 'pubrate') {
      const cfg = SIZES.pubrate;
      // The default (a commit survives the process dying) and --fsync always (also a power loss).
      const r = await compare(
        [
          { label: 'hookbot', open: () => pubrateSession('hookbot', cfg) },
          { label: 'hookbot --fsync always', open: () => pubrateSession('hookbot', cfg, { fsync: 'always' }) },
          { label: 'floor', open: () => pubrateSession('floor', cfg) },
        ],
        n,
      );
      const h = line('pubrate', 'hookbot', r.hookbot, started);
      const a = line('pubrate', 'hookbot --fsync always', r['hookbot --fsync always'], started);
      const f = line('pubrate', 'floor', r.floor, started);
      ratios.push(ratioLine('pubrate', 'cpu_us_per_publish hookbot / floor', h.cpu_us_per_publish, f.cpu_us_per_publish, TARGETS.pubrateCpu, '<='));
      ratios.push(info('pubrate', 'publishes_per_s hookbot / floor', h.publishes_per_s, f.publishes_per_s));
      ratios.push(info('pubrate', 'cpu_us_per_publish hookbot --fsync always / floor', a.cpu_us_per_publish, f.cpu_us_per_publish));
      ratios.push(info('pubrate', 'publishes_per_s hookbot --fsync always / hookbot', a.publishes_per_s, h.publishes_per_s));
    } else if (scenario === 'idle') {
      const cfg = SIZES.idle;
      const out = {};
      for (const kind of ['hookbot', 'floor']) {
        progress(`  ${kind}`);
        const t = Date.now();
        try {
          out[kind] = line('idle', kind, await idle(kind, cfg), t);
        } catch (e) {
          out[kind] = line('idle', kind, { error: e.message }, t);
        }
      }
      for (const which of ['first', 'next']) {
        const metric = `kb_per_connection_${which}`;
        const kb = out.hookbot[metric];
        ratios.push({ ...ratioLine('idle', `${metric} hookbot (absolute)`, kb, 1, TARGETS.idleKb, '<='), floor: out.floor[metric] ?? null });
        ratios.push(info('idle', `${metric} hookbot / floor`, kb, out.floor[metric]));
      }
    } else if (scenario === 'topics') {
      const cfg = SIZES.topics;
      // One server per (kind, topic count), all four interleaved.
      const r = await compare(
        ['hookbot', 'floor'].flatMap((kind) =>
          [cfg.few, cfg.many].map((count) => ({ label: `${kind}@${count}`, open: () => topicsSession(kind, count, cfg) })),
        ),
        n,
      );
      const byKind = {};
      for (const kind of ['hookbot', 'floor']) {
        const few = r[`${kind}@${cfg.few}`];
        const many = r[`${kind}@${cfg.many}`];
        byKind[kind] = line(
          'topics',
          kind,
          {
            few,
            many,
            scale: round(many.cpu_us_per_publish / few.cpu_us_per_publish, 3),
            problems: [...(few.problems || []).map((p) => `${cfg.few}: ${p}`), ...(many.problems || []).map((p) => `${cfg.many}: ${p}`)],
          },
          started,
        );
      }
      const hs = byKind.hookbot.scale;
      ratios.push({
        ...ratioLine('topics', `cpu_us_per_publish at ${cfg.many} / at ${cfg.few} topics (hookbot)`, hs, 1, TARGETS.topicsScale, '<='),
        floor: byKind.floor.scale ?? null,
      });
      ratios.push(info('topics', `cpu_us_per_publish at ${cfg.many} topics hookbot / floor`, byKind.hookbot.many?.cpu_us_per_publish, byKind.floor.many?.cpu_us_per_publish));
    } else if (scenario === 'twonode') {
      const tn = await twonode(n);
      const l = line('twonode', 'hookbot', tn, started);
      if (!l.skipped && !l.error) {
        // Both sides are hookbot here: name them for what they are.
        const nodes = ({ hookbot, floor, ...rest }) => ({ ...rest, two_node: hookbot, single_node: floor });
        ratios.push(nodes(ratioLine('twonode', 'deliveries_per_s two-node / single-node', l.deliveries_per_s, l.single_node_deliveries_per_s, TARGETS.twonodeRate, '>=')));
        ratios.push(nodes(info('twonode', 'cpu_us_per_delivery two-node (sum of nodes) / single-node', l.cpu_us_per_delivery, l.single_node_cpu_us_per_delivery)));
      }
    }
  }
  for (const r of ratios) emit(r);

  // Human summary on stderr, so stdout stays one JSON object per line.
  progress('summary:');
  for (const r of ratios) {
    const verdict = r.pass === null ? '' : r.pass ? '  PASS' : '  MISS';
    progress(`  ${r.ratio.padEnd(8)} ${r.metric.padEnd(60)} ${String(r.value).padStart(7)}  ${r.target ?? '(info)'}${verdict}`);
  }
  for (const l of lines) {
    if (l.error) progress(`  ERROR ${l.scenario}/${l.server}: ${l.error}`);
    if (l.skipped) progress(`  skipped ${l.scenario}: ${l.skipped}`);
    for (const sub of [l, l.few, l.many]) {
      if (sub?.error && sub !== l) progress(`  ERROR ${l.scenario}/${l.server}: ${sub.error}`);
    }
    for (const p of l.problems || []) progress(`  problem ${l.scenario}/${l.server}: ${p}`);
  }
}

/**
 * Two hookbot nodes on one Redis (publish on the first, subscribers split over both),
 * interleaved with a single-node hookbot of the same size for the comparison.
 */
async function twonode(n) {
  if (hookbotIsFloor) return { skipped: 'the floor has no --redis (running with --hookbot-is-floor)' };
  if (!onPath('redis-server')) return { skipped: 'redis-server not on PATH' };
  const cfg = SIZES.twonode;
  let redis;
  try {
    redis = await startRedis();
  } catch (e) {
    return { skipped: e.message };
  }
  let probe;
  try {
    // Support check: a node that cannot start with --redis means "not supported here".
    probe = await startServers([{ kind: 'hookbot', redis: redis.url, readyMs: 10000 }]);
  } catch (e) {
    await redis.stop();
    return { skipped: `hookbot serve --redis did not become ready: ${e.message}` };
  }
  for (const s of probe) await s.stop();
  const r = await compare(
    [
      { label: 'single', open: () => fanoutSession([{ kind: 'hookbot' }], cfg) },
      {
        label: 'twonode',
        open: () =>
          fanoutSession(
            [
              { kind: 'hookbot', redis: redis.url },
              { kind: 'hookbot', redis: redis.url },
            ],
            cfg,
            { extraPids: () => [redis.pid] },
          ),
      },
    ],
    n,
  ).finally(() => redis.stop());
  if (r.twonode.error) return { error: r.twonode.error };
  return {
    ...r.twonode,
    single_node_deliveries_per_s: r.single.deliveries_per_s ?? null,
    single_node_cpu_us_per_delivery: r.single.cpu_us_per_delivery ?? null,
    single_node_latency_ms_p50: r.single.latency_ms_p50 ?? null,
    single_node_latency_ms_p99: r.single.latency_ms_p99 ?? null,
    ...(r.single.error ? { single_node_error: r.single.error } : {}),
    problems: [...(r.twonode.problems || []), ...(r.single.problems || []).map((p) => `single node: ${p}`)],
  };
}

main()
  .then(() => {
    killAll();
    process.exit(0);
  })
  .catch((e) => {
    progress(`bench failed: ${e.stack || e.message}`);
    killAll();
    process.exit(1);
  });
