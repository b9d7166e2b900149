/**
 * Limits: publishes per second per client address, concurrent subscribers per
 * address, subscriptions per server, and --trust-proxy. The limiter itself is
 * tested with a fake clock; the answers (429/503 with Retry-After) against a
 * real server. Test traffic comes from loopback, which is exempt by default,
 * so most servers here start with `limitExempt: ''` or use --trust-proxy.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveServeConfig } from '../src/server/config.js';
import { HttpError } from '../src/protocol/errors.js';
import { addressKey, clientAddress, Limits, RateLimiter, subscriptionsForFileLimit, type Slot } from '../src/server/ops/limits.js';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, Inbox, publish, rawExchange, startTestServer, subscribe, token, wsConnect, wsUrl } from './helpers.js';

function fakeRequest(remoteAddress: string, xff?: string): IncomingMessage {
  return { socket: { remoteAddress }, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } } as unknown as IncomingMessage;
}

async function metric(server: HookbotServer, name: string): Promise<number> {
  const text = await (await fetch(server.url + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line === undefined ? NaN : Number(line.slice(name.length + 1));
}

describe('RateLimiter (token bucket)', () => {
  it('allows a burst, then one per 1/rate seconds, and says how long to wait', () => {
    const r = new RateLimiter(2, 3);
    let t = 1000;
    expect([r.take('a', t), r.take('a', t), r.take('a', t)]).toEqual([0, 0, 0]);
    expect(r.take('a', t)).toBe(1);
    t += 499;
    expect(r.take('a', t)).toBe(1);
    t += 2;
    expect(r.take('a', t)).toBe(0);
    // Other keys have their own bucket.
    expect(r.take('b', t)).toBe(0);
  });

  it('tells a slow rate to wait whole seconds', () => {
    const r = new RateLimiter(0.25, 1);
    expect(r.take('a', 0)).toBe(0);
    expect(r.take('a', 0)).toBe(4);
  });

  it('forgets idle buckets, and never holds more than its cap', () => {
    const r = new RateLimiter(10, 10, 100);
    for (let i = 0; i < 50; i++) r.take(`k${i}`, 0);
    expect(r.size).toBe(50);
    r.sweep(999);
    expect(r.size).toBe(50);
    r.sweep(1000);
    expect(r.size).toBe(0);
    for (let i = 0; i < 500; i++) r.take(`k${i}`, 5000);
    expect(r.size).toBe(100);
  });
});

describe('client addresses', () => {
  it('ignores X-Forwarded-For unless --trust-proxy is given', () => {
    expect(clientAddress(fakeRequest('10.0.0.1', '1.2.3.4'), 0)).toBe('10.0.0.1');
  });

  it('with n trusted proxies uses the n-th entry from the right; spoofed entries on the left are ignored', () => {
    expect(clientAddress(fakeRequest('10.0.0.1', '6.6.6.6, 1.2.3.4'), 1)).toBe('1.2.3.4');
    expect(clientAddress(fakeRequest('10.0.0.1', '6.6.6.6, 1.2.3.4, 10.0.0.9'), 2)).toBe('1.2.3.4');
    expect(clientAddress(fakeRequest('10.0.0.1', '1.2.3.4'), 3)).toBe('1.2.3.4');
    expect(clientAddress(fakeRequest('10.0.0.1'), 1)).toBe('10.0.0.1');
    expect(clientAddress(fakeRequest('10.0.0.1', '1.2.3.4:5678'), 1)).toBe('1.2.3.4');
    expect(clientAddress(fakeRequest('10.0.0.1', '[2001:db8::1]:443'), 1)).toBe('2001:db8::1');
  });

  it('normalises IPv4-mapped addresses and groups IPv6 by /64', () => {
    expect(clientAddress(fakeRequest('::ffff:192.0.2.7'), 0)).toBe('192.0.2.7');
    expect(addressKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
  });

  it('exempts loopback by default, and nothing with an empty --limit-exempt', () => {
    const base = { rateLimit: 1, rateLimitBurst: 1, maxSubscribersPerIp: 1, maxSubscriptions: 0, maxConnectionsPerIp: 0, maxBodyInFlight: 0, trustProxy: 0 };
    const exempt = new Limits({ ...base, limitExempt: ['127.0.0.0/8', '::1/128'] });
    expect(exempt.address(fakeRequest('127.0.0.1'))).toBeUndefined();
    expect(exempt.address(fakeRequest('::ffff:127.0.0.2'))).toBeUndefined();
    expect(exempt.address(fakeRequest('::1'))).toBeUndefined();
    expect(exempt.address(fakeRequest('192.0.2.1'))).toBe('192.0.2.1');
    for (let i = 0; i < 5; i++) expect(exempt.publish(fakeRequest('127.0.0.1'))).toBeUndefined();
    const strict = new Limits({ ...base, limitExempt: [] });
    expect(strict.publish(fakeRequest('127.0.0.1'))).toBeUndefined();
    expect(strict.publish(fakeRequest('127.0.0.1'))?.status).toBe(429);
  });

  it('gives back every slot held on a connection when it closes, once', () => {
    const limits = new Limits({ rateLimit: 0, rateLimitBurst: 0, maxSubscribersPerIp: 0, maxSubscriptions: 0, maxConnectionsPerIp: 0, maxBodyInFlight: 0, trustProxy: 0, limitExempt: [] });
    const socket = new Socket();
    const other = new Socket();
    for (const s of [socket, socket, other]) {
      const slot = limits.admitSubscriber(fakeRequest('192.0.2.1'));
      if (slot instanceof HttpError) throw slot;
      limits.releaseOnClose(s, slot);
    }
    expect(limits.subscriptions).toBe(3);
    limits.socketClosed(socket);
    expect(limits.subscriptions).toBe(1);
    limits.socketClosed(socket);
    expect(limits.subscriptions).toBe(1);
    limits.socketClosed(other);
    expect(limits.subscriptions).toBe(0);
  });

  it('releases subscriber slots once, and forgets an address at zero', () => {
    const limits = new Limits({ rateLimit: 0, rateLimitBurst: 0, maxSubscribersPerIp: 2, maxSubscriptions: 3, maxConnectionsPerIp: 0, maxBodyInFlight: 0, trustProxy: 0, limitExempt: [] });
    const a1 = limits.admitSubscriber(fakeRequest('192.0.2.1'));
    const a2 = limits.admitSubscriber(fakeRequest('192.0.2.1'));
    const a3 = limits.admitSubscriber(fakeRequest('192.0.2.1'));
    const ok = (a: Slot | HttpError): a is Slot => !(a instanceof HttpError);
    expect([ok(a1), ok(a2), ok(a3)]).toEqual([true, true, false]);
    expect(ok(a3) ? 0 : a3.status).toBe(429);
    const b1 = limits.admitSubscriber(fakeRequest('192.0.2.2'));
    expect(ok(b1)).toBe(true);
    const c1 = limits.admitSubscriber(fakeRequest('192.0.2.3'));
    expect(ok(c1) ? 0 : c1.status).toBe(503);
    if (ok(a1)) {
      a1.release();
      a1.release();
    }
    expect(limits.subscriptions).toBe(2);
    if (ok(a2)) a2.release();
    if (ok(b1)) b1.release();
    expect(limits.subscriptions).toBe(0);
    expect(limits.subscriberAddresses).toBe(0);
  });
});

describe('configuration', () => {
  it('has documented defaults', () => {
    const c = resolveServeConfig({ key: 'k' }, {});
    expect(c).toMatchObject({ rateLimit: 100, rateLimitBurst: 100, maxSubscribersPerIp: 200, maxSubscriptions: subscriptionsForFileLimit(), trustProxy: 0, limitExempt: ['127.0.0.0/8', '::1/128'] });
  });

  it('reads flags and environment; a bare --trust-proxy is one proxy', () => {
    const c = resolveServeConfig(
      { key: 'k', rateLimit: '7', maxSubscribersPerIp: '3', trustProxy: true, limitExempt: '10.0.0.0/8, 2001:db8::/32' },
      { HOOKBOT_MAX_SUBSCRIPTIONS: '9', HOOKBOT_RATE_LIMIT_BURST: '20' },
    );
    expect(c).toMatchObject({ rateLimit: 7, rateLimitBurst: 20, maxSubscribersPerIp: 3, maxSubscriptions: 9, trustProxy: 1, limitExempt: ['10.0.0.0/8', '2001:db8::/32'] });
    expect(resolveServeConfig({ key: 'k', trustProxy: '2', limitExempt: '' }, {})).toMatchObject({ trustProxy: 2, limitExempt: [] });
    expect(resolveServeConfig({ key: 'k' }, { HOOKBOT_TRUST_PROXY: 'true', HOOKBOT_RATE_LIMIT: '0' })).toMatchObject({ trustProxy: 1, rateLimit: 0 });
  });

  it('names the bad option', () => {
    expect(() => resolveServeConfig({ key: 'k', rateLimit: 'lots' }, {})).toThrow(/--rate-limit must be a whole number/);
    expect(() => resolveServeConfig({ key: 'k', maxSubscriptions: '-1' }, {})).toThrow(/--max-subscriptions/);
    expect(() => resolveServeConfig({ key: 'k', trustProxy: 'yes' }, {})).toThrow(/--trust-proxy/);
    expect(() => resolveServeConfig({ key: 'k', limitExempt: '10.0.0.0/33' }, {})).toThrow(ConfigError);
    expect(() => resolveServeConfig({ key: 'k', limitExempt: 'localhost' }, {})).toThrow(/--limit-exempt: "localhost" is not an IP address/);
  });
});

describe('publish rate limit', () => {
  let server: HookbotServer;
  beforeAll(async () => {
    server = await startTestServer({ rateLimit: '1', rateLimitBurst: '5', limitExempt: '' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('answers 429 with Retry-After past the burst, and lets the client back in after it', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await publish(server, '/pub/rl/a', `m${i}`)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200]);
    const res = await publish(server, '/pub/rl/a', 'over');
    expect(res.status).toBe(429);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await res.text()).toBe('429 Too Many Requests: this address is over the publish rate limit of 1 per second (--rate-limit, burst 5)\n');
    // Refused attempts don't dig the hole deeper: a token refills within 1/rate seconds.
    await eventually(async () => (await publish(server, '/pub/rl/a', 'again')).status === 200, 3000, 'publish allowed again');
    expect(await metric(server, 'hookbot_publishes_total{result="rejected",reason="rate_limited"}')).toBeGreaterThanOrEqual(1);
  });

  it('rate-limits unauthenticated attempts too, before the token check', async () => {
    const own = await startTestServer({ rateLimit: '1', rateLimitBurst: '2', limitExempt: '' });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) statuses.push((await fetch(own.url + '/pub/x', { method: 'POST', body: 'x', headers: { authorization: 'Bearer ' + '0'.repeat(40) } })).status);
      expect(statuses).toEqual([401, 401, 429]);
    } finally {
      await own.close();
    }
  });

  it('leaves traffic under the limit untouched', async () => {
    const own = await startTestServer({ limitExempt: '' });
    try {
      const ws = await subscribe(own, '/sub/under');
      const inbox = new Inbox(ws);
      for (let i = 0; i < 60; i++) expect((await publish(own, '/pub/under', `n${i}`)).status).toBe(200);
      const got = await inbox.waitFor(60);
      expect(got.map((m) => m.data.toString())).toEqual(Array.from({ length: 60 }, (_, i) => `n${i}`));
      ws.close();
    } finally {
      await own.close();
    }
  });

  it('exempts loopback clients by default', async () => {
    const own = await startTestServer({ rateLimit: '2' });
    try {
      for (let i = 0; i < 20; i++) expect((await publish(own, '/pub/local', 'x')).status).toBe(200);
    } finally {
      await own.close();
    }
  });

  it('ignores X-Forwarded-For without --trust-proxy: a client cannot dodge the limit by spoofing it', async () => {
    const own = await startTestServer({ rateLimit: '1', rateLimitBurst: '3', limitExempt: '' });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 4; i++) statuses.push((await publish(own, '/pub/spoof', 'x', { 'x-forwarded-for': `198.51.100.${i}` })).status);
      expect(statuses).toEqual([200, 200, 200, 429]);
    } finally {
      await own.close();
    }
  });

  it('with --trust-proxy, limits each forwarded client separately', async () => {
    const own = await startTestServer({ rateLimit: '1', rateLimitBurst: '3', trustProxy: true });
    try {
      const from = async (ip: string) => (await publish(own, '/pub/proxied', 'x', { 'x-forwarded-for': `6.6.6.6, ${ip}` })).status;
      const a: number[] = [];
      for (let i = 0; i < 4; i++) a.push(await from('203.0.113.1'));
      expect(a).toEqual([200, 200, 200, 429]);
      // Another client behind the same proxy is not affected.
      expect(await from('203.0.113.2')).toBe(200);
      // Requests reaching the server directly (no header) are the loopback proxy itself: exempt.
      for (let i = 0; i < 5; i++) expect((await publish(own, '/pub/proxied', 'x')).status).toBe(200);
    } finally {
      await own.close();
    }
  });
});

describe('subscriber caps', () => {
  const sse = (server: HookbotServer, path: string, headers: Record<string, string> = {}) =>
    fetch(server.url + path, { headers: { accept: 'text/event-stream', ...bearer(path), ...headers } });

  it('--max-subscribers-per-ip: the next WebSocket handshake gets a raw 429 with Retry-After, SSE too; a closed one frees its slot', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '2', limitExempt: '' });
    try {
      const a = await subscribe(server, '/sub/cap');
      const b = await subscribe(server, '/sub/cap');
      const err = await subscribe(server, '/sub/cap').catch((e) => e);
      expect(err.status).toBe(429);
      expect(err.headers['retry-after']).toBe('5');
      expect(err.body).toBe('429 Too Many Requests: this address already holds 2 subscribers (--max-subscribers-per-ip 2)\n');
      const refusedSse = await sse(server, '/sub/cap');
      expect(refusedSse.status).toBe(429);
      expect(refusedSse.headers.get('retry-after')).toBe('5');
      await refusedSse.text();
      // Refused handshakes hold no slot.
      for (let i = 0; i < 3; i++) expect((await subscribe(server, '/sub/cap').catch((e) => e)).status).toBe(429);
      expect(server.limits.subscriptions).toBe(2);

      a.close();
      await eventually(() => server.limits.subscriptions === 1, 5000, 'slot freed');
      const c = await subscribe(server, '/sub/cap');
      expect(server.limits.subscriptions).toBe(2);
      c.close();
      const text = await (await fetch(server.url + '/metrics')).text();
      expect(text).toMatch(/hookbot_subscribers_refused_total\{transport="ws",reason="per_ip_limit"\} [4-9]/);
      expect(text).toMatch(/hookbot_subscribers_refused_total\{transport="sse",reason="per_ip_limit"\} 1/);
      b.close();
    } finally {
      await server.close();
    }
  });

  it('a handshake that ws refuses after admission (a bad Sec-WebSocket-Key) frees its slot as its connection closes', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '1', limitExempt: '' });
    try {
      const path = '/sub/bad-key';
      const { text } = await rawExchange(
        server.port,
        `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-a-key\r\nAuthorization: ${bearer(path).authorization}\r\n\r\n`,
      );
      expect(text).toMatch(/^HTTP\/1\.1 400 /);
      await eventually(() => server.limits.subscriptions === 0, 5000, 'slot freed');
      // The address's one place is free again.
      const ws = await subscribe(server, path);
      expect(server.limits.subscriptions).toBe(1);
      ws.close();
    } finally {
      await server.close();
    }
  });

  it('SSE subscribes pipelined on one connection: the first streams, the queued one holds no slot, and closing frees them all', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '5', limitExempt: '' });
    try {
      const path = '/sub/pipelined';
      const get = `GET ${path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: ${bearer(path).authorization}\r\n\r\n`;
      const socket = connect(server.port, '127.0.0.1');
      let text = '';
      socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
      socket.write(get + get);
      await eventually(() => text.startsWith('HTTP/1.1 200 OK\r\n'), 5000, 'the first stream');
      await eventually(() => server.sessions.counts().sse === 1, 5000, 'one SSE session');
      expect(server.limits.subscriptions).toBe(1);
      socket.destroy();
      await eventually(() => server.limits.subscriptions === 0, 5000, 'slots freed');
    } finally {
      await server.close();
    }
  });

  it('an SSE stream holds its slot while open and frees it when the client goes; /metrics counts it by transport', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '1', limitExempt: '' });
    try {
      const stream = await sse(server, '/sub/sse-cap');
      expect(stream.status).toBe(200);
      expect(server.limits.subscriptions).toBe(1);
      const text = await (await fetch(server.url + '/metrics')).text();
      expect(text).toContain('hookbot_subscribers{transport="sse"} 1');
      const second = await subscribe(server, '/sub/sse-cap').catch((e) => e);
      expect(second.status).toBe(429);
      await stream.body!.cancel();
      await eventually(() => server.limits.subscriptions === 0, 5000, 'SSE slot freed');
      const ws = await subscribe(server, '/sub/sse-cap');
      ws.close();
    } finally {
      await server.close();
    }
  });

  it('--max-subscribers-per-ip counts each forwarded client separately with --trust-proxy', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '1', trustProxy: true });
    try {
      const xff = (ip: string) => ({ headers: { ...bearer('/sub/cap'), 'x-forwarded-for': ip } });
      const a = await wsConnect(wsUrl(server, '/sub/cap'), xff('203.0.113.1'));
      expect((await wsConnect(wsUrl(server, '/sub/cap'), xff('203.0.113.1')).catch((e) => e)).status).toBe(429);
      const b = await wsConnect(wsUrl(server, '/sub/cap'), xff('203.0.113.2'));
      a.close();
      b.close();
    } finally {
      await server.close();
    }
  });

  it('unauthenticated handshakes never take a slot', async () => {
    const server = await startTestServer({ maxSubscribersPerIp: '1', limitExempt: '' });
    try {
      for (let i = 0; i < 3; i++) expect((await wsConnect(wsUrl(server, '/sub/auth')).catch((e) => e)).status).toBe(401);
      const ws = await subscribe(server, '/sub/auth');
      ws.close();
    } finally {
      await server.close();
    }
  });

  it('--max-subscriptions: past it, WebSocket and SSE get 503 with Retry-After, whatever the address; existing subscribers keep receiving', async () => {
    const server = await startTestServer({ maxSubscriptions: '2' });
    try {
      const a = await subscribe(server, '/sub/full');
      const b = await subscribe(server, '/sub/full');
      const inbox = new Inbox(a);
      const err = await subscribe(server, '/sub/full').catch((e) => e);
      expect(err.status).toBe(503);
      expect(err.headers['retry-after']).toBe('5');
      expect(err.body).toBe('503 Service Unavailable: this server already holds its maximum of 2 subscriptions (--max-subscriptions)\n');
      const refusedSse = await sse(server, '/sub/full');
      expect(refusedSse.status).toBe(503);
      expect(refusedSse.headers.get('retry-after')).toBe('5');
      await refusedSse.text();
      expect((await publish(server, '/pub/full', 'still here')).status).toBe(200);
      expect((await inbox.waitFor(1))[0].data.toString()).toBe('still here');
      b.close();
      await eventually(() => server.limits.subscriptions === 1, 5000, 'slot freed');
      const c = await subscribe(server, '/sub/full');
      c.close();
      a.close();
      expect(token('/sub/full')).toHaveLength(40);
    } finally {
      await server.close();
    }
  });
});

describe('--max-subscriptions default', () => {
  const limits = (soft: string) => `Limit                     Soft Limit           Hard Limit           Units     \nMax open files            ${soft}                ${soft}                files     \n`;

  it('follows the open-file limit, keeping a tenth (at least 256) back', () => {
    expect(subscriptionsForFileLimit(limits('20000'))).toBe(18_000);
    expect(subscriptionsForFileLimit(limits('1048576'))).toBe(943_718);
    expect(subscriptionsForFileLimit(limits('1024'))).toBe(768);
    expect(subscriptionsForFileLimit(limits('unlimited'))).toBe(943_718);
  });

  it('reads this process, and falls back to 10 000 when it cannot', () => {
    const own = Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))![1]);
    expect(subscriptionsForFileLimit()).toBe(own - Math.max(256, Math.ceil(own / 10)));
    expect(subscriptionsForFileLimit('no such line')).toBe(10_000);
  });
});
