/**
 * The admission pipeline's order, for WebSocket and SSE alike:
 * shutdown → path → unsafe header → token → since → limits
 * (for a smee channel, the capability check in the token's place).
 *
 * Each case is a request that fails its own check *and every later one it
 * can*, so it proves which check runs first. The unit cases drive admit()
 * directly; the end-to-end cases show a real server refusing the same request
 * the same way on both transports.
 */
import type { IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChannelIds } from '../src/protocol/channels.js';
import { HttpError, Status } from '../src/protocol/errors.js';
import { UNSAFE_HEADER, UNSAFE_HEADER_ERROR, UNSAFE_HEADER_VALUE } from '../src/protocol/topics.js';
import { TokenVerifier } from '../src/protocol/tokens.js';
import { admit, SINCE_QUERY, type SinceSource } from '../src/server/admission.js';
import type { Context } from '../src/server/context.js';
import { errorBody } from '../src/server/http/respond.js';
import { Limits } from '../src/server/ops/limits.js';
import type { HookbotServer } from '../src/server/server.js';
import { SSE_SINCE } from '../src/server/transports/sse.js';
import { bearer, KEY, startTestServer, token, wsConnect, wsUrl } from './helpers.js';

const TRANSPORTS: Array<{ name: 'ws' | 'sse'; since: readonly SinceSource[]; badSince: (url: string) => { url: string; headers: Record<string, string> } }> = [
  { name: 'ws', since: [SINCE_QUERY], badSince: (url) => ({ url: `${url}?since=yesterday`, headers: {} }) },
  { name: 'sse', since: SSE_SINCE, badSince: (url) => ({ url, headers: { 'last-event-id': 'yesterday' } }) },
];

function fakeContext(options: { shuttingDown?: boolean; full?: boolean } = {}) {
  const refused: string[] = [];
  const limits = new Limits({ rateLimit: 0, rateLimitBurst: 0, maxSubscribersPerIp: 0, maxSubscriptions: 1, maxConnectionsPerIp: 0, maxBodyInFlight: 0, trustProxy: 0, limitExempt: [] });
  // A full server: its one subscription is taken.
  if (options.full) limits.admitSubscriber(fakeRequest('/sub/x'));
  const ctx = {
    tokens: new TokenVerifier([KEY]),
    limits,
    metrics: { subscriberRefused: (transport: string, reason: string) => refused.push(`${transport}:${reason}`) },
    shuttingDown: options.shuttingDown ?? false,
  } as unknown as Context;
  return { ctx, refused };
}

function fakeRequest(url: string, headers: Record<string, string> = {}): IncomingMessage {
  return { url, headers, socket: { remoteAddress: '192.0.2.1' } } as unknown as IncomingMessage;
}

function refusal(fn: () => unknown): HttpError {
  try {
    fn();
  } catch (err) {
    if (err instanceof HttpError) return err;
    throw err;
  }
  throw new Error('admitted');
}

describe.each(TRANSPORTS)('admission order ($name)', ({ name, since, badSince }) => {
  const unsafeOk = { [UNSAFE_HEADER]: UNSAFE_HEADER_VALUE };
  const goodToken = { authorization: `Bearer ${token('/unsafe/sub/x')}` };
  const wrongToken = { authorization: `Bearer ${token('/unsafe/sub/x', 'other-key')}` };

  it('1. shutdown comes before everything', () => {
    const { ctx, refused } = fakeContext({ shuttingDown: true, full: true });
    const err = refusal(() => admit(ctx, fakeRequest('/unsafe/sub/%zz?since=yesterday'), name, since));
    expect(err.status).toBe(Status.SERVICE_UNAVAILABLE);
    expect(err.message).toBe('server is shutting down');
    expect(refused).toEqual([]);
  });

  it('2. the path comes before the unsafe header, the token, since and the limits', () => {
    const { ctx, refused } = fakeContext({ full: true });
    const bad = refusal(() => admit(ctx, fakeRequest('/unsafe/sub/%zz?since=yesterday'), name, since));
    expect([bad.status, bad.message]).toEqual([Status.BAD_REQUEST, 'malformed percent-encoding in path']);
    const pub = refusal(() => admit(ctx, fakeRequest('/pub/x?since=yesterday'), name, since));
    expect([pub.status, pub.message]).toEqual([Status.BAD_REQUEST, 'publish with POST; subscribe at /sub/<topic>']);
    expect(refused).toEqual([]);
  });

  it('3. the unsafe header comes before the token, since and the limits', () => {
    const { ctx, refused } = fakeContext({ full: true });
    const r = badSince('/unsafe/sub/x');
    const err = refusal(() => admit(ctx, fakeRequest(r.url, { ...r.headers, ...wrongToken }), name, since));
    expect(err.status).toBe(Status.BAD_REQUEST);
    expect(errorBody(err)).toBe(UNSAFE_HEADER_ERROR + '\n');
    expect(refused).toEqual([]);
  });

  it('4. the token comes before since and the limits', () => {
    const { ctx, refused } = fakeContext({ full: true });
    const r = badSince('/unsafe/sub/x');
    const err = refusal(() => admit(ctx, fakeRequest(r.url, { ...r.headers, ...unsafeOk, ...wrongToken }), name, since));
    expect(err.status).toBe(Status.UNAUTHORIZED);
    expect(err.headers['www-authenticate']).toBe('Basic realm="hookbot"');
    expect(refused).toEqual([]);
  });

  it('5. since comes before the limits', () => {
    const { ctx, refused } = fakeContext({ full: true });
    const r = badSince('/unsafe/sub/x');
    const err = refusal(() => admit(ctx, fakeRequest(r.url, { ...r.headers, ...unsafeOk, ...goodToken }), name, since));
    expect(err.status).toBe(Status.BAD_REQUEST);
    expect(err.message).toMatch(/must be a message id such as 1700000000000-0/);
    expect(refused).toEqual([]);
  });

  it('6. the limits come last, and are counted', () => {
    const { ctx, refused } = fakeContext({ full: true });
    const err = refusal(() => admit(ctx, fakeRequest('/unsafe/sub/x', { ...unsafeOk, ...goodToken }), name, since));
    expect(err.status).toBe(Status.SERVICE_UNAVAILABLE);
    expect(err.headers['retry-after']).toBeDefined();
    expect(refused).toEqual([`${name}:server_limit`]);
  });

  it('admits a request that passes every check, with its resume point and a slot', () => {
    const { ctx } = fakeContext();
    const id = '1700000000000-5';
    const sinceParts: { url: string; headers: Record<string, string> } =
      name === 'ws' ? { url: `/unsafe/sub/x?since=${id}`, headers: {} } : { url: '/unsafe/sub/x', headers: { 'last-event-id': id } };
    const admitted = admit(ctx, fakeRequest(sinceParts.url, { ...sinceParts.headers, ...unsafeOk, ...goodToken }), name, since);
    expect(admitted.endpoint.topic).toBe('/unsafe/x');
    expect(admitted.since).toBe(id);
    expect(ctx.limits.subscriptions).toBe(1);
    admitted.slot.release();
    expect(ctx.limits.subscriptions).toBe(0);
  });
});

describe('SSE resume sources', () => {
  it('prefer the Last-Event-ID header, then ?last-event-id=, then ?since=', () => {
    const { ctx } = fakeContext();
    const auth = bearer('/sub/x');
    const sinceOf = (url: string, headers: Record<string, string>) => {
      const admitted = admit(ctx, fakeRequest(url, { ...auth, ...headers }), 'sse', SSE_SINCE);
      admitted.slot.release();
      return admitted.since;
    };
    expect(sinceOf('/sub/x?last-event-id=2-0&since=3-0', { 'last-event-id': '1-0' })).toBe('1-0');
    expect(sinceOf('/sub/x?last-event-id=2-0&since=3-0', {})).toBe('2-0');
    expect(sinceOf('/sub/x?since=0', {})).toBe('0-0');
  });
});

describe('a real server refuses the same request the same way on both transports', () => {
  let server: HookbotServer;
  beforeAll(async () => {
    server = await startTestServer({ maxSubscriptions: '1' });
  });
  afterAll(async () => {
    await server.close();
  });

  async function viaWs(path: string, headers: Record<string, string>): Promise<[number, string]> {
    const err = (await wsConnect(wsUrl(server, path), { headers }).then(
      (ws) => {
        ws.close();
        throw new Error('admitted');
      },
      (e: unknown) => e,
    )) as { status: number; body: string };
    return [err.status, err.body];
  }

  async function viaSse(path: string, headers: Record<string, string>): Promise<[number, string]> {
    const res = await fetch(server.url + path, { headers: { accept: 'text/event-stream', ...headers } });
    return [res.status, await res.text()];
  }

  const cases: Array<[string, string, Record<string, string>, number]> = [
    ['bad path', '/unsafe/sub/%zz?since=nope', {}, 400],
    ['no unsafe header', '/unsafe/sub/x?since=nope', { authorization: 'Bearer 0000000000000000000000000000000000000000' }, 400],
    ['wrong token', '/unsafe/sub/x?since=nope', { [UNSAFE_HEADER]: UNSAFE_HEADER_VALUE, authorization: 'Bearer 0000000000000000000000000000000000000000' }, 401],
    ['bad since', '/unsafe/sub/x?since=nope', { [UNSAFE_HEADER]: UNSAFE_HEADER_VALUE, ...bearer('/unsafe/sub/x') }, 400],
  ];
  it.each(cases)('%s', async (_what, path, headers, status) => {
    const ws = await viaWs(path, headers);
    const sse = await viaSse(path, headers);
    expect(ws[0]).toBe(status);
    // SSE names its query source `?since=`; WebSocket's only source is `since`.
    expect(sse).toEqual([ws[0], ws[1].replace(/^400 Bad Request: since /, '400 Bad Request: ?since= ')]);
  });

  it('limits', async () => {
    const held = await wsConnect(wsUrl(server, '/sub/held'), { headers: bearer('/sub/held') });
    try {
      const ws = await viaWs('/sub/x', bearer('/sub/x'));
      const sse = await viaSse('/sub/x', bearer('/sub/x'));
      expect(ws[0]).toBe(503);
      expect(sse).toEqual(ws);
    } finally {
      held.close();
    }
  });
});

describe.each(TRANSPORTS)('admission of a smee channel ($name): the capability stands where the token is', ({ name, since, badSince }) => {
  const ids = new ChannelIds([KEY]);
  const minted = ids.mint();
  const unminted = new ChannelIds(['another-server']).mint();
  const master = { authorization: `Bearer ${token('/')}` };

  function channelContext(options: { shuttingDown?: boolean; full?: boolean } = {}) {
    const { ctx, refused } = fakeContext(options);
    return { ctx: { ...ctx, channels: ids } as Context, refused };
  }

  it('shutdown, then the path, come first', () => {
    const down = channelContext({ shuttingDown: true, full: true });
    expect(refusal(() => admit(down.ctx, fakeRequest(`/${unminted}?since=yesterday`), name, since)).status).toBe(Status.SERVICE_UNAVAILABLE);
    const { ctx, refused } = channelContext({ full: true });
    expect(refusal(() => admit(ctx, fakeRequest(`/%zz${unminted}?since=yesterday`), name, since)).message).toBe('malformed percent-encoding in path');
    expect(refused).toEqual([]);
  });

  it('an id this server did not mint is 404 before since and the limits, whatever token comes with it', () => {
    const { ctx, refused } = channelContext({ full: true });
    for (const path of [`/${unminted}`, `/events/${unminted}`]) {
      const r = badSince(path);
      const err = refusal(() => admit(ctx, fakeRequest(r.url, { ...r.headers, ...master }), name, since));
      expect([err.status, errorBody(err)]).toEqual([Status.NOT_FOUND, '404 Not Found: no such channel\n']);
    }
    expect(refused).toEqual([]);
  });

  it('a minted id needs no token; since comes before the limits, which come last', () => {
    const { ctx, refused } = channelContext({ full: true });
    const r = badSince(`/${minted}`);
    expect(refusal(() => admit(ctx, fakeRequest(r.url, r.headers), name, since)).message).toMatch(/must be a message id/);
    expect(refused).toEqual([]);
    expect(refusal(() => admit(ctx, fakeRequest(`/${minted}`), name, since)).status).toBe(Status.SERVICE_UNAVAILABLE);
    expect(refused).toEqual([`${name}:server_limit`]);
  });

  it('admits /<id> and /events/<id> on the topic smee/<id>, resuming as its transport does', () => {
    const { ctx } = channelContext();
    for (const path of [`/${minted}`, `/events/${minted}`]) {
      const id = '1700000000000-5';
      const req = name === 'ws' ? fakeRequest(`${path}?since=${id}`) : fakeRequest(path, { 'last-event-id': id });
      const admitted = admit(ctx, req, name, since);
      expect([admitted.endpoint.topic, admitted.endpoint.channel, admitted.since]).toEqual([`smee/${minted}`, minted, id]);
      admitted.slot.release();
    }
  });

  it('without --smee the same path is a topic like any other, and needs its token', () => {
    const { ctx } = fakeContext();
    expect(refusal(() => admit(ctx, fakeRequest(`/${minted}`), name, since)).status).toBe(Status.UNAUTHORIZED);
    const admitted = admit(ctx, fakeRequest(`/${minted}`, bearer(`/${minted}`)), name, since);
    expect([admitted.endpoint.topic, admitted.endpoint.channel]).toEqual([minted, undefined]);
    admitted.slot.release();
  });
});
