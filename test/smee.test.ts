/**
 * smee channels (serve --smee) against the real server on a real port:
 * minting with /new, the capability model (minted ids only, no token),
 * publishing any bytes, the smee-client stream byte for byte with resume,
 * WebSocket subscriptions on the channel URL, and what the rest of hookbot
 * (token subscribers, the inspector, key rotation) sees of a channel.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChannelIds } from '../src/protocol/channels.js';
import { SUBPROTOCOL } from '../src/protocol/message.js';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, Inbox, KEY, SseStream, startTestServer, subscribe, token, wsConnect, wsUrl } from './helpers.js';

let server: HookbotServer;
const open: SseStream[] = [];

beforeAll(async () => {
  server = await startTestServer({ smee: true, history: '5', maxBody: '64KiB' });
});
afterAll(async () => {
  for (const s of open) s.close();
  await server.close();
});

/** A fresh channel through GET /new; returns its URL and id. */
async function mint(srv = server): Promise<{ url: string; id: string }> {
  const res = await fetch(srv.url + '/new', { redirect: 'manual' });
  expect(res.status).toBe(307);
  const url = res.headers.get('location')!;
  return { url, id: url.slice(url.lastIndexOf('/') + 1) };
}

async function stream(url: string, headers: Record<string, string> = {}, ready = 'event: ready\ndata: {}\n\n'): Promise<SseStream> {
  const abort = new AbortController();
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal });
  if (res.status !== 200) throw Object.assign(new Error(`HTTP ${res.status}: ${await res.text()}`), { status: res.status });
  expect(res.headers.get('content-type')).toBe('text/event-stream');
  const s = new SseStream(res, abort);
  open.push(s);
  await s.until(() => s.raw.includes(ready), 'ready');
  return s;
}

async function post(url: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, { method: 'POST', body: typeof body === 'string' ? body : new Uint8Array(body), headers });
}

/** A request with exactly these headers (node adds only Host, Connection and the length; fetch adds its own), answered in full. */
function rawRequest(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('minting: GET and HEAD /new', () => {
  it('answer 307 to a fresh absolute channel URL on this server, never the same twice', async () => {
    const a = await mint();
    const b = await mint();
    expect(a.url).toBe(`${server.url}/${a.id}`);
    expect(a.id).toMatch(/^[a-z2-7]{40}$/);
    expect(b.id).not.toBe(a.id);
    const head = await fetch(server.url + '/new', { method: 'HEAD', redirect: 'manual' });
    expect(head.status).toBe(307);
    expect(head.headers.get('location')).toMatch(new RegExp(`^${server.url}/[a-z2-7]{40}$`));
    expect(head.headers.get('cache-control')).toBe('no-store');
    const bad = await fetch(server.url + '/new', { method: 'POST', body: 'x' });
    expect([bad.status, bad.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
  });

  it('take scheme and host from the Host header, from X-Forwarded-* only behind --trust-proxy, and from --public-url above all', async () => {
    const proxied = { host: 'inside:8080', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'relay.example.com' };
    const plain = await rawRequest(server.url + '/new', 'GET', proxied);
    expect(plain.headers.location).toMatch(/^http:\/\/inside:8080\/[a-z2-7]{40}$/);
    const badHost = await rawRequest(server.url + '/new', 'GET', { host: 'a b' });
    expect([badHost.status, badHost.body]).toEqual([400, "400 Bad Request: cannot tell this server's address from the Host header; the operator can set --public-url\n"]);

    const behindProxy = await startTestServer({ smee: true, trustProxy: true });
    const withPublicUrl = await startTestServer({ smee: true, trustProxy: true, publicUrl: 'https://hooks.example.com/relay' });
    try {
      const trusted = await rawRequest(behindProxy.url + '/new', 'GET', proxied);
      expect(trusted.headers.location).toMatch(/^https:\/\/relay\.example\.com\/[a-z2-7]{40}$/);
      // Two proxies appended; with one trusted hop, the nearest one's entry counts.
      const chained = await rawRequest(behindProxy.url + '/new', 'GET', { ...proxied, 'x-forwarded-host': 'evil.example, relay.example.com' });
      expect(chained.headers.location).toMatch(/^https:\/\/relay\.example\.com\//);
      const configured = await rawRequest(withPublicUrl.url + '/new', 'GET', proxied);
      const location = String(configured.headers.location);
      expect(location).toMatch(/^https:\/\/hooks\.example\.com\/relay\/[a-z2-7]{40}$/);
      // The id verifies on the server that minted it, reached directly.
      const id = location.slice(location.lastIndexOf('/') + 1);
      expect((await post(`${withPublicUrl.url}/${id}`, 'x')).status).toBe(200);
    } finally {
      await behindProxy.close();
      await withPublicUrl.close();
    }
  });
});

describe('ids this server did not mint', () => {
  const unminted = new ChannelIds(['not-this-server']).mint();

  it('are 404 for publishing, every subscription form and the page, token or not', async () => {
    const url = `${server.url}/${unminted}`;
    const master = bearer('/');
    expect((await post(url, '{}', master)).status).toBe(404);
    expect(await (await post(url, '{}')).text()).toBe('404 Not Found: no such channel\n');
    for (const [path, headers] of [
      [`/${unminted}`, { accept: 'text/event-stream' }],
      [`/${unminted}?stream=${unminted}`, { accept: 'text/event-stream', 'user-agent': 'gosmee/0.22.1' }],
      [`/events/${unminted}`, { accept: 'text/event-stream' }],
      [`/${unminted}`, { accept: 'text/html' }],
      [`/${unminted}`, master],
    ] as Array<[string, Record<string, string>]>) {
      const res = await fetch(server.url + path, { headers });
      expect([res.status, await res.text()], path).toEqual([404, '404 Not Found: no such channel\n']);
    }
    expect((await fetch(url, { method: 'PUT' })).status).toBe(404);
    const ws = (await wsConnect(wsUrl(server, `/${unminted}`), { protocol: SUBPROTOCOL }).catch((e: unknown) => e)) as { status: number };
    expect(ws.status).toBe(404);
    const redeliver = await fetch(server.url + '/_/smee/redeliver', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel: unminted, id: '1-0' }) });
    expect(redeliver.status).toBe(404);
  });

  it('are not channels on a server without --smee: the path is a topic that needs its token', async () => {
    const plain = await startTestServer();
    try {
      const { id } = await mint();
      expect((await post(`${plain.url}/${id}`, 'x')).status).toBe(401);
      expect((await post(`${plain.url}/${id}`, 'x', bearer(`/${id}`))).status).toBe(200);
      expect((await fetch(plain.url + '/new', { redirect: 'manual' })).status).toBe(400);
    } finally {
      await plain.close();
    }
  });
});

describe('publishing to a channel', () => {
  it('takes any content type and any bytes, answers 200 with an empty body, and keeps every end-to-end header and the query', async () => {
    const { url, id } = await mint();
    const v1 = new Inbox(await subscribe(server, `/sub/smee/${id}`, { protocol: SUBPROTOCOL }));
    await v1.waitFor(1); // live
    const binary = Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0x80]);
    const res = await post(`${url}?foo=bar&extra-metadata=github`, binary, {
      'content-type': 'application/octet-stream',
      'stripe-signature': 't=1,v1=abc',
      authorization: 'Basic dXNlcjpwYXNz',
      cookie: 'session=1',
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('');
    const messageId = res.headers.get('x-hookbot-message-id');
    expect(messageId).toMatch(/^\d+-\d+$/);
    const [, frame] = await v1.waitFor(2);
    const m = JSON.parse(frame.data.toString());
    expect(m).toMatchObject({ type: 'message', id: messageId, topic: `smee/${id}`, encoding: 'base64', body: binary.toString('base64') });
    expect(m.headers).toMatchObject({ 'content-type': 'application/octet-stream', 'stripe-signature': 't=1,v1=abc', 'x-hookbot-query': 'foo=bar&extra-metadata=github' });
    for (const dropped of ['host', 'connection', 'content-length', 'authorization', 'cookie']) expect(m.headers, dropped).not.toHaveProperty(dropped);
  });

  it('is bounded by --max-body, and still rate limited and idempotent as any publish', async () => {
    const { url } = await mint();
    expect((await post(url, Buffer.alloc(64 * 1024 + 1))).status).toBe(413);
    const first = await post(url, 'once', { 'idempotency-key': 'k1' });
    const again = await post(url, 'once', { 'idempotency-key': 'k1' });
    expect(again.headers.get('x-hookbot-message-id')).toBe(first.headers.get('x-hookbot-message-id'));
  });
});

describe('the smee-client stream: GET <channel> with Accept: text/event-stream', () => {
  it('is retry, event: ready with the start id, then each message as an unnamed event, byte for byte', async () => {
    const { url, id } = await mint();
    const s = await stream(url);
    const body = '{"action":"opened","number":1}';
    const res = await rawRequest(`${url}?foo=bar`, 'POST', { 'content-type': 'application/json', 'x-github-event': 'pull_request', 'user-agent': 'GitHub-Hookshot/abc123' }, body);
    expect([res.status, res.body]).toEqual([200, '']);
    const messageId = String(res.headers['x-hookbot-message-id']);
    const time = Number(messageId.split('-')[0]);
    await s.waitFor(2);
    const start = /^retry: 2000\n\nid: (\d+)-0\nevent: ready\ndata: \{\}\n\n/.exec(s.raw)!;
    expect(Number(start[1])).toBeLessThanOrEqual(time);
    expect(s.raw.slice(start[0].length)).toBe(
      `id: ${messageId}\ndata: {"content-type":"application/json","x-github-event":"pull_request","user-agent":"GitHub-Hookshot/abc123",` +
        `"content-length":"${body.length}","body":${body},"query":{"foo":"bar"},"timestamp":${time}}\n\n`,
    );
    expect(id).toHaveLength(40);
  });

  it('replays what a client missed after its Last-Event-ID (or ?since=0: everything kept), then goes live', async () => {
    const { url } = await mint();
    const ids: string[] = [];
    for (const n of [1, 2, 3]) ids.push((await post(url, `{"n":${n}}`)).headers.get('x-hookbot-message-id')!);
    const resumed = await stream(url, { 'last-event-id': ids[0] });
    await resumed.waitFor(3);
    // A resumed stream's ready has no id: the client's own id is the resume point.
    expect(resumed.raw.startsWith('retry: 2000\n\nevent: ready\ndata: {}\n\n')).toBe(true);
    expect(resumed.events.slice(1).map((e) => [e.id, JSON.parse(e.data).body.n])).toEqual([[ids[1], 2], [ids[2], 3]]);
    const all = await stream(`${url}?since=0`);
    await all.waitFor(4);
    expect(all.events.slice(1).map((e) => e.id)).toEqual(ids);
    const live = (await post(url, '{"n":4}')).headers.get('x-hookbot-message-id');
    await resumed.waitFor(4);
    expect(resumed.events[3].id).toBe(live);
  });

  it('announces a gap beyond history as a named event (smee-client ignores it), and refuses a malformed Last-Event-ID', async () => {
    const { url } = await mint();
    const first = (await post(url, '1')).headers.get('x-hookbot-message-id')!;
    for (let n = 2; n <= 7; n++) await post(url, String(n));
    const s = await stream(url, { 'last-event-id': first });
    await s.waitFor(7);
    expect(s.events[1]).toEqual({ event: 'gap', data: JSON.stringify({ since: first }) });
    expect(s.events.slice(2).map((e) => JSON.parse(e.data).body)).toEqual([3, 4, 5, 6, 7]);
    const bad = await fetch(url, { headers: { accept: 'text/event-stream', 'last-event-id': '3' } });
    expect(bad.status).toBe(400);
  });
});

describe('the channel URL for hookbot clients and token holders', () => {
  it('takes WebSocket subscriptions without a token (hookbot.v1 and raw), resuming with ?since=', async () => {
    const { url, id } = await mint();
    const before = (await post(url, 'before')).headers.get('x-hookbot-message-id')!;
    const v1 = new Inbox(await wsConnect(wsUrl(server, `/${id}?since=0`), { protocol: SUBPROTOCOL }));
    const raw = new Inbox(await wsConnect(wsUrl(server, `/${id}`)));
    await v1.waitFor(2);
    expect(JSON.parse(v1.messages[0].data.toString())).toMatchObject({ type: 'message', id: before, topic: `smee/${id}`, body: 'before' });
    expect(JSON.parse(v1.messages[1].data.toString())).toEqual({ type: 'live' });
    await post(url, 'after');
    await raw.waitFor(1);
    expect(raw.messages[0].data.toString()).toBe('after');
  });

  it('is the topic smee/<id> for tokens and the inspector: history, retention and metrics apply', async () => {
    const { url, id } = await mint();
    await post(url, 'seen by the inspector');
    const res = await fetch(`${server.url}/_/api/messages?topic=smee/${id}`, { headers: bearer('/_/') });
    const view = (await res.json()) as { messages: Array<{ body: string }> };
    expect(view.messages.map((m) => m.body)).toEqual(['seen by the inspector']);
    const sse = await stream(`${server.url}/sub/smee/${id}?since=0`, bearer(`/sub/smee/${id}`), 'retry: 2000\n\n');
    await sse.waitFor(1);
    expect(sse.events[0]).toMatchObject({ event: `smee/${id}`, data: 'seen by the inspector' });
    expect(token(`/sub/smee/${id}`)).toHaveLength(40);
    const metrics = await (await fetch(server.url + '/metrics')).text();
    expect(metrics).toMatch(/hookbot_publishes_total\{result="accepted"\} [1-9]/);
  });

  it('keeps channels minted under a previous key once HOOKBOT_KEY rotates', async () => {
    const { url, id } = await mint();
    const rotated = await startTestServer({ smee: true }, { keys: ['the-new-key', KEY] });
    const newOnly = await startTestServer({ smee: true }, { keys: ['the-new-key'] });
    try {
      expect(url.startsWith(server.url)).toBe(true);
      expect((await post(`${rotated.url}/${id}`, 'x')).status).toBe(200);
      expect((await post(`${newOnly.url}/${id}`, 'x')).status).toBe(404);
    } finally {
      await rotated.close();
      await newOnly.close();
    }
  });
});
