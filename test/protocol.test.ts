/**
 * One test (at least) per row of ../shared/hookbot-protocol.md, against the
 * real server on a real port with real ws clients.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, Inbox, publish, startTestServer, subscribe, token, wsConnect, wsUrl } from './helpers.js';

let server: HookbotServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});

const UNSAFE_OK = { 'x-hookbot-unsafe-is-ok': 'I understand the security implications' };

describe('keys and tokens', () => {
  it('accepts Basic with the token as user name, password ignored', async () => {
    const basic = Buffer.from(`${token('/pub/t1')}:ignored`).toString('base64');
    const res = await fetch(server.url + '/pub/t1', { method: 'POST', body: 'x', headers: { authorization: `Basic ${basic}` } });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('OK\n');
  });

  it('accepts Bearer', async () => {
    const res = await publish(server, '/pub/t1', 'x');
    expect(res.status).toBe(200);
  });

  it('answers a missing, wrong or garbage token with 401 and WWW-Authenticate', async () => {
    for (const authorization of [undefined, `Bearer ${token('/pub/other')}`, 'Bearer', 'Basic !!!', 'Digest abc', `Bearer ${token('/pub/t1', 'wrong-key')}`, '\u00ff\u00fe']) {
      const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
      const res = await fetch(server.url + '/pub/t1', { method: 'POST', body: 'x', headers }).catch(() => undefined);
      if (!res) continue; // fetch refuses to send some byte strings; that is the client's choice
      expect(res.status, String(authorization)).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Basic realm="hookbot"');
    }
  });

  it('scopes: a /pub/foo/ token publishes under it but not to /pub/foobar', async () => {
    const auth = { authorization: `Bearer ${token('/pub/scope/')}` };
    expect((await fetch(server.url + '/pub/scope/a/b', { method: 'POST', body: 'x', headers: auth })).status).toBe(200);
    expect((await fetch(server.url + '/pub/scopex', { method: 'POST', body: 'x', headers: auth })).status).toBe(401);
    const exact = { authorization: `Bearer ${token('/pub/scope')}` };
    expect((await fetch(server.url + '/pub/scope', { method: 'POST', body: 'x', headers: exact })).status).toBe(200);
    expect((await fetch(server.url + '/pub/scope/a', { method: 'POST', body: 'x', headers: exact })).status).toBe(401);
  });

  it('a master token for / and a /pub/ token publish anywhere', async () => {
    for (const p of ['/', '/pub/']) {
      const res = await fetch(server.url + '/pub/any/where', { method: 'POST', body: 'x', headers: { authorization: `Bearer ${token(p)}` } });
      expect(res.status, p).toBe(200);
    }
  });

  it('a /pub- and /sub-less token works for both publishing and subscribing', async () => {
    const auth = { authorization: `Bearer ${token('/both/')}` };
    const ws = await wsConnect(wsUrl(server, '/sub/both/x'), { headers: auth });
    const inbox = new Inbox(ws);
    expect((await fetch(server.url + '/pub/both/x', { method: 'POST', body: 'hi', headers: auth })).status).toBe(200);
    expect((await inbox.waitFor(1))[0].data.toString()).toBe('hi');
    ws.close();
  });

  it('refuses a subscription without a valid token with 401', async () => {
    const err = await wsConnect(wsUrl(server, '/sub/t1')).catch((e) => e);
    expect(err.status).toBe(401);
    expect(err.headers['www-authenticate']).toBe('Basic realm="hookbot"');
    const wrong = await wsConnect(wsUrl(server, '/sub/t1'), { headers: bearer('/sub/t2') }).catch((e) => e);
    expect(wrong.status).toBe(401);
  });

  it('takes the token from URL user info, as wscat-style clients send it', async () => {
    const url = wsUrl(server, '/sub/userinfo').replace('ws://', `ws://${token('/sub/userinfo')}@`);
    const ws = await wsConnect(url);
    const inbox = new Inbox(ws);
    await publish(server, '/pub/userinfo', 'via-userinfo');
    expect((await inbox.waitFor(1))[0].data.toString()).toBe('via-userinfo');
    ws.close();
  });
});

describe('endpoints', () => {
  it('POST /pub/<topic> reaches a /sub/<topic> WebSocket as one binary message of the exact bytes', async () => {
    const ws = await subscribe(server, '/sub/e/exact');
    const inbox = new Inbox(ws);
    const body = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
    const res = await publish(server, '/pub/e/exact', body);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('OK\n');
    expect(res.headers.get('x-hookbot-message-id')).toMatch(/^\d+-\d+$/);
    const [m] = await inbox.waitFor(1);
    expect(m.binary).toBe(true);
    expect(m.data.equals(body)).toBe(true);
    ws.close();
  });

  it('POST /unsafe/pub/<topic> needs no token and lands in /unsafe/<topic>, never on /sub/<topic>', async () => {
    const safe = new Inbox(await subscribe(server, '/sub/ns/x'));
    const unsafe = new Inbox(await subscribe(server, '/unsafe/sub/ns/x', { headers: { ...bearer('/unsafe/sub/ns/x'), ...UNSAFE_OK } }));
    const res = await fetch(server.url + '/unsafe/pub/ns/x', { method: 'POST', body: 'from-anyone' });
    expect(res.status).toBe(200);
    await publish(server, '/pub/ns/x', 'safe');
    expect((await unsafe.waitFor(1))[0].data.toString()).toBe('from-anyone');
    expect((await safe.waitFor(1))[0].data.toString()).toBe('safe');
    expect(safe.texts()).toEqual(['safe']);
    expect(unsafe.texts()).toEqual(['from-anyone']);
  });

  it('GET /unsafe/sub/ without the molly-guard header is 400 with the original message', async () => {
    const err = await wsConnect(wsUrl(server, '/unsafe/sub/ns/x'), { headers: bearer('/unsafe/sub/ns/x') }).catch((e) => e);
    expect(err.status).toBe(400);
    expect(err.body).toBe('400 Bad Request. X-Hookbot-Unsafe-Is-Ok header required.\n');
    const wrongValue = await wsConnect(wsUrl(server, '/unsafe/sub/ns/x'), { headers: { ...bearer('/unsafe/sub/ns/x'), 'x-hookbot-unsafe-is-ok': 'yes' } }).catch((e) => e);
    expect(wrongValue.status).toBe(400);
  });

  it('GET /unsafe/sub/ also needs a token (a deliberate difference from the original)', async () => {
    const err = await wsConnect(wsUrl(server, '/unsafe/sub/ns/x'), { headers: UNSAFE_OK }).catch((e) => e);
    expect(err.status).toBe(401);
  });

  it('bare /<topic>: POST publishes, GET subscribes, other methods 501', async () => {
    const ws = await wsConnect(wsUrl(server, '/bare/topic'), { headers: bearer('/bare/topic') });
    const inbox = new Inbox(ws);
    const res = await fetch(server.url + '/bare/topic', { method: 'POST', body: 'bare', headers: bearer('/bare/topic') });
    expect(res.status).toBe(200);
    expect((await inbox.waitFor(1))[0].data.toString()).toBe('bare');
    // /pub/bare/topic is the same topic.
    await publish(server, '/pub/bare/topic', 'same');
    expect((await inbox.waitFor(2))[1].data.toString()).toBe('same');
    for (const method of ['PUT', 'DELETE', 'PATCH']) {
      const r = await fetch(server.url + '/bare/topic', { method, body: 'x', headers: bearer('/bare/topic') });
      expect(r.status, method).toBe(501);
    }
    ws.close();
  });

  it('GET /status is 200 OK with no token', async () => {
    const res = await fetch(server.url + '/status');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('OK\n');
  });
});

describe('delivery', () => {
  it('a recursive subscription gets every topic under it as topic NUL body; an exact one only its own', async () => {
    const rec = new Inbox(await subscribe(server, '/sub/r/'));
    const exact = new Inbox(await subscribe(server, '/sub/r/a'));
    await publish(server, '/pub/r/a', 'one');
    await publish(server, '/pub/r/b/c', 'two');
    await publish(server, '/pub/rr', 'not-under');
    const got = await rec.waitFor(2);
    expect(got.map((m) => m.data)).toEqual([Buffer.from('r/a\0one'), Buffer.from('r/b/c\0two')]);
    expect(got.every((m) => m.binary)).toBe(true);
    expect((await exact.waitFor(1))[0].data.toString()).toBe('one');
    // A later message proves nothing else was queued before it.
    await publish(server, '/pub/r/a', 'three');
    await exact.waitFor(2);
    expect(exact.texts()).toEqual(['one', 'three']);
    await rec.waitFor(3);
    expect(rec.texts()).toEqual(['r/a\0one', 'r/b/c\0two', 'r/a\0three']);
  });

  it('recursive unsafe subscriptions see the /unsafe/ topic in the frame', async () => {
    const rec = new Inbox(await subscribe(server, '/unsafe/sub/ru/', { headers: { ...bearer('/unsafe/sub/ru/'), ...UNSAFE_OK } }));
    await fetch(server.url + '/unsafe/pub/ru/x', { method: 'POST', body: 'b' });
    expect((await rec.waitFor(1))[0].data.toString()).toBe('/unsafe/ru/x\0b');
  });

  it('delivers in publish order to every subscriber, concurrently published', async () => {
    const a = new Inbox(await subscribe(server, '/sub/order'));
    const b = new Inbox(await subscribe(server, '/sub/order'));
    const n = 200;
    const ids: string[] = [];
    // Sequential publishes define the order; each answer arrives after fan-out.
    for (let i = 0; i < n; i++) ids.push((await publish(server, '/pub/order', String(i))).headers.get('x-hookbot-message-id')!);
    const expected = Array.from({ length: n }, (_, i) => String(i));
    await a.waitFor(n);
    await b.waitFor(n);
    expect(a.texts()).toEqual(expected);
    expect(b.texts()).toEqual(expected);
    expect(new Set(ids).size).toBe(n);
  });

  it('a plain subscriber sees only what is published while connected', async () => {
    await publish(server, '/pub/nohist', 'before');
    const inbox = new Inbox(await subscribe(server, '/sub/nohist'));
    await publish(server, '/pub/nohist', 'after');
    await inbox.waitFor(1);
    expect(inbox.texts()).toEqual(['after']);
  });
});

describe('?extra-metadata=github', () => {
  it('delivers the envelope with sorted keys and base64 payload, exactly as Go marshals it', async () => {
    const inbox = new Inbox(await subscribe(server, '/sub/gh/x'));
    const payload = '{"zen":"<a&b>"}';
    const res = await publish(server, '/pub/gh/x?extra-metadata=github', payload, {
      'x-hub-signature': 'sha1=abc',
      'x-github-event': 'push',
      'x-github-delivery': 'd-1',
    });
    expect(res.status).toBe(200);
    const [m] = await inbox.waitFor(1);
    expect(m.data.toString()).toBe(
      `{"Delivery":"d-1","Event":"push","Payload":"${Buffer.from(payload).toString('base64')}","Signature":"sha1=abc"}`,
    );
  });

  it('absent headers are empty strings', async () => {
    const inbox = new Inbox(await subscribe(server, '/sub/gh/y'));
    await publish(server, '/pub/gh/y?extra-metadata=github', '');
    expect((await inbox.waitFor(1))[0].data.toString()).toBe('{"Delivery":"","Event":"","Payload":"","Signature":""}');
  });

  it('any other value is 400', async () => {
    const res = await publish(server, '/pub/gh/x?extra-metadata=bitbucket', 'x');
    expect(res.status).toBe(400);
    expect(await res.text()).toMatch(/extra-metadata/);
  });
});
