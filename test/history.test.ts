/**
 * History and resume over WebSocket: ids, retention limits, gaps, and the
 * switch from replay to live under concurrent publishing. Real servers on
 * real ports; waits end on events or by polling, never on a fixed sleep.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { storedSize } from '../src/server/backends/backend.js';
import { compareIds } from '../src/protocol/message.js';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, Inbox, publish, startTestServer, wsUrl } from './helpers.js';

const V1 = { protocol: 'hookbot.v1' };

interface Envelope {
  type: 'message' | 'gap' | 'live';
  id?: string;
  topic?: string;
  time?: number;
  headers?: Record<string, string>;
  body?: string;
  encoding?: 'base64';
  since?: string;
}

const envelopes = (inbox: Inbox): Envelope[] => inbox.messages.map((m) => JSON.parse(m.data.toString()) as Envelope);
const messageIds = (inbox: Inbox): string[] => envelopes(inbox).filter((e) => e.type === 'message').map((e) => e.id!);

async function publishId(server: HookbotServer, path: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<string> {
  const res = await publish(server, path, body, headers);
  expect(res.status).toBe(200);
  expect(await res.text()).toBe('OK\n');
  return res.headers.get('x-hookbot-message-id')!;
}

/** Servers and sockets a test opened, closed after it whatever happened. */
const servers: HookbotServer[] = [];
const sockets: WebSocket[] = [];
async function server(options: Parameters<typeof startTestServer>[0] = {}): Promise<HookbotServer> {
  const s = await startTestServer(options);
  servers.push(s);
  return s;
}
/**
 * Opens a subscriber with its Inbox attached before the handshake completes:
 * a replay (or the `live` envelope) can arrive in the same packet as the 101
 * and be emitted before an `await`ed open would let a listener be added.
 */
async function sub(srv: HookbotServer, path: string, options: { protocol?: string } = {}): Promise<{ ws: WebSocket; inbox: Inbox }> {
  const ws = new WebSocket(wsUrl(srv, path), options.protocol ? [options.protocol] : [], { headers: bearer(path.split('?')[0]) });
  sockets.push(ws);
  const inbox = new Inbox(ws);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.once('error', reject);
  });
  return { ws, inbox };
}
async function closeWs(ws: WebSocket): Promise<void> {
  if (ws.readyState === ws.CLOSED) return;
  const closed = new Promise((r) => ws.once('close', r));
  ws.close();
  await closed;
}

let shared: HookbotServer;
beforeAll(async () => {
  shared = await startTestServer({ history: '1000', keepHeader: ['x-custom'] });
});
afterAll(async () => {
  await shared.close();
});
afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  for (const s of servers.splice(0)) await s.close();
});

describe('resume after a disconnect', () => {
  it('raw ?since=: exactly the missed messages in order, then live ones, bytes unchanged', async () => {
    const first = await sub(shared, '/sub/h/raw');
    const a = await publishId(shared, '/pub/h/raw', 'a');
    await first.inbox.waitFor(1);
    await closeWs(first.ws);
    const missed = ['b', Buffer.from([0, 255, 10, 13]), 'd'];
    for (const m of missed) await publishId(shared, '/pub/h/raw', m);

    const again = await sub(shared, `/sub/h/raw?since=${a}`);
    await again.inbox.waitFor(3);
    await publishId(shared, '/pub/h/raw', 'live');
    const got = await again.inbox.waitFor(4);
    expect(got.map((m) => m.data)).toEqual([Buffer.from('b'), Buffer.from([0, 255, 10, 13]), Buffer.from('d'), Buffer.from('live')]);
    expect(got.every((m) => m.binary)).toBe(true);
  });

  it('hookbot.v1: envelopes with id, topic, kept headers and body; live after the replay', async () => {
    const first = await sub(shared, '/sub/h/v1', V1);
    await first.inbox.waitFor(1);
    expect(envelopes(first.inbox)[0]).toEqual({ type: 'live' });
    const a = await publishId(shared, '/pub/h/v1', 'a');
    await first.inbox.waitFor(2);
    const seen = envelopes(first.inbox)[1];
    expect(seen).toMatchObject({ type: 'message', id: a, topic: 'h/v1', body: 'a' });
    await closeWs(first.ws);

    const headers = { 'content-type': 'application/json', 'x-github-event': 'push', 'x-custom': 'kept', 'x-dropped': 'not kept' };
    const b = await publishId(shared, '/pub/h/v1', '{"n":1}', headers);
    const c = await publishId(shared, '/pub/h/v1', Buffer.from([0xff, 0x00]));

    const again = await sub(shared, `/sub/h/v1?since=${seen.id}`, V1);
    await again.inbox.waitFor(3);
    const d = await publishId(shared, '/pub/h/v1', 'live');
    await again.inbox.waitFor(4);
    const got = envelopes(again.inbox);
    expect(got.map((e) => e.type)).toEqual(['message', 'message', 'live', 'message']);
    expect(got[0]).toMatchObject({ id: b, topic: 'h/v1', body: '{"n":1}' });
    expect(got[0].headers).toMatchObject({ 'content-type': 'application/json', 'x-github-event': 'push', 'x-custom': 'kept' });
    expect(got[0].headers).not.toHaveProperty('x-dropped');
    expect(got[0].headers).not.toHaveProperty('authorization');
    expect(got[1]).toMatchObject({ id: c, encoding: 'base64', body: Buffer.from([0xff, 0x00]).toString('base64') });
    expect(got[3]).toMatchObject({ id: d, body: 'live' });
    expect(again.inbox.messages.every((m) => !m.binary)).toBe(true);
  });

  it('a resume from the newest id replays nothing and goes live; since=0 replays everything retained', async () => {
    const ids = [await publishId(shared, '/pub/h/edge', '1'), await publishId(shared, '/pub/h/edge', '2')];
    const newest = await sub(shared, `/sub/h/edge?since=${ids[1]}`, V1);
    await newest.inbox.waitFor(1);
    expect(envelopes(newest.inbox)).toEqual([{ type: 'live' }]);
    const all = await sub(shared, '/sub/h/edge?since=0', V1);
    await all.inbox.waitFor(3);
    expect(envelopes(all.inbox).map((e) => e.id ?? e.type)).toEqual([...ids, 'live']);
  });

  it('a recursive subscription resumes across topics in id order', async () => {
    const first = await publishId(shared, '/pub/h/rec/a', 'a0');
    await publishId(shared, '/pub/h/rec/b/c', 'c0');
    await publishId(shared, '/pub/h/recx', 'not under');
    await publishId(shared, '/pub/h/rec/a', 'a1');
    const raw = await sub(shared, `/sub/h/rec/?since=${first}`);
    const v1 = await sub(shared, `/sub/h/rec/?since=${first}`, V1);
    await publishId(shared, '/pub/h/rec/d', 'd-live');
    await raw.inbox.waitFor(3);
    expect(raw.inbox.texts()).toEqual(['h/rec/b/c\0c0', 'h/rec/a\0a1', 'h/rec/d\0d-live']);
    await v1.inbox.waitFor(4);
    expect(envelopes(v1.inbox).map((e) => (e.type === 'message' ? `${e.topic}=${e.body}` : e.type))).toEqual(['h/rec/b/c=c0', 'h/rec/a=a1', 'live', 'h/rec/d=d-live']);
    const ids = messageIds(v1.inbox);
    for (let i = 1; i < ids.length; i++) expect(compareIds(ids[i - 1], ids[i])).toBe(-1);
  });

  it('replays a history larger than --max-subscriber-buffer without disconnecting the subscriber', async () => {
    const srv = await server({ maxSubscriberBuffer: '64KiB', history: '100' });
    const body = Buffer.alloc(16 * 1024, 'h');
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) ids.push(await publishId(srv, '/pub/h/big', body));
    const raw = await sub(srv, '/sub/h/big?since=0');
    const v1 = await sub(srv, '/sub/h/big?since=0', V1);
    await raw.inbox.waitFor(40, 10_000);
    await v1.inbox.waitFor(41, 10_000);
    expect(raw.inbox.messages.every((m) => m.data.equals(body))).toBe(true);
    expect(messageIds(v1.inbox)).toEqual(ids);
    expect(raw.inbox.closed).toBeUndefined();
    expect(v1.inbox.closed).toBeUndefined();
    expect(srv.broker.stats.slowDisconnects).toBe(0);
  });
});

describe('the switch from replay to live under concurrent publishing', () => {
  /**
   * Publishes `total` messages, a few at a time, while `resumes` times a
   * subscriber drops and comes back with the last id it saw. Every id must be
   * seen exactly once, in increasing order.
   */
  async function churn(srv: HookbotServer, topic: string, protocol: 'raw' | 'v1', total: number, resumes: number): Promise<void> {
    const published: string[] = [];
    const idOfBody = new Map<string, string>();
    let publishing = true;
    const publisher = (async () => {
      for (let i = 0; i < total; i += 4) {
        const batch = await Promise.all(
          [0, 1, 2, 3].map(async (k) => {
            const body = `${topic}#${i + k}`;
            const id = await publishId(srv, `/pub/${topic}`, body);
            idOfBody.set(body, id);
            return id;
          }),
        );
        published.push(...batch);
      }
      publishing = false;
    })();

    const seen: string[] = [];
    const idsOf = (inbox: Inbox): string[] =>
      protocol === 'v1' ? messageIds(inbox) : inbox.messages.map((m) => idOfBody.get(m.data.toString())!);
    // The topic is fresh: since=0 on the first connection also catches what was published before it.
    let since = '0';
    for (let round = 0; round <= resumes; round++) {
      const path = `/sub/${topic}?since=${since}`;
      const s = await sub(srv, path, protocol === 'v1' ? V1 : {});
      const last = round === resumes;
      if (!last) {
        // Take a few messages, then drop mid-stream while publishing goes on.
        await s.inbox.until(() => idsOf(s.inbox).length >= 5 || !publishing, 10_000, 'some messages');
      } else {
        await publisher;
        await s.inbox.until(() => idsOf(s.inbox).includes(published.reduce((a, b) => (compareIds(a, b) > 0 ? a : b))), 10_000, 'the last message');
      }
      s.ws.terminate();
      // Raw bodies map to ids only once their publish answered; wait for that.
      if (protocol === 'raw') await eventually(() => s.inbox.messages.every((m) => idOfBody.has(m.data.toString())), 5000, 'publish answers');
      const ids = idsOf(s.inbox);
      seen.push(...ids);
      if (ids.length > 0) since = ids[ids.length - 1];
    }
    const expected = [...published].sort(compareIds);
    expect(seen.length).toBe(expected.length);
    expect(seen).toEqual(expected);
    for (let i = 1; i < seen.length; i++) expect(compareIds(seen[i - 1], seen[i])).toBe(-1);
  }

  it('hookbot.v1: no loss, no duplicate, ids strictly increasing', async () => {
    await churn(shared, 'h/churn/v1', 'v1', 400, 4);
  });

  it('raw: no loss, no duplicate', async () => {
    await churn(shared, 'h/churn/raw', 'raw', 400, 4);
  });
});

describe('retention and gaps', () => {
  it('count: keeps the newest --history messages and signals the gap to a resume from before them', async () => {
    const srv = await server({ history: '3' });
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push(await publishId(srv, '/pub/h/count', `m${i}`));
    expect((await srv.broker.history('h/count')).messages.map((m) => m.body.toString())).toEqual(['m3', 'm4', 'm5']);

    const v1 = await sub(srv, `/sub/h/count?since=${ids[0]}`, V1);
    await v1.inbox.waitFor(5);
    const got = envelopes(v1.inbox);
    expect(got[0]).toEqual({ type: 'gap', since: ids[0] });
    expect(got.slice(1).map((e) => e.body ?? e.type)).toEqual(['m3', 'm4', 'm5', 'live']);

    // From the newest trimmed id nothing was missed: no gap.
    const ok = await sub(srv, `/sub/h/count?since=${ids[2]}`, V1);
    await ok.inbox.waitFor(4);
    expect(envelopes(ok.inbox).map((e) => e.body ?? e.type)).toEqual(['m3', 'm4', 'm5', 'live']);

    // The raw protocol cannot carry a gap; it just gets what is retained.
    const raw = await sub(srv, `/sub/h/count?since=${ids[0]}`);
    await raw.inbox.waitFor(3);
    expect(raw.inbox.texts()).toEqual(['m3', 'm4', 'm5']);
  });

  it('bytes: per-topic stored bytes (topic, kept headers, body) stay within --history-bytes', async () => {
    const headers = { 'content-type': 'text/plain', 'user-agent': 'hookbot-test' };
    // Room for two messages of the topic, not three.
    const srv = await server({ historyBytes: String(2 * storedSize('h/bytes', headers, Buffer.from('abc0')) + 1) });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await publishId(srv, '/pub/h/bytes', `abc${i}`, headers));
    const h = await srv.broker.history('h/bytes');
    expect(h.messages.map((m) => m.body.toString())).toEqual(['abc3', 'abc4']);
    const v1 = await sub(srv, `/sub/h/bytes?since=${ids[0]}`, V1);
    await v1.inbox.waitFor(4);
    expect(envelopes(v1.inbox).map((e) => (e.type === 'message' ? e.body : e.type))).toEqual(['gap', 'abc3', 'abc4', 'live']);
  });

  it('age: messages older than --history-age are gone, and a resume is told so', async () => {
    const srv = await server({ historyAge: '300ms' });
    const first = await publishId(srv, '/pub/h/age', 'old');
    expect((await srv.broker.history('h/age')).messages.length).toBe(1);
    await eventually(async () => (await srv.broker.history('h/age')).messages.length === 0, 5000, 'age expiry');
    const v1 = await sub(srv, '/sub/h/age?since=0', V1);
    await v1.inbox.waitFor(2);
    expect(envelopes(v1.inbox)).toEqual([{ type: 'gap', since: '0-0' }, { type: 'live' }]);
    // A client that saw the expired message missed nothing.
    const saw = await sub(srv, `/sub/h/age?since=${first}`, V1);
    await saw.inbox.waitFor(1);
    expect(envelopes(saw.inbox)).toEqual([{ type: 'live' }]);
  });

  it('0 disables history (each of the limits); delivery still works', async () => {
    for (const opts of [{ history: '0' }, { historyBytes: '0' }, { historyAge: '0' }, { historyTotalBytes: '0' }]) {
      const srv = await server(opts);
      const live = await sub(srv, '/sub/h/off');
      await publishId(srv, '/pub/h/off', 'x');
      expect((await live.inbox.waitFor(1))[0].data.toString()).toBe('x');
      expect((await srv.broker.history('h/off')).messages).toEqual([]);
      expect(await srv.broker.backend.historyTopics()).toEqual([]);
      const resumed = await sub(srv, '/sub/h/off?since=0', V1);
      await resumed.inbox.waitFor(1);
      expect(envelopes(resumed.inbox)[0]).toEqual({ type: 'live' });
    }
  });

  it('with history disabled, a resume from before newer messages is told about the gap', async () => {
    const srv = await server({ history: '0' });
    const first = await publishId(srv, '/pub/h/nohist', 'one');
    await publishId(srv, '/pub/h/nohist', 'two');
    const resumed = await sub(srv, `/sub/h/nohist?since=${first}`, V1);
    await resumed.inbox.waitFor(2);
    expect(envelopes(resumed.inbox)).toEqual([{ type: 'gap', since: first }, { type: 'live' }]);
  });

  it('--history-total-bytes bounds memory across many topics, dropping the oldest first', async () => {
    const srv = await server({ historyTotalBytes: '2KiB' });
    const body = Buffer.alloc(100, 't');
    const ids: string[] = [];
    for (let i = 0; i < 200; i++) ids.push(await publishId(srv, `/pub/h/many/t${i}`, body));
    const topics = await srv.broker.backend.historyTopics();
    const total = topics.reduce((n, t) => n + t.bytes, 0);
    const messages = (await srv.broker.history('h/many/')).messages;
    // Counted as stored: topic, kept headers and body, so the bound holds whatever they weigh.
    expect(total).toBe(messages.reduce((n, m) => n + storedSize(m.topic, m.headers, m.body), 0));
    expect(total).toBeLessThanOrEqual(2048);
    expect(total).toBeGreaterThan(2048 - storedSize(messages[0].topic, messages[0].headers, messages[0].body));
    const kept = messages.map((m) => m.id);
    expect(kept).toEqual(ids.slice(ids.length - kept.length));
    // An evicted topic reports the gap to a resume.
    const v1 = await sub(srv, `/sub/h/many/t0?since=0`, V1);
    await v1.inbox.waitFor(2);
    expect(envelopes(v1.inbox)).toEqual([{ type: 'gap', since: '0-0' }, { type: 'live' }]);
    const rec = await sub(srv, `/sub/h/many/?since=${ids[0]}`, V1);
    await rec.inbox.waitFor(kept.length + 2);
    expect(envelopes(rec.inbox)[0]).toEqual({ type: 'gap', since: ids[0] });
    expect(messageIds(rec.inbox)).toEqual(kept);
  });
});

describe('ids', () => {
  it('increase per topic and across topics, and are returned to the publisher', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 50; i++) ids.push(await publishId(shared, `/pub/h/ids/${i % 3}`, String(i)));
    for (let i = 1; i < ids.length; i++) expect(compareIds(ids[i - 1], ids[i])).toBe(-1);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('keep increasing across a server restart', async () => {
    const a = await startTestServer();
    const before = await publishId(a, '/pub/h/restart', 'one');
    await a.close();
    const b = await server();
    const after = await publishId(b, '/pub/h/restart', 'two');
    expect(compareIds(after, before)).toBe(1);
  });
  it('a resume from an id given out before a restart is told about the gap (memory history is gone)', async () => {
    const a = await startTestServer();
    const before = await publishId(a, '/pub/h/restart2', 'one');
    await a.close();
    const b = await server();
    const resumed = await sub(b, `/sub/h/restart2?since=${before}`, V1);
    await resumed.inbox.waitFor(2);
    expect(envelopes(resumed.inbox)).toEqual([{ type: 'gap', since: before }, { type: 'live' }]);
  });
});
