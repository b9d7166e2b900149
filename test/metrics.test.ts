/**
 * /metrics, /healthz, /readyz and key rotation, against real servers on real
 * ports: every value is read back through the Prometheus text endpoint.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryBackend } from '../src/server/backends/memory.js';
import { DEFAULT_RETENTION, storedSize } from '../src/server/backends/backend.js';
import { buildProgram } from '../src/cli/index.js';
import { resolveServeConfig } from '../src/server/config.js';
import { createLogger } from '../src/server/log.js';
import { startServer, type HookbotServer } from '../src/server/server.js';
import { makeToken } from '../src/protocol/tokens.js';
import { bearer, eventually, Inbox, publish, startTestServer, subscribe, token, wsConnect, wsUrl } from './helpers.js';

/** `name{labels}` → value, from the Prometheus text format. */
async function scrape(server: HookbotServer, headers: Record<string, string> = {}): Promise<Map<string, number>> {
  const res = await fetch(server.url + '/metrics', { headers });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

let server: HookbotServer;
beforeAll(async () => {
  server = await startTestServer({ maxBody: '1KiB' });
});
afterAll(async () => {
  await server.close();
});

describe('/metrics', () => {
  it('is open without --metrics-token and has the process defaults', async () => {
    const m = await scrape(server);
    expect(m.has('process_cpu_user_seconds_total')).toBe(true);
    expect(m.has('nodejs_eventloop_lag_seconds')).toBe(true);
    for (const reason of ['unauthorized', 'too_large', 'bad_request', 'unavailable', 'rate_limited', 'error']) {
      expect(m.get(`hookbot_publishes_total{result="rejected",reason="${reason}"}`), reason).toBe(0);
    }
  });

  it('counts accepted publishes, bytes in, fan-out latency, deliveries and bytes out', async () => {
    const a = await subscribe(server, '/sub/m/deliver');
    const b = await subscribe(server, '/sub/m/');
    const inboxes = [new Inbox(a), new Inbox(b)];
    const before = await scrape(server);
    expect(before.get('hookbot_subscribers{transport="ws"}')).toBe(2);

    for (const body of ['hello', 'world!']) expect((await publish(server, '/pub/m/deliver', body)).status).toBe(200);
    for (const inbox of inboxes) await inbox.waitFor(2);

    const after = await scrape(server);
    const delta = (k: string) => (after.get(k) ?? NaN) - (before.get(k) ?? 0);
    expect(delta('hookbot_publishes_total{result="accepted"}')).toBe(2);
    expect(delta('hookbot_publish_bytes_total')).toBe(11);
    expect(delta('hookbot_publish_fanout_seconds_count')).toBe(2);
    expect(delta('hookbot_publish_fanout_seconds_bucket{le="+Inf"}')).toBe(2);
    expect(delta('hookbot_deliveries_total')).toBe(4);
    // Body bytes × recipients: (5 + 6) × 2.
    expect(delta('hookbot_delivery_bytes_total')).toBe(22);
    expect(after.get('hookbot_subscriptions')).toBeGreaterThanOrEqual(2);

    a.close();
    b.close();
    await eventually(async () => (await scrape(server)).get('hookbot_subscribers{transport="ws"}') === 0, 5000, 'subscribers gauge back to 0');
  });

  it('counts rejections by reason: 401, 413, 400', async () => {
    const before = await scrape(server);
    const noToken = await fetch(server.url + '/pub/m/x', { method: 'POST', body: 'x' });
    expect(noToken.status).toBe(401);
    const wrong = await fetch(server.url + '/pub/m/x', { method: 'POST', body: 'x', headers: bearer('/pub/other') });
    expect(wrong.status).toBe(401);
    const big = await publish(server, '/pub/m/x', Buffer.alloc(2048, 1));
    expect(big.status).toBe(413);
    const meta = await publish(server, '/pub/m/x?extra-metadata=nope', 'x');
    expect(meta.status).toBe(400);
    const after = await scrape(server);
    const delta = (reason: string) => after.get(`hookbot_publishes_total{result="rejected",reason="${reason}"}`)! - before.get(`hookbot_publishes_total{result="rejected",reason="${reason}"}`)!;
    expect(delta('unauthorized')).toBe(2);
    expect(delta('too_large')).toBe(1);
    expect(delta('bad_request')).toBe(1);
    expect(after.get('hookbot_publishes_total{result="accepted"}')).toBe(before.get('hookbot_publishes_total{result="accepted"}'));
    expect(after.get('hookbot_publish_bytes_total')).toBe(before.get('hookbot_publish_bytes_total'));
  });

  it('reports history size without naming any topic, and never an unsafe topic name or a token', async () => {
    const before = await scrape(server);
    const unsafe = await fetch(server.url + '/unsafe/pub/very-private-channel-name', { method: 'POST', body: 'abc' });
    expect(unsafe.status).toBe(200);
    expect((await publish(server, '/pub/another-topic-name', 'defg')).status).toBe(200);
    const res = await fetch(server.url + '/metrics');
    const text = await res.text();
    expect(text).not.toContain('very-private-channel-name');
    expect(text).not.toContain('another-topic-name');
    expect(text).not.toContain(token('/pub/another-topic-name'));
    const after = await scrape(server);
    expect(after.get('hookbot_history_messages')! - before.get('hookbot_history_messages')!).toBe(2);
    // The default store counts what it keeps: topic, kept headers and body.
    const kept = [...(await server.broker.history('/unsafe/very-private-channel-name')).messages, ...(await server.broker.history('another-topic-name')).messages];
    expect(kept.map((m) => m.body.toString())).toEqual(['abc', 'defg']);
    expect(after.get('hookbot_history_bytes')! - before.get('hookbot_history_bytes')!).toBe(kept.reduce((n, m) => n + storedSize(m.topic, m.headers, m.body), 0));
    expect(after.get('hookbot_history_topics')! - before.get('hookbot_history_topics')!).toBe(2);
  });

  it('counts slow-consumer disconnects and drops', async () => {
    const own = await startTestServer({ maxSubscriberBuffer: '64KiB' });
    try {
      const slowWs = await subscribe(own, '/sub/slow');
      const slow = new Inbox(slowWs);
      (slowWs as unknown as { _socket: { pause(): void } })._socket.pause();
      const before = await scrape(own);
      expect(before.get('hookbot_slow_consumer_disconnects_total')).toBe(0);
      const body = Buffer.alloc(60 * 1024, 0x61);
      for (let i = 0; i < 200 && own.broker.stats.slowDisconnects === 0; i++) {
        const res = await publish(own, '/pub/slow', body);
        await res.arrayBuffer();
        expect(res.status).toBe(200);
      }
      await eventually(() => own.broker.stats.slowDisconnects === 1, 5000, 'slow disconnect');
      const after = await scrape(own);
      expect(after.get('hookbot_slow_consumer_disconnects_total')).toBe(1);
      expect(after.get('hookbot_drops_total')).toBeGreaterThanOrEqual(1);
      (slowWs as unknown as { _socket: { resume(): void } })._socket.resume();
      expect((await slow.waitClose(5000)).code).not.toBe(1000);
      await eventually(async () => (await scrape(own)).get('hookbot_subscribers{transport="ws"}') === 0, 5000, 'gauge back to 0');
    } finally {
      await own.close();
    }
  }, 30_000);

  it('counts router verifications through metrics.routerVerification', async () => {
    server.metrics.routerVerification('github', 'ok');
    server.metrics.routerVerification('github', 'ok');
    server.metrics.routerVerification('github', 'failed');
    const m = await scrape(server);
    expect(m.get('hookbot_router_verifications_total{router="github",result="ok"}')).toBe(2);
    expect(m.get('hookbot_router_verifications_total{router="github",result="failed"}')).toBe(1);
  });

  it('with --metrics-token, answers 401 without the bearer token and the metrics with it', async () => {
    const own = await startTestServer({ metricsToken: 'scrape-me-please' });
    try {
      const none = await fetch(own.url + '/metrics');
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      const body = await none.text();
      expect(body).toContain('401');
      expect(body).not.toContain('scrape-me-please');
      for (const authorization of ['Bearer wrong', 'Bearer scrape-me-pleas', `Basic ${Buffer.from('scrape-me-please:').toString('base64')}`, `Bearer ${token('/')}`]) {
        expect((await fetch(own.url + '/metrics', { headers: { authorization } })).status, authorization).toBe(401);
      }
      const m = await scrape(own, { authorization: 'Bearer scrape-me-please' });
      expect(m.has('hookbot_publishes_total{result="accepted"}')).toBe(true);
      // The token is never echoed into the metrics themselves.
      const text = await (await fetch(own.url + '/metrics', { headers: { authorization: 'Bearer scrape-me-please' } })).text();
      expect(text).not.toContain('scrape-me-please');
    } finally {
      await own.close();
    }
  });

  it('reads --metrics-token from HOOKBOT_METRICS_TOKEN', () => {
    const config = resolveServeConfig({ key: 'k' }, { HOOKBOT_METRICS_TOKEN: 'from-env' });
    expect(config.metricsToken).toBe('from-env');
    expect(resolveServeConfig({ key: 'k', metricsToken: 'flag' }, { HOOKBOT_METRICS_TOKEN: 'from-env' }).metricsToken).toBe('flag');
    expect(resolveServeConfig({ key: 'k' }, {}).metricsToken).toBeUndefined();
  });
});

/** A memory backend whose readiness the test controls, as a Redis backend's would change. */
class SwitchableBackend extends MemoryBackend {
  up = true;
  override ready(): boolean {
    return this.up;
  }
}

describe('/healthz and /readyz', () => {
  it('/healthz is 200 OK with no token', async () => {
    const res = await fetch(server.url + '/healthz');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('OK\n');
  });

  it('/readyz is 200 when listening and the backend is ready', async () => {
    const res = await fetch(server.url + '/readyz');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('OK\n');
  });

  it('/readyz follows backend readiness; /healthz stays 200', async () => {
    const backend = new SwitchableBackend(DEFAULT_RETENTION);
    const config = resolveServeConfig({ bind: '127.0.0.1:0', key: 'k' }, {});
    const own = await startServer(config, createLogger('silent'), backend);
    try {
      expect((await fetch(own.url + '/readyz')).status).toBe(200);
      backend.up = false;
      const down = await fetch(own.url + '/readyz');
      expect(down.status).toBe(503);
      expect(down.headers.get('retry-after')).toBe('1');
      expect(await down.text()).toBe('503 Service Unavailable: backend memory not ready\n');
      expect((await fetch(own.url + '/healthz')).status).toBe(200);
      backend.up = true;
      expect((await fetch(own.url + '/readyz')).status).toBe(200);
    } finally {
      await own.close();
    }
  });

  it('/readyz is 503 once shutdown has begun', async () => {
    const own = await startTestServer();
    const { connect } = await import('node:net');
    const socket = connect(own.port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    let received = '';
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    const ended = new Promise((resolve) => socket.once('close', resolve));
    try {
      // A publish still being uploaded keeps this connection busy, so shutdown waits for it.
      const t = token('/pub/drain');
      socket.write(`POST /pub/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t}\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n`);
      // Node answers 100 Continue as it hands the request to the handler: the publish is under way.
      await eventually(() => received.includes('100 Continue'), 5000, '100 Continue');
      received = '';
      socket.write('ab');
      const closing = own.close();
      // Finish the publish and ask, on the same connection, whether the server is ready.
      socket.write('cd' + 'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n');
      await eventually(() => received.includes('shutting down\n'), 5000, 'the /readyz answer');
      socket.end();
      await ended;
      await closing;
      const responses = received.split(/(?=HTTP\/1\.1 )/);
      expect(responses[0]).toMatch(/^HTTP\/1\.1 200 /);
      expect(responses[1]).toMatch(/^HTTP\/1\.1 503 /);
      expect(responses[1]).toContain('503 Service Unavailable: shutting down\n');
    } finally {
      socket.destroy();
      await own.close();
    }
  });
});

describe('key rotation', () => {
  const CURRENT = 'current-key';
  const PREVIOUS = 'previous-key';
  let rotated: HookbotServer;

  beforeAll(async () => {
    const config = resolveServeConfig({ bind: '127.0.0.1:0', key: CURRENT, memory: true }, { HOOKBOT_PREVIOUS_KEYS: `${PREVIOUS}, older-key` });
    expect(config.keys).toEqual([CURRENT, PREVIOUS, 'older-key']);
    rotated = await startServer(config, createLogger('silent'));
  });
  afterAll(async () => {
    await rotated.close();
  });

  it('accepts tokens of the current and of every previous key for publishing and subscribing', async () => {
    for (const key of [CURRENT, PREVIOUS, 'older-key']) {
      const ws = await wsConnect(wsUrl(rotated, '/sub/rot'), { headers: { authorization: `Bearer ${makeToken(key, '/sub/rot')}` } });
      const inbox = new Inbox(ws);
      const res = await fetch(rotated.url + '/pub/rot', { method: 'POST', body: `with ${key}`, headers: { authorization: `Bearer ${makeToken(key, '/pub/rot')}` } });
      expect(res.status, key).toBe(200);
      expect((await inbox.waitFor(1))[0].data.toString()).toBe(`with ${key}`);
      ws.close();
    }
  });

  it('refuses a token of a key that is neither current nor previous', async () => {
    const res = await fetch(rotated.url + '/pub/rot', { method: 'POST', body: 'x', headers: { authorization: `Bearer ${makeToken('retired-key', '/pub/rot')}` } });
    expect(res.status).toBe(401);
    const err = await wsConnect(wsUrl(rotated, '/sub/rot'), { headers: { authorization: `Bearer ${makeToken('retired-key', '/sub/rot')}` } }).catch((e) => e);
    expect(err.status).toBe(401);
  });

  it('accepts a previous key’s inspector token too', async () => {
    const res = await fetch(rotated.url + '/_/api/topics', { headers: { authorization: `Bearer ${makeToken(PREVIOUS, '/_/')}` } });
    expect(res.status).toBe(200);
  });

  describe('make-tokens', () => {
    const saved = { key: process.env.HOOKBOT_KEY, previous: process.env.HOOKBOT_PREVIOUS_KEYS, base: process.env.HOOKBOT_URL_BASE };
    afterEach(() => {
      vi.restoreAllMocks();
      for (const [name, value] of [['HOOKBOT_KEY', saved.key], ['HOOKBOT_PREVIOUS_KEYS', saved.previous], ['HOOKBOT_URL_BASE', saved.base]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });

    it('always prints tokens of the current key, however many previous keys are set', async () => {
      process.env.HOOKBOT_KEY = CURRENT;
      process.env.HOOKBOT_PREVIOUS_KEYS = PREVIOUS;
      delete process.env.HOOKBOT_URL_BASE;
      let out = '';
      vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
        out += chunk.toString();
        return true;
      });
      await buildProgram().parseAsync(['node', 'hookbot', 'make-tokens', '--bare', '/pub/rot', '/_/']);
      await buildProgram().parseAsync(['node', 'hookbot', 'make-tokens', '/sub/rot']);
      expect(out).toBe(`${makeToken(CURRENT, '/pub/rot')}\n${makeToken(CURRENT, '/_/')}\nws://${makeToken(CURRENT, '/sub/rot')}@localhost:8080/sub/rot\n`);
      expect(out).not.toContain(makeToken(PREVIOUS, '/pub/rot'));
    });
  });
});
