// Subscriber load generator, run as a child process (fork) of bench/run.mjs so that
// receiving hundreds of thousands of frames does not share an event loop with the
// publisher. Controlled over IPC:
//
//   {cmd:'connect', id, targets:[{url, token?, framed?, sse?}], concurrency}
//        (sse: an http:// URL read as a Server-Sent Events stream instead of a WebSocket)
//        -> {id, ok, failed, statuses, errors, ms}
//   {cmd:'reset', id, latency:boolean, order:boolean}   counters to zero -> {id}
//   {cmd:'expect', id, total, timeoutMs, stallMs}  -> {id, reached, received} once `total`
//        frames arrived since the last reset (or the timeout / a stall passed)
//   {cmd:'stats', id}  -> {id, received, lastAt, perSub:{min,max}, orderErrors, ...}
//   {cmd:'close', id}  terminates every socket -> {id}, then exits
//
// Every payload starts with an 8-byte little-endian send time (process.hrtime.bigint(),
// CLOCK_MONOTONIC, so comparable across processes on one host) and a 4-byte sequence
// number; recursive subscribers' frames carry `topic NUL` in front of that.
import http from 'node:http';
import WebSocket from 'ws';

/** @type {{ws: WebSocket, count: number, lastSeq: number, framed: boolean}[]} */
const subs = [];
let received = 0;
let lastAt = 0n;
let recordLatency = false;
let checkOrder = false;
let orderErrors = 0;
let textFrames = 0;
let shortFrames = 0;
/** @type {number[]} */
let latencies = [];
/** close codes of sockets that closed while we did not ask them to */
const closes = {};
let closing = false;
/** @type {{total:number, resolve:() => void} | undefined} */
let waiter;

function onFrame(sub, data, isBinary) {
  const now = process.hrtime.bigint();
  received++;
  sub.count++;
  lastAt = now;
  if (!isBinary) textFrames++;
  let off = 0;
  if (sub.framed) off = data.indexOf(0) + 1;
  if (data.length >= off + 12) {
    const seq = data.readUInt32LE(off + 8);
    if (checkOrder) {
      if (seq <= sub.lastSeq) orderErrors++;
      sub.lastSeq = seq;
    }
    if (recordLatency) latencies.push(Number(now - data.readBigUInt64LE(off)) / 1e6);
  } else {
    shortFrames++;
  }
  if (waiter && received >= waiter.total) {
    const w = waiter;
    waiter = undefined;
    w.resolve();
  }
}

/**
 * An SSE subscriber. hookbot sends the bench's payloads (binary: a timestamp
 * leads them) as one base64 `data:` line under `event: base64:<topic>`; the
 * parser only needs that, and keeps a partial event between chunks.
 */
function connectSse(target) {
  return new Promise((resolve) => {
    const headers = { accept: 'text/event-stream', ...(target.token ? { authorization: `Bearer ${target.token}` } : {}) };
    const sub = { ws: undefined, res: undefined, count: 0, lastSeq: 0, framed: false };
    const req = http.get(target.url, { headers, agent: false, timeout: 15000 }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return resolve({ ok: false, status: res.statusCode });
      }
      sub.res = res;
      subs.push(sub);
      resolve({ ok: true });
      let buf = '';
      res.setEncoding('latin1');
      res.on('data', (chunk) => {
        buf += chunk;
        let start = 0;
        let end;
        while ((end = buf.indexOf('\n\n', start)) !== -1) {
          const at = buf.indexOf('\ndata: ', start);
          // Binary payloads only (base64), as the bench sends them; other events (the preamble) have no id.
          if (buf.startsWith('id: ', start) && at !== -1 && at < end) onFrame(sub, Buffer.from(buf.slice(at + 7, end), 'base64'), true);
          start = end + 2;
        }
        if (start > 0) buf = buf.slice(start);
      });
      res.on('close', () => {
        if (!closing) closes.sse_end = (closes.sse_end || 0) + 1;
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ ok: false, error: err.code || err.message }));
  });
}

function connectOne(target) {
  if (target.sse) return connectSse(target);
  return new Promise((resolve) => {
    const headers = target.token ? { authorization: `Bearer ${target.token}` } : {};
    const ws = new WebSocket(target.url, { headers, perMessageDeflate: false, handshakeTimeout: 15000 });
    const sub = { ws, count: 0, lastSeq: 0, framed: !!target.framed };
    let settled = false;
    let opened = false;
    ws.on('open', () => {
      settled = opened = true;
      subs.push(sub);
      resolve({ ok: true });
    });
    ws.on('unexpected-response', (_req, res) => {
      settled = true;
      res.resume();
      ws.terminate();
      resolve({ ok: false, status: res.statusCode });
    });
    ws.on('error', (err) => {
      if (!settled) {
        settled = true;
        resolve({ ok: false, error: err.code || err.message });
      }
    });
    ws.on('message', (data, isBinary) => onFrame(sub, data, isBinary));
    ws.on('close', (code) => {
      if (!closing && opened) closes[code] = (closes[code] || 0) + 1;
    });
  });
}

async function connect({ targets, concurrency = 100 }) {
  const start = Date.now();
  let next = 0;
  let ok = 0;
  let failed = 0;
  const statuses = {};
  const errors = {};
  async function lane() {
    while (next < targets.length) {
      const r = await connectOne(targets[next++]);
      if (r.ok) ok++;
      else {
        failed++;
        if (r.status) statuses[r.status] = (statuses[r.status] || 0) + 1;
        if (r.error) errors[r.error] = (errors[r.error] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, targets.length) }, lane));
  return { ok, failed, statuses, errors, ms: Date.now() - start };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function stats() {
  let min = Infinity;
  let max = 0;
  let open = 0;
  for (const s of subs) {
    if (s.count < min) min = s.count;
    if (s.count > max) max = s.count;
    if (s.ws ? s.ws.readyState === WebSocket.OPEN : !s.res.destroyed) open++;
  }
  const sorted = Float64Array.from(latencies).sort();
  return {
    received,
    lastAt: lastAt.toString(),
    subscribers: subs.length,
    open,
    perSub: { min: subs.length ? min : 0, max },
    orderErrors,
    textFrames,
    shortFrames,
    closes,
    latencyMs: sorted.length
      ? { n: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] }
      : null,
  };
}

process.on('message', async (m) => {
  const reply = (r) => process.send({ id: m.id, ...r });
  switch (m.cmd) {
    case 'connect':
      reply(await connect(m));
      break;
    case 'reset':
      received = 0;
      lastAt = 0n;
      orderErrors = 0;
      textFrames = 0;
      shortFrames = 0;
      latencies = [];
      recordLatency = !!m.latency;
      checkOrder = !!m.order;
      for (const s of subs) {
        s.count = 0;
        s.lastSeq = 0;
      }
      reply({});
      break;
    case 'expect': {
      // Gives up at the timeout, or earlier once nothing has arrived for `stallMs`
      // (a lost delivery should cost seconds, not the whole timeout).
      const reached = await new Promise((resolve) => {
        if (received >= m.total) return resolve(true);
        const stallMs = m.stallMs ?? 5000;
        let seen = received;
        let quietSince = Date.now();
        const finish = (ok) => {
          clearTimeout(timer);
          clearInterval(watch);
          waiter = undefined;
          resolve(ok);
        };
        const timer = setTimeout(() => finish(false), m.timeoutMs ?? 30000);
        const watch = setInterval(() => {
          if (received !== seen) {
            seen = received;
            quietSince = Date.now();
          } else if (Date.now() - quietSince > stallMs) finish(false);
        }, 100);
        waiter = { total: m.total, resolve: () => finish(true) };
      });
      reply({ reached, received });
      break;
    }
    case 'stats':
      reply(stats());
      break;
    case 'close':
      closing = true;
      for (const s of subs) (s.ws ? s.ws.terminate() : s.res.destroy());
      subs.length = 0;
      reply({});
      setTimeout(() => process.exit(0), 50);
      break;
    default:
      reply({ error: `unknown command ${m.cmd}` });
  }
});

// The bench owns this process: if it goes away, so do we.
process.on('disconnect', () => process.exit(0));
