/**
 * Bad input gets a clear 4xx and loses nothing; slow or misbehaving
 * subscribers are cut off without touching anyone else.
 */
import { request } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, Inbox, publish, startTestServer, subscribe } from './helpers.js';

let server: HookbotServer;
beforeAll(async () => {
  server = await startTestServer({ maxBody: "1KiB", maxSubscriberBuffer: "64KiB" });
});
afterAll(async () => {
  await server.close();
});

/** Sends raw bytes and returns the raw response. */
function raw(bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(server.port, '127.0.0.1', () => s.write(bytes));
    let out = '';
    s.on('data', (c) => (out += c.toString()));
    s.on('end', () => resolve(out));
    s.on('error', reject);
    s.setTimeout(5000, () => {
      s.destroy();
      resolve(out);
    });
  });
}

describe('publish bodies', () => {
  it('413 names the limit when Content-Length is over --max-body', async () => {
    const inbox = new Inbox(await subscribe(server, '/sub/big'));
    const res = await publish(server, '/pub/big', Buffer.alloc(1025, 0x61));
    expect(res.status).toBe(413);
    expect(await res.text()).toMatch(/--max-body of 1024 bytes/);
    const ok = await publish(server, '/pub/big', Buffer.alloc(1024, 0x62));
    expect(ok.status).toBe(200);
    await inbox.waitFor(1);
    expect(inbox.messages.map((m) => m.data.length)).toEqual([1024]);
  });

  it('413 for a chunked body that grows past the limit, and nothing is published', async () => {
    const inbox = new Inbox(await subscribe(server, '/sub/chunked'));
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${server.url}/pub/chunked`, { method: 'POST', headers: bearer('/pub/chunked') }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', reject);
      // Keep writing well past the limit; the server answers as soon as it is crossed.
      let sent = 0;
      const pump = () => {
        while (sent < 64 * 1024) {
          sent += 512;
          if (!req.write(Buffer.alloc(512, 0x63))) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    expect(status).toBe(413);
    await publish(server, '/pub/chunked', 'small');
    await inbox.waitFor(1);
    expect(inbox.texts()).toEqual(['small']);
  });
});

describe('malformed requests', () => {
  it('malformed percent-encoding and control characters in paths are 400 naming the problem', async () => {
    const bad = await fetch(`${server.url}/pub/a%zzb`, { method: 'POST', body: 'x', headers: bearer('/pub/x') });
    expect(bad.status).toBe(400);
    expect(await bad.text()).toMatch(/malformed percent-encoding/);
    const ctl = await fetch(`${server.url}/pub/a%0Ab`, { method: 'POST', body: 'x', headers: bearer('/pub/x') });
    expect(ctl.status).toBe(400);
    expect(await ctl.text()).toMatch(/control character/);
    const empty = await fetch(`${server.url}/pub/`, { method: 'POST', body: 'x', headers: bearer('/pub/') });
    expect(empty.status).toBe(400);
    expect(await empty.text()).toMatch(/topic is empty/);
  });

  it('garbage requests get 4xx, never 5xx, and the server keeps serving', async () => {
    const answers = await Promise.all([
      raw('GARBAGE\r\n\r\n'),
      raw(`POST /pub/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n`),
      raw(`GET /status HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`),
      raw(`POST /pub/x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \u0000\u0001\r\nContent-Length: 1\r\n\r\nx`),
    ]);
    for (const a of answers) expect(a, a).toMatch(/^HTTP\/1\.1 4\d\d /);
    expect((await fetch(`${server.url}/status`)).status).toBe(200);
  });

  it('wrong methods on publish and subscribe paths are 405', async () => {
    expect((await fetch(`${server.url}/pub/x`, { headers: bearer('/pub/x') })).status).toBe(405);
    expect((await fetch(`${server.url}/sub/x`, { method: 'POST', body: 'x', headers: bearer('/sub/x') })).status).toBe(405);
  });

  it('GET on a subscribe path without an upgrade is 400 explaining how to subscribe', async () => {
    const res = await fetch(`${server.url}/sub/x`, { headers: bearer('/sub/x') });
    expect(res.status).toBe(400);
    expect(await res.text()).toMatch(/WebSocket/);
  });

  it('a bad since parameter is refused at the handshake', async () => {
    const err = await subscribe(server, '/sub/x?since=yesterday').catch((e) => e);
    expect(err.status).toBe(400);
    expect(err.body).toMatch(/since must be a message id/);
  });
});

describe('misbehaving subscribers', () => {
  it('a subscriber that sends data is closed with 1008; others are untouched', async () => {
    const rude = await subscribe(server, '/sub/rude');
    const rudeInbox = new Inbox(rude);
    const polite = new Inbox(await subscribe(server, '/sub/rude'));
    rude.send('hello server');
    expect((await rudeInbox.waitClose()).code).toBe(1008);
    await publish(server, '/pub/rude', 'still here');
    expect((await polite.waitFor(1))[0].data.toString()).toBe('still here');
  });

  it('a subscriber that stops answering pings is cut off; one that answers stays and keeps receiving', async () => {
    // A pong must be back within one interval; 400 ms leaves room for a loaded machine (both ends share this event loop).
    const own = await startTestServer({ memory: true }, { pingIntervalMs: 400 });
    try {
      const silent = await subscribe(own, '/sub/pings', { autoPong: false });
      const lively = await subscribe(own, '/sub/pings');
      const silentInbox = new Inbox(silent);
      let silentPings = 0;
      let livelyPings = 0;
      silent.on('ping', () => silentPings++);
      lively.on('ping', () => livelyPings++);
      // No close frame: the server terminates the connection (1006 on this side).
      expect((await silentInbox.waitClose()).code).toBe(1006);
      expect(silentPings).toBeGreaterThanOrEqual(1);
      await eventually(() => own.sessions.counts().ws < 2, 5000, 'the silent session removed');
      expect(own.sessions.counts().ws).toBe(1);
      // Two more rounds of pings: answering them keeps the other subscriber connected.
      const seen = livelyPings;
      await eventually(() => livelyPings >= seen + 2, 5000, 'two more pings');
      expect(lively.readyState).toBe(lively.OPEN);
      const inbox = new Inbox(lively);
      await publish(own, '/pub/pings', 'still here');
      expect((await inbox.waitFor(1))[0].data.toString()).toBe('still here');
      lively.close();
    } finally {
      await own.close();
    }
  });

  it('an oversized frame is closed with 1009', async () => {
    const big = await subscribe(server, '/sub/oversize');
    const inbox = new Inbox(big);
    big.send(Buffer.alloc(100_000));
    expect((await inbox.waitClose()).code).toBe(1009);
  });

  it('a paused subscriber past --max-subscriber-buffer is disconnected; publishers and the other subscriber are unaffected', async () => {
    const own = await startTestServer({ maxSubscriberBuffer: '64KiB' });
    try {
      const slowWs = await subscribe(own, '/sub/slow');
      const slow = new Inbox(slowWs);
      const fast = new Inbox(await subscribe(own, '/sub/slow'));
      // Stop reading: the kernel buffers fill, then the server-side queue grows.
      (slowWs as unknown as { _socket: { pause(): void } })._socket.pause();
      const n = 300;
      const body = Buffer.alloc(60 * 1024, 0x64);
      const statuses: number[] = [];
      for (let i = 0; i < n; i++) {
        body.writeUInt32BE(i, 0);
        const res = await publish(own, '/pub/slow', body);
        await res.arrayBuffer();
        statuses.push(res.status);
      }
      expect(statuses.filter((s) => s !== 200)).toEqual([]);
      await fast.waitFor(n, 20_000);
      expect(fast.messages.map((m) => m.data.readUInt32BE(0))).toEqual(Array.from({ length: n }, (_, i) => i));
      await eventually(() => own.broker.stats.slowDisconnects === 1, 5000, 'slow disconnect');
      expect(own.sessions.slowDisconnects.ws).toBe(1);
      expect(slow.messages.length).toBeLessThan(n);
    } finally {
      await own.close();
    }
  }, 60_000);
});
