/**
 * Server-Sent Events subscribers, read with plain `fetch` streaming (and
 * node:http where a test needs a client that stops reading), against the real
 * server on a real port.
 */
import { request, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, publish, SseStream, startTestServer } from './helpers.js';

const UNSAFE_OK = { 'x-hookbot-unsafe-is-ok': 'I understand the security implications' };
const PREAMBLE = 'retry: 2000\n\n';

async function sse(server: HookbotServer, path: string, headers: Record<string, string> = {}): Promise<SseStream> {
  const abort = new AbortController();
  const clean = path.split('?')[0];
  const res = await fetch(server.url + path, { headers: { accept: 'text/event-stream', ...bearer(clean), ...headers }, signal: abort.signal });
  if (res.status !== 200) throw Object.assign(new Error(`HTTP ${res.status}: ${await res.text()}`), { status: res.status });
  const stream = new SseStream(res, abort);
  // The preamble is written after the subscription is registered, so publishing after it is safe.
  await stream.until(() => stream.raw.startsWith(PREAMBLE), 'preamble');
  return stream;
}

async function publishId(server: HookbotServer, path: string, body: string | Buffer): Promise<string> {
  const res = await publish(server, path, body);
  expect(res.status).toBe(200);
  return res.headers.get('x-hookbot-message-id')!;
}

let server: HookbotServer;
const open: SseStream[] = [];
beforeAll(async () => {
  server = await startTestServer({ history: '5' });
});
afterAll(async () => {
  for (const s of open) s.close();
  await server.close();
});

async function subscribeSse(path: string, headers: Record<string, string> = {}, srv = server): Promise<SseStream> {
  const s = await sse(srv, path, headers);
  open.push(s);
  return s;
}

describe('SSE framing', () => {
  it('sends the headers, a retry hint, then id/event/data for each message, byte for byte', async () => {
    const s = await subscribeSse('/sub/sse/frame');
    expect(s.res.headers.get('content-type')).toBe('text/event-stream');
    expect(s.res.headers.get('cache-control')).toBe('no-cache');
    expect(s.res.headers.get('x-accel-buffering')).toBe('no');
    const id = await publishId(server, '/pub/sse/frame', 'hello');
    const id2 = await publishId(server, '/pub/sse/frame', '{"a": "ünïcode ✓"}');
    await s.waitFor(2);
    expect(s.raw).toBe(`${PREAMBLE}id: ${id}\nevent: sse/frame\ndata: hello\n\nid: ${id2}\nevent: sse/frame\ndata: {"a": "ünïcode ✓"}\n\n`);
    expect(s.events).toEqual([
      { id, event: 'sse/frame', data: 'hello' },
      { id: id2, event: 'sse/frame', data: '{"a": "ünïcode ✓"}' },
    ]);
  });

  it('splits a multi-line body into data lines that join back to the exact body', async () => {
    const s = await subscribeSse('/sub/sse/lines');
    const bodies = ['a\nb\n\nc\n', '\n', '', ' leading space\n\ttab', 'data: looks like a field\nid: 1\n\n'];
    const ids: string[] = [];
    for (const b of bodies) ids.push(await publishId(server, '/pub/sse/lines', b));
    const events = await s.waitFor(bodies.length);
    expect(events.map((e) => e.data)).toEqual(bodies);
    expect(events.map((e) => e.id)).toEqual(ids);
    expect(events.every((e) => e.event === 'sse/lines')).toBe(true);
    expect(s.raw).toContain(`id: ${ids[0]}\nevent: sse/lines\ndata: a\ndata: b\ndata: \ndata: c\ndata: \n\n`);
    expect(s.raw).toContain(`id: ${ids[2]}\nevent: sse/lines\ndata: \n\n`);
  });

  it('sends binary bodies, and text with CR, as base64 under event base64:<topic>', async () => {
    const s = await subscribeSse('/sub/sse/bin');
    const bodies = [Buffer.from([0, 1, 2, 255, 254, 10, 13]), Buffer.from([0xc3, 0x28]), Buffer.from('windows\r\nline\r\n'), Buffer.from('lone\rcr')];
    const ids: string[] = [];
    for (const b of bodies) ids.push(await publishId(server, '/pub/sse/bin', b));
    const events = await s.waitFor(bodies.length);
    for (let i = 0; i < bodies.length; i++) {
      expect(events[i].event).toBe('base64:sse/bin');
      expect(events[i].id).toBe(ids[i]);
      expect(Buffer.from(events[i].data, 'base64').equals(bodies[i])).toBe(true);
    }
    expect(s.raw).toContain(`id: ${ids[0]}\nevent: base64:sse/bin\ndata: ${bodies[0].toString('base64')}\n\n`);
  });

  it('works on the bare /<topic> and /unsafe/sub/ subscribe paths too', async () => {
    const bare = await subscribeSse('/sse/bare');
    await publishId(server, '/pub/sse/bare', 'via bare');
    expect((await bare.waitFor(1))[0]).toMatchObject({ event: 'sse/bare', data: 'via bare' });

    const unsafe = await subscribeSse('/unsafe/sub/sse/u', UNSAFE_OK);
    const res = await fetch(server.url + '/unsafe/pub/sse/u', { method: 'POST', body: 'anyone' });
    expect(res.status).toBe(200);
    expect((await unsafe.waitFor(1))[0]).toMatchObject({ event: '/unsafe/sse/u', data: 'anyone' });
  });

  it('a recursive subscription gets every topic under it, named in event:', async () => {
    const s = await subscribeSse('/sub/sse/rec/');
    await publishId(server, '/pub/sse/rec/a', 'one');
    await publishId(server, '/pub/sse/recx', 'not under');
    await publishId(server, '/pub/sse/rec/b/c', Buffer.from([0xff]));
    await publishId(server, '/pub/sse/rec/a', 'three');
    const events = await s.waitFor(3);
    expect(events.map((e) => [e.event, e.data])).toEqual([
      ['sse/rec/a', 'one'],
      ['base64:sse/rec/b/c', '/w=='],
      ['sse/rec/a', 'three'],
    ]);
  });
});

describe('SSE auth and input', () => {
  it('answers a missing or wrong token with 401 and WWW-Authenticate', async () => {
    for (const headers of [{}, bearer('/sub/other')] as Array<Record<string, string>>) {
      const res = await fetch(server.url + '/sub/sse/auth', { headers: { accept: 'text/event-stream', ...headers } });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Basic realm="hookbot"');
      expect(res.headers.get('content-type')).not.toMatch(/event-stream/);
    }
  });

  it('keeps the unsafe guard: no header is 400 with the original message', async () => {
    const res = await fetch(server.url + '/unsafe/sub/sse/u', { headers: { accept: 'text/event-stream', ...bearer('/unsafe/sub/sse/u') } });
    expect(res.status).toBe(400);
    expect(await res.text()).toBe('400 Bad Request. X-Hookbot-Unsafe-Is-Ok header required.\n');
  });

  it('refuses a malformed resume id with 400 naming where it came from', async () => {
    const cases: Array<[string, Record<string, string>, RegExp]> = [
      ['/sub/sse/bad', { 'last-event-id': 'nope' }, /Last-Event-ID header must be a message id/],
      ['/sub/sse/bad?last-event-id=12', {}, /\?last-event-id= must be a message id/],
      ['/sub/sse/bad?since=1-2-3', {}, /\?since= must be a message id/],
      ['/sub/sse/bad?since=-1', {}, /\?since= must be a message id/],
    ];
    for (const [path, headers, re] of cases) {
      const res = await fetch(server.url + path, { headers: { accept: 'text/event-stream', ...bearer('/sub/sse/bad'), ...headers } });
      expect(res.status, path).toBe(400);
      expect(await res.text(), path).toMatch(re);
    }
  });
});

describe('SSE resume', () => {
  it('Last-Event-ID replays exactly what came after it, then goes live', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await publishId(server, '/pub/sse/resume', `m${i}`));
    const s = await subscribeSse('/sub/sse/resume', { 'last-event-id': ids[1] });
    await s.waitFor(2);
    const live = await publishId(server, '/pub/sse/resume', 'live');
    const events = await s.waitFor(3);
    expect(events).toEqual([
      { id: ids[2], event: 'sse/resume', data: 'm2' },
      { id: ids[3], event: 'sse/resume', data: 'm3' },
      { id: live, event: 'sse/resume', data: 'live' },
    ]);
    // Nothing else: one more live message arrives right after.
    await publishId(server, '/pub/sse/resume', 'end');
    await s.waitFor(4);
    expect(s.events.map((e) => e.data)).toEqual(['m2', 'm3', 'live', 'end']);
  });

  it('?last-event-id= and ?since= resume too; the header wins over the URL', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await publishId(server, '/pub/sse/q', `q${i}`));
    const byQuery = await subscribeSse(`/sub/sse/q?last-event-id=${ids[0]}`);
    expect((await byQuery.waitFor(2)).map((e) => e.data)).toEqual(['q1', 'q2']);
    const bySince = await subscribeSse(`/sub/sse/q?since=${ids[1]}`);
    expect((await bySince.waitFor(1)).map((e) => e.data)).toEqual(['q2']);
    const all = await subscribeSse('/sub/sse/q?since=0');
    expect((await all.waitFor(3)).map((e) => e.data)).toEqual(['q0', 'q1', 'q2']);
    // EventSource reconnects with the URL it was opened with plus a fresher Last-Event-ID header.
    const both = await subscribeSse(`/sub/sse/q?last-event-id=${ids[0]}`, { 'last-event-id': ids[1] });
    await publishId(server, '/pub/sse/q', 'q3');
    expect((await both.waitFor(2)).map((e) => e.data)).toEqual(['q2', 'q3']);
  });

  it('signals a gap before the replay when history was trimmed', async () => {
    const ids: string[] = [];
    // --history 5 on this server.
    for (let i = 0; i < 8; i++) ids.push(await publishId(server, '/pub/sse/gap', `g${i}`));
    const s = await subscribeSse('/sub/sse/gap', { 'last-event-id': ids[0] });
    const events = await s.waitFor(6);
    expect(events[0]).toEqual({ event: 'gap', data: JSON.stringify({ since: ids[0] }) });
    expect(s.raw.slice(PREAMBLE.length)).toMatch(new RegExp(`^event: gap\ndata: \\{"since":"${ids[0]}"\\}\n\nid: ${ids[3]}\n`));
    expect(events.slice(1).map((e) => e.data)).toEqual(['g3', 'g4', 'g5', 'g6', 'g7']);

    // Resuming from the newest trimmed id missed nothing: no gap.
    const ok = await subscribeSse('/sub/sse/gap', { 'last-event-id': ids[2] });
    await ok.waitFor(5);
    expect(ok.events.map((e) => e.data)).toEqual(['g3', 'g4', 'g5', 'g6', 'g7']);
  });

  it('replays a history larger than --max-subscriber-buffer, paced, without a slow disconnect', async () => {
    const srv = await startTestServer({ maxSubscriberBuffer: '64KiB', history: '100' });
    try {
      const body = 'x'.repeat(16 * 1024);
      const ids: string[] = [];
      for (let i = 0; i < 40; i++) ids.push(await publishId(srv, '/pub/sse/big', body));
      const s = await sse(srv, '/sub/sse/big', { 'last-event-id': '0' });
      const live = await publishId(srv, '/pub/sse/big', 'live');
      const events = await s.waitFor(41, 10_000);
      expect(events.map((e) => e.id)).toEqual([...ids, live]);
      expect(events.slice(0, 40).every((e) => e.data === body)).toBe(true);
      expect(srv.sessions.slowDisconnects.sse).toBe(0);
      s.close();
    } finally {
      await srv.close();
    }
  });

  it('a recursive subscription resumes across topics in id order', async () => {
    const first = await publishId(server, '/pub/sse/rr/a', 'a0');
    await publishId(server, '/pub/sse/rr/b', 'b0');
    await publishId(server, '/pub/sse/rrx', 'not under');
    await publishId(server, '/pub/sse/rr/a/deep', 'd0');
    const s = await subscribeSse('/sub/sse/rr/', { 'last-event-id': first });
    await publishId(server, '/pub/sse/rr/c', 'c-live');
    const events = await s.waitFor(3);
    expect(events.map((e) => `${e.event}=${e.data}`)).toEqual(['sse/rr/b=b0', 'sse/rr/a/deep=d0', 'sse/rr/c=c-live']);
  });
});

describe('SSE connection lifecycle', () => {
  it('sends : ping heartbeats every --sse-heartbeat', async () => {
    const fast = await startTestServer({ sseHeartbeat: '50ms' });
    try {
      const s = await sse(fast, '/sub/sse/hb');
      await s.until(() => s.comments.filter((c) => c === 'ping').length >= 3, 'three pings');
      expect(s.raw.startsWith(`${PREAMBLE}: ping\n\n: ping\n\n`)).toBe(true);
      s.close();
    } finally {
      await fast.close();
    }
  });

  it('rejects a bad --sse-heartbeat', async () => {
    await expect(startTestServer({ sseHeartbeat: 'soon' })).rejects.toThrow(/--sse-heartbeat/);
  });

  it('unsubscribes when the client goes away', async () => {
    const before = server.broker.subscriptions;
    const connected = server.sessions.counts().sse;
    const s = await sse(server, '/sub/sse/bye');
    expect(server.sessions.counts().sse).toBe(connected + 1);
    expect(server.broker.subscriptions).toBe(before + 1);
    s.close();
    await eventually(() => server.sessions.counts().sse === connected && server.broker.subscriptions === before, 5000, 'unsubscribe');
  });

  it('ends every stream on shutdown, and refuses new ones', async () => {
    const srv = await startTestServer();
    const a = await sse(srv, '/sub/sse/down');
    const b = await sse(srv, '/sub/sse/down/');
    const started = Date.now();
    const closing = srv.close();
    const refused = await fetch(srv.url + '/sub/sse/down', { headers: { accept: 'text/event-stream', ...bearer('/sub/sse/down') } }).catch(() => undefined);
    // Either refused outright (503) or the listener is already gone: never a new stream.
    if (refused) expect(refused.status).toBe(503);
    await closing;
    await a.until(() => a.ended, 'stream a to end');
    await b.until(() => b.ended, 'stream b to end');
    // Well within the 2 s grace: the streams were ended, not cut off by the deadline.
    expect(Date.now() - started).toBeLessThan(1500);
    expect(srv.sessions.counts().sse).toBe(0);
  });

  it('disconnects a subscriber that stops reading once it is past --max-subscriber-buffer', async () => {
    const srv = await startTestServer({ maxSubscriberBuffer: '64KiB' });
    try {
      // node:http so the client can stop reading: the kernel buffers fill, then the server's.
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = request(srv.url + '/sub/sse/slow', { headers: { accept: 'text/event-stream', ...bearer('/sub/sse/slow') } }, resolve);
        req.on('error', reject);
        req.end();
      });
      expect(res.statusCode).toBe(200);
      res.pause();
      let closed = false;
      res.socket.on('close', () => (closed = true));
      const chunk = Buffer.alloc(256 * 1024, 'x');
      for (let i = 0; i < 400 && srv.sessions.slowDisconnects.sse === 0; i++) await publish(srv, '/pub/sse/slow', chunk);
      expect(srv.sessions.slowDisconnects.sse).toBe(1);
      expect(srv.broker.stats.slowDisconnects).toBe(1);
      await eventually(() => srv.sessions.counts().sse === 0, 5000, 'slow subscriber gone');
      res.resume();
      await eventually(() => closed, 5000, 'client socket closed');
    } finally {
      await srv.close();
    }
  });
});
