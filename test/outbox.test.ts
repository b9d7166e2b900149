/**
 * The Outbox over real TCP sockets: how corked writes leave (a slice of
 * subscribers per event-loop turn, several messages per send) and that our own
 * corking never passes for a slow consumer.
 */
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox } from '../src/server/outbox.js';

interface Pair {
  /** Server side: what the Outbox writes to. */
  out: Socket;
  /** Client side: what a subscriber reads. */
  received: Buffer[];
  bytes: () => number;
  /** Calls into the socket's single-chunk and vectored write paths, with chunk counts. */
  sends: { write: number; writev: number[] };
}

let server: Server | undefined;
const clients: Socket[] = [];
const accepted: Socket[] = [];

afterEach(async () => {
  for (const s of [...clients.splice(0), ...accepted.splice(0)]) s.destroy();
  if (server) await new Promise((r) => server!.close(r));
  server = undefined;
});

async function pairs(n: number): Promise<Pair[]> {
  server = createServer((s) => {
    s.on('error', () => {}); // a reset at teardown
    accepted.push(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const result: Pair[] = [];
  for (let i = 0; i < n; i++) {
    const c = connect(port, '127.0.0.1');
    c.on('error', () => {});
    clients.push(c);
    await once(c, 'connect');
    const received: Buffer[] = [];
    let bytes = 0;
    c.on('data', (d: Buffer) => {
      received.push(d);
      bytes += d.length;
    });
    result.push({ out: undefined as unknown as Socket, received, bytes: () => bytes, sends: { write: 0, writev: [] } });
  }
  while (accepted.length < n) await once(server, 'connection');
  // Accepted in connect order: each connect waited for its own handshake.
  result.forEach((p, i) => {
    const out = accepted[i];
    const s = out as unknown as { _write: (...a: unknown[]) => void; _writev: (chunks: unknown[], cb: unknown) => void };
    const write = s._write.bind(out);
    const writev = s._writev.bind(out);
    s._write = (...a) => {
      p.sends.write++;
      write(...a);
    };
    s._writev = (chunks, cb) => {
      p.sends.writev.push(chunks.length);
      writev(chunks, cb);
    };
    p.out = out;
  });
  return result;
}

function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const check = () => {
      if (predicate()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setImmediate(check);
    };
    check();
  });
}

describe('Outbox', () => {
  it('flushes a slice of subscribers per turn; a message queued mid-pass leaves with the earlier one in one send', async () => {
    const n = 200; // slices of 64
    const ps = await pairs(n);
    const boxes = ps.map((p) => new Outbox(p.out, 1 << 20, { overflowed: () => expect.fail('no subscriber here is slow') }));
    for (const b of boxes) b.live();
    const a = Buffer.from('message A|');
    const b = Buffer.from('message B|');

    for (const box of boxes) box.write(a);
    // Nothing has left yet: every write waits corked for the flusher.
    expect(ps.every((p) => p.sends.write === 0 && p.out.writableLength === a.length)).toBe(true);

    // One turn later the flusher has done exactly one slice and handed the loop back.
    await nextTurn();
    expect(ps.filter((p) => p.out.writableLength === 0).length).toBe(64);
    expect(ps.slice(0, 64).every((p) => p.sends.write === 1)).toBe(true);
    expect(ps.slice(64).every((p) => p.sends.write === 0 && p.sends.writev.length === 0)).toBe(true);

    // A second message arrives mid-pass, as a publish read between slices would.
    for (const box of boxes) box.write(b);
    await until(() => ps.every((p) => p.bytes() === a.length + b.length), 'both messages at every subscriber');

    for (const p of ps) expect(Buffer.concat(p.received).toString()).toBe('message A|message B|');
    // Already flushed: B went out alone in the next pass. Not yet reached: A and B in one writev.
    expect(ps.slice(0, 64).map((p) => [p.sends.write, p.sends.writev.length])).toEqual(Array.from({ length: 64 }, () => [2, 0]));
    expect(ps.slice(64).map((p) => [p.sends.write, p.sends.writev])).toEqual(Array.from({ length: n - 64 }, () => [0, [2]]));
  });

  it('a slice also ends after a mebibyte, so big messages do not hold the event loop', async () => {
    const ps = await pairs(10);
    const boxes = ps.map((p) => new Outbox(p.out, 8 << 20, { overflowed: () => expect.fail('not slow') }));
    const big = Buffer.alloc(300 * 1024, 0x62);
    for (const box of boxes) {
      box.live();
      box.write(big);
    }
    await nextTurn();
    // 300 KiB each: the fourth send passes 1 MiB and ends the slice.
    expect(ps.map((p) => p.sends.write)).toEqual([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
    await until(() => ps.every((p) => p.bytes() === big.length), 'every subscriber');
  });

  it('a burst written within one turn shares sends of up to eight messages', async () => {
    const ps = await pairs(20);
    const boxes = ps.map((p) => new Outbox(p.out, 1 << 20, { overflowed: () => expect.fail('not slow') }));
    for (const box of boxes) {
      box.live();
      for (let i = 1; i <= 12; i++) box.write(Buffer.from(`${String(i).padStart(2, '0')}|`));
    }
    // The ninth write sent the first eight; the rest wait for the flusher.
    expect(ps.map((p) => p.sends.writev)).toEqual(Array.from({ length: 20 }, () => [8]));
    await nextTurn();
    expect(ps.map((p) => p.sends.writev)).toEqual(Array.from({ length: 20 }, () => [8, 4]));
    await until(() => ps.every((p) => p.bytes() === 36), 'every subscriber');
    for (const p of ps) expect(Buffer.concat(p.received).toString()).toBe('01|02|03|04|05|06|07|08|09|10|11|12|');
  });

  it('a queue waits for the flusher through at most four turns; a write in the fifth sends it', async () => {
    const ps = await pairs(20);
    const boxes = ps.map((p) => new Outbox(p.out, 8 << 20, { overflowed: () => expect.fail('not slow') }));
    for (const box of boxes) box.live();
    // Nineteen big messages keep the flusher busy for five turns (four per mebibyte slice);
    // the last subscriber, reached in the fifth, gets a small message in each turn.
    const big = Buffer.alloc(300 * 1024, 0x62);
    for (const box of boxes.slice(0, 19)) box.write(big);
    const last = boxes[19];
    const lastPair = ps[19];
    for (let turn = 0; turn < 5; turn++) {
      last.write(Buffer.from(`${turn}|`));
      if (turn < 4) expect(lastPair.sends.writev).toEqual([]);
      await nextTurn();
    }
    // Turns 0-3 went out together when turn 4 wrote; turn 4's message with the flusher.
    expect(lastPair.sends.writev).toEqual([4]);
    expect(lastPair.sends.write).toBe(1);
    expect(ps.slice(0, 19).every((p) => p.sends.write === 1)).toBe(true);
    await until(() => lastPair.bytes() === 10 && ps.slice(0, 19).every((p) => p.bytes() === big.length), 'every subscriber');
    expect(Buffer.concat(lastPair.received).toString()).toBe('0|1|2|3|4|');
  });

  it('a burst bigger than the bound within one turn does not cut off a subscriber that keeps up', async () => {
    const [p] = await pairs(1);
    let overflowed = false;
    const box = new Outbox(p.out, 64 * 1024, { overflowed: () => (overflowed = true) });
    box.live();
    const n = 12;
    const chunk = 8 * 1024;
    for (let i = 0; i < n; i++) box.write(Buffer.alloc(chunk, 0x61 + i));
    // 96 KiB queued in one turn against a 64 KiB bound: our own corking is flushed
    // as it grows, so only what the subscriber has not taken counts.
    expect(overflowed).toBe(false);
    await until(() => p.bytes() === n * chunk, 'the whole burst');
    const all = Buffer.concat(p.received);
    for (let i = 0; i < n; i++) expect(all.subarray(i * chunk, (i + 1) * chunk).every((c) => c === 0x61 + i)).toBe(true);
  });

  it('a subscriber that stops reading is still reported once its backlog passes the bound', async () => {
    const [p] = await pairs(1);
    clients[0].pause();
    let overflows = 0;
    const box = new Outbox(p.out, 64 * 1024, { overflowed: () => overflows++ });
    box.live();
    const chunk = Buffer.alloc(16 * 1024, 0x78);
    // The kernel's buffers take some megabytes first; each turn lets the flusher push more.
    for (let i = 0; i < 4096 && overflows === 0; i++) {
      box.write(chunk);
      if (i % 8 === 7) await nextTurn();
    }
    expect(overflows).toBe(1);
    expect(box.closed).toBe(true);
    // The write that would have passed the bound was refused, not queued.
    expect(p.out.writableLength).toBeLessThanOrEqual(64 * 1024);
  });
});
