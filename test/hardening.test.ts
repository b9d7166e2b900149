/**
 * Bounded cost per anonymous request: each finding of the red-team pass is a
 * test against a real server (a child process where memory is measured), and
 * each fails on the code before the fix.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { LINGER_MS } from '../src/server/http/connections.js';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, Inbox, KEY, publish, rawExchange, startServeProcess, startTestServer, subscribe, token, type Proc } from './helpers.js';

const procs: Proc[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL');
});

async function serveProcess(args: string[]): Promise<Proc & { url: string; port: number }> {
  const p = await startServeProcess(args);
  procs.push(p);
  return p;
}

/** Resident and peak resident memory of a process, in MB. */
function memoryMb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)![1]);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

/** User + system CPU time of a process so far, in ms. */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // utime and stime, in clock ticks (100 per second on Linux).
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

const randomToken = () => Array.from({ length: 40 }, () => '0123456789abcdef'[Math.floor(Math.random() * 16)]).join('');

describe('1. deep paths are refused before any token work', () => {
  it('24 deep subscribes and publishes over 4 connections: 414 each, at a few ms of server CPU in all', async () => {
    const srv = await serveProcess([]);
    const deep = '/sub/r/' + 'a/'.repeat(7990);
    // Warm up, so the count below is the requests' and not the first request's JIT.
    await (await fetch(srv.url + deep, { headers: { accept: 'text/event-stream' } })).text();
    const before = cpuMs(srv.child.pid!);
    const attack = Promise.all(
      Array.from({ length: 4 }, async () => {
        const statuses: number[] = [];
        for (let i = 0; i < 6; i++) {
          const path = i % 2 ? deep : deep.replace('/sub/', '/unsafe/pub/');
          const res = await fetch(srv.url + path, {
            method: i % 2 ? 'GET' : 'POST',
            headers: { authorization: `Bearer ${randomToken()}`, accept: 'text/event-stream' },
            ...(i % 2 ? {} : { body: 'x' }),
          });
          await res.text();
          statuses.push(res.status);
        }
        return statuses;
      }),
    );
    // CPU time is what the attack costs the server (latency would also measure whatever else the machine runs).
    expect((await attack).flat()).toEqual(Array(24).fill(414));
    // Before the bounds, each of these cost 320-450 ms of HMACs on the event loop.
    expect(cpuMs(srv.child.pid!) - before).toBeLessThan(100);
  });

  it('at the bounds (64 segments, 1 KiB) a token guess costs under 3 ms of CPU more than a short one', async () => {
    const srv = await serveProcess([]);
    const deep = '/pub/' + Array.from({ length: 63 }, (_, i) => `s${i}`.padEnd(15, 'x')).join('/') + '/z';
    expect(deep.length).toBeLessThan(1024 + 5);
    /** Server CPU per wrong-token publish to `path`: unlike latency, it does not depend on what else the machine runs. */
    const cpuPerGuess = async (path: string) => {
      const guess = async () => {
        const res = await fetch(srv.url + path, { method: 'POST', body: 'x', headers: { authorization: `Bearer ${randomToken()}` } });
        await res.text();
        expect(res.status).toBe(401);
      };
      for (let i = 0; i < 50; i++) await guess();
      const before = cpuMs(srv.child.pid!);
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          for (let i = 0; i < 100; i++) await guess();
        }),
      );
      return (cpuMs(srv.child.pid!) - before) / 400;
    };
    const short = await cpuPerGuess('/pub/a/b');
    expect(await cpuPerGuess(deep)).toBeLessThan(short + 3);
    const path = deep;
    const ok = await fetch(srv.url + path, { method: 'POST', body: 'x', headers: { authorization: `Bearer ${token(path)}` } });
    expect(ok.status).toBe(200);
  });

  it('a topic past the bounds is named in the answer', async () => {
    const srv = await startTestServer();
    try {
      const long = await publish(srv, '/pub/' + 'x'.repeat(1025), 'x');
      expect(long.status).toBe(414);
      expect(await long.text()).toMatch(/at most 1024 bytes/);
      const deep = await publish(srv, '/pub/' + 'a/'.repeat(64) + 'z', 'x');
      expect(deep.status).toBe(400);
      expect(await deep.text()).toMatch(/at most 64 segments/);
    } finally {
      await srv.close();
    }
  });
});

describe('2. history counts everything it stores', () => {
  it('12 000 anonymous publishes of long topics, big kept headers and empty bodies stay within the bound', async () => {
    const srv = await serveProcess(['--history-total-bytes', '1MiB', '--keep-header', 'x-a,x-b,x-c,x-d']);
    const headers = Object.fromEntries(['x-a', 'x-b', 'x-c', 'x-d'].map((h) => [h, h.repeat(1000).slice(0, 3000)]));
    const before = memoryMb(srv.child.pid!).rss;
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < 12_000) {
          const i = next++;
          const topic = `${String(i).padStart(6, '0')}/`.padEnd(1000, 't') + 'x';
          const res = await fetch(`${srv.url}/unsafe/pub/${topic}`, { method: 'POST', body: '', headers });
          await res.text();
          expect(res.status).toBe(200);
        }
      }),
    );
    const after = memoryMb(srv.child.pid!).rss;
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    const bytes = Number(/^hookbot_history_bytes (\d+)/m.exec(metrics)![1]);
    expect(bytes).toBeGreaterThan(512 * 1024);
    expect(bytes).toBeLessThanOrEqual(1024 * 1024);
    expect(after - before).toBeLessThan(80);
  }, 120_000);
});

describe('4. bodies in flight have a budget', () => {
  it('40 stalled 24 MiB uploads: RSS stays under 450 MB, the rest get 503 unread, and the budget comes back', async () => {
    const srv = await serveProcess([]);
    const chunk = Buffer.alloc(1024 * 1024, 0x61);
    const sockets: Socket[] = [];
    const answers: string[] = [];
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        new Promise<void>((resolve) => {
          const s = connect(srv.port, '127.0.0.1', () => {
            s.write(`POST /unsafe/pub/stall/${i} HTTP/1.1\r\nHost: x\r\nContent-Length: ${25 * 1024 * 1024}\r\n\r\n`);
            let sent = 0;
            const pump = () => {
              while (sent < 24) {
                sent++;
                if (!s.write(chunk)) return void s.once('drain', pump);
              }
              resolve();
            };
            pump();
          });
          s.on('data', (d: Buffer) => {
            answers.push(d.toString('latin1').split('\r\n')[0]);
            resolve();
          });
          s.on('error', () => resolve());
          sockets.push(s);
        }),
      ),
    );
    await eventually(async () => /hookbot_publish_body_bytes_in_flight (\d+)/.exec(await (await fetch(`${srv.url}/metrics`)).text())![1] !== '0', 10_000, 'uploads in flight');
    const { peak } = memoryMb(srv.child.pid!);
    expect(peak).toBeLessThan(450);
    expect(answers.length).toBeGreaterThan(20);
    for (const a of answers) expect(a).toBe('HTTP/1.1 503 Service Unavailable');
    for (const s of sockets) s.destroy();
    await eventually(async () => /hookbot_publish_body_bytes_in_flight 0\b/.test(await (await fetch(`${srv.url}/metrics`)).text()), 10_000, 'budget released');
    const res = await fetch(`${srv.url}/unsafe/pub/after`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
  }, 60_000);
});

describe('5. connection hygiene', () => {
  let srv: HookbotServer;
  beforeAll(async () => {
    srv = await startTestServer({ bodyTimeout: '1s', maxConnectionsPerIp: '4', limitExempt: '' });
  });
  afterAll(async () => {
    await srv.close();
  });

  it('incomplete request headers get 408 within 20 s (the default --header-timeout)', async () => {
    const own = await startTestServer();
    try {
      const { text, ms } = await rawExchange(own.port, 'GET /status HTTP/1.1\r\nHost: x\r\nX-Half: ');
      expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
      expect(ms).toBeLessThan(20_000);
    } finally {
      await own.close();
    }
  }, 30_000);

  it('a body that stalls past --body-timeout gets 408', async () => {
    const { text, ms } = await rawExchange(srv.port, `POST /unsafe/pub/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this`);
    expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(text).toMatch(/--body-timeout/);
    expect(ms).toBeLessThan(1000 + LINGER_MS + 3000);
  });

  it('caps concurrent connections per client address', async () => {
    const held = await Promise.all(Array.from({ length: 4 }, () => new Promise<Socket>((resolve) => { const s = connect(srv.port, '127.0.0.1', () => resolve(s)); })));
    try {
      // No wait needed: the server accepts in connection order, so it has counted the 4 held ones before it sees this one.
      const { text } = await rawExchange(srv.port, 'GET /status HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(text).toMatch(/^HTTP\/1\.1 429 Too Many Requests\r\n/);
      expect(text).toMatch(/--max-connections-per-ip/);
    } finally {
      for (const s of held) s.destroy();
    }
    await eventually(async () => (await fetch(`${srv.url}/status`)).status === 200, 5000, 'a slot again');
  });

  it('a 401 publish is answered at once with Connection: close, its body unread', async () => {
    const own = await startTestServer();
    try {
      const { text, ms } = await rawExchange(own.port, `POST /pub/x HTTP/1.1\r\nHost: x\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\nstart`);
      expect(text).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);
      expect(text.toLowerCase()).toContain('connection: close');
      // Closed after the lingering period, not after reading 10 MiB that never comes.
      expect(ms).toBeLessThan(LINGER_MS + 3000);
    } finally {
      await own.close();
    }
  });

  it('a 64 MiB publish always reads its 413, never a reset', async () => {
    const own = await startTestServer();
    try {
      const body = Buffer.alloc(64 * 1024 * 1024, 0x62);
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${own.url}/pub/big`, { method: 'POST', body: new Uint8Array(body.buffer, body.byteOffset, body.length), headers: bearer('/pub/big') });
        expect(res.status).toBe(413);
        expect(await res.text()).toMatch(/--max-body/);
      }
    } finally {
      await own.close();
    }
  }, 60_000);
});

// 6 to 8 need nothing but a default server, and no test there depends on its state
// (each uses its own topics), so they share one.
describe('on a default server', () => {
  let srv: HookbotServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv.close();
  });

  describe('6. sealed namespaces', () => {
    it('a safe topic cannot begin with /, so no token reaches the unsafe feed', async () => {
      const ws = await subscribe(srv, '/unsafe/sub/github.com/', { headers: { ...bearer('/unsafe/sub/github.com/'), 'x-hookbot-unsafe-is-ok': 'I understand the security implications' } });
      const feed = new Inbox(ws);
      const injected = await fetch(`${srv.url}/pub//unsafe/github.com/injected`, { method: 'POST', body: 'forged', headers: bearer('/pub/') });
      expect(injected.status).toBe(400);
      expect(await injected.text()).toMatch(/cannot begin with \//);
      const read = await fetch(`${srv.url}/sub//unsafe/x`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${token('/', KEY)}` } });
      expect(read.status).toBe(400);
      // The feed receives in order, so anything that leaked into it above would arrive before this marker.
      expect((await publish(srv, '/unsafe/pub/github.com/marker', 'm')).status).toBe(200);
      await feed.waitFor(1);
      expect(feed.texts()).toEqual(['/unsafe/github.com/marker\0m']);
      ws.close();
    });
  });

  describe('7. only GET with Upgrade: websocket takes the WebSocket path', () => {
    it('a publish offering h2c (curl --http2) is served as plain HTTP/1.1', async () => {
      const inbox = new Inbox(await subscribe(srv, '/sub/h2c'));
      const auth = `Bearer ${token('/pub/h2c')}`;
      const { text } = await rawExchange(
        srv.port,
        `POST /pub/h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: ${auth}\r\nContent-Length: 5\r\n\r\nhello`,
      );
      expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect((await inbox.waitFor(1))[0].data.toString()).toBe('hello');
    });

    it('GET /status with Upgrade: websocket is just /status', async () => {
      const { text } = await rawExchange(
        srv.port,
        'GET /status HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(text).toMatch(/\r\n\r\nOK\n$/);
    });

    it('a WebSocket subscribe still upgrades', async () => {
      const ws = await subscribe(srv, '/sub/still');
      expect(ws.readyState).toBe(WebSocket.OPEN);
      ws.close();
    });
  });

  describe('8. answers are labelled and Authorization is parsed strictly', () => {
    it('X-Content-Type-Options: nosniff on every answer', async () => {
      const answers = [
        await fetch(`${srv.url}/status`),
        await publish(srv, '/pub/n', 'x'),
        await fetch(`${srv.url}/pub/n`, { method: 'POST', body: 'x' }),
        await fetch(`${srv.url}/sub/n?since=<script>`, { headers: { ...bearer('/sub/n'), accept: 'text/event-stream' } }),
        await fetch(`${srv.url}/healthz`),
        await fetch(`${srv.url}/metrics`),
        await fetch(`${srv.url}/_/nothing-here`),
        await fetch(`${srv.url}/%zz`),
      ];
      for (const res of answers) {
        expect(res.headers.get('x-content-type-options'), `${res.url} ${res.status}`).toBe('nosniff');
        await res.text();
      }
      const sse = new AbortController();
      const stream = await fetch(`${srv.url}/sub/n`, { headers: { ...bearer('/sub/n'), accept: 'text/event-stream' }, signal: sse.signal });
      expect(stream.headers.get('x-content-type-options')).toBe('nosniff');
      sse.abort();
      const upgraded = await new Promise<string | undefined>((resolve, reject) => {
        const ws = new WebSocket(`${srv.url.replace('http', 'ws')}/sub/n`, { headers: bearer('/sub/n') });
        ws.once('upgrade', (res) => {
          resolve(res.headers['x-content-type-options'] as string | undefined);
          ws.close();
        });
        ws.once('error', reject);
      });
      expect(upgraded).toBe('nosniff');
    });

    it('a Bearer token after a non-ASCII space is no token', async () => {
      const res = await fetch(`${srv.url}/pub/n`, { method: 'POST', body: 'x', headers: { authorization: `Bearer\u00a0${token('/pub/n')}` } });
      expect(res.status).toBe(401);
    });
  });
});
