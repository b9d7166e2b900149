/**
 * The hookbot.v1 client against a small fake server built from `ws`, so that
 * stalls, gaps, overlapping replays and handshake refusals can be staged
 * exactly. The real server is exercised in client-e2e.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IncomingMessage } from 'node:http';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  parseSubscribeUrl,
  readStateFile,
  subscribe,
  SubscribeError,
  type Subscription,
} from '../src/client/index.js';
import { Message } from '../src/protocol/message.js';
import { backoffDelay } from '../src/util/backoff.js';

interface Conn {
  ws: WebSocket;
  url: URL;
  authorization?: string;
  since?: string;
  unsafe?: string;
}

/** A scriptable hookbot.v1 server: history, since-replay, gap, stall, refusals. */
class FakeServer {
  readonly wss: WebSocketServer;
  readonly conns: Conn[] = [];
  readonly history: Message[] = [];
  #seq = 0;
  /** Status to refuse handshakes with (e.g. 401), or 0 to accept. */
  refuse = 0;
  refuseBody = '';
  /** Accept without agreeing to hookbot.v1 (like the original Go server). */
  noSubprotocol = false;
  /** Ignore `since` and replay all history (to test duplicate dropping). */
  replayAll = false;
  /** Send a gap envelope before the replay. */
  gapOnReplay = false;
  /** Stop answering pings. */
  stalled = false;
  #connWaiters: Array<() => void> = [];

  private constructor(wss: WebSocketServer) {
    this.wss = wss;
    wss.on('connection', (ws, req) => this.#onConnection(ws, req));
  }

  static async start(): Promise<FakeServer> {
    // Assigned once the WebSocketServer exists; its callbacks only run after that.
    // eslint-disable-next-line prefer-const
    let server!: FakeServer;
    const wss = new WebSocketServer({
      port: 0,
      host: '127.0.0.1',
      autoPong: false,
      handleProtocols: (protocols) => (!server.noSubprotocol && protocols.has('hookbot.v1') ? 'hookbot.v1' : false),
      verifyClient: (_info, cb) => {
        if (server.refuse) cb(false, server.refuse, server.refuseBody || undefined);
        else cb(true);
      },
    });
    server = new FakeServer(wss);
    await new Promise<void>((resolve) => wss.on('listening', resolve));
    return server;
  }

  get port(): number {
    return (this.wss.address() as { port: number }).port;
  }

  url(path = '/sub/foo', user = 'tok123'): string {
    return `ws://${user ? `${user}@` : ''}127.0.0.1:${this.port}${path}`;
  }

  #onConnection(ws: WebSocket, req: IncomingMessage): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const conn: Conn = {
      ws,
      url,
      authorization: req.headers.authorization,
      since: url.searchParams.get('since') ?? undefined,
      unsafe: req.headers['x-hookbot-unsafe-is-ok'] as string | undefined,
    };
    this.conns.push(conn);
    ws.on('ping', (data) => {
      if (!this.stalled) ws.pong(data);
    });
    if (conn.since !== undefined) {
      if (this.gapOnReplay) ws.send(JSON.stringify({ type: 'gap', since: conn.since }));
      for (const m of this.history) {
        if (this.replayAll || conn.since === '0' || compare(m.id, conn.since) > 0) ws.send(JSON.stringify(m.toJSON()));
      }
    }
    ws.send(JSON.stringify({ type: 'live' }));
    const waiters = this.#connWaiters;
    this.#connWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when there have been at least `n` connections. */
  async connections(n: number, timeoutMs = 5000): Promise<Conn[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.conns.length < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} connections, got ${this.conns.length}`);
      await new Promise<void>((resolve) => {
        this.#connWaiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    return this.conns;
  }

  publish(body: string | Buffer, topic = 'foo', headers: Record<string, string> = {}): Message {
    const m = new Message(`${1_700_000_000_000 + Math.floor(this.#seq / 3)}-${this.#seq % 3}`, topic, headers, Buffer.from(body));
    this.#seq++;
    this.history.push(m);
    // A stalled path passes nothing; the message is only in history.
    if (!this.stalled) for (const c of this.conns) if (c.ws.readyState === c.ws.OPEN) c.ws.send(JSON.stringify(m.toJSON()));
    return m;
  }

  /** Drops every live connection abruptly. */
  dropAll(): void {
    for (const c of this.conns) c.ws.terminate();
  }

  close(): Promise<void> {
    for (const c of this.conns) c.ws.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

function compare(a: string, b: string): number {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am - bm || as - bs;
}

/** Collects `n` messages from an iterator (each next() marks the previous processed). */
async function take(it: AsyncIterator<Message>, n: number, timeoutMs = 5000): Promise<Message[]> {
  const out: Message[] = [];
  const timer = new Promise<never>((_, reject) =>
    setTimeout(() => reject(new Error(`timed out after ${out.length}/${n} messages`)), timeoutMs),
  );
  while (out.length < n) {
    const r = await Promise.race([it.next(), timer]);
    if (r.done) throw new Error('iterator ended early');
    out.push(r.value);
  }
  return out;
}

function waitFor<T>(sub: Subscription, event: 'open' | 'live' | 'disconnect' | 'gap', timeoutMs = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    sub.once(event, (...args: unknown[]) => {
      clearTimeout(timer);
      resolve(args[0] as T);
    });
  });
}

const FAST = { pingIntervalMs: 50, deadlineMs: 400, minBackoffMs: 20, maxBackoffMs: 100 };

let servers: FakeServer[] = [];
let subs: Subscription[] = [];
afterEach(async () => {
  await Promise.all(subs.map((s) => s.close()));
  await Promise.all(servers.map((s) => s.close()));
  subs = [];
  servers = [];
});

async function fake(): Promise<FakeServer> {
  const s = await FakeServer.start();
  servers.push(s);
  return s;
}
function track(s: Subscription): Subscription {
  subs.push(s);
  return s;
}

describe('parseSubscribeUrl', () => {
  it('moves the user-info token into a Basic header and strips it', () => {
    const p = parseSubscribeUrl('ws://abc123@host:8080/sub/foo/?since=0#x');
    expect(p.url).toBe('ws://host:8080/sub/foo/');
    expect(p.authorization).toBe(`Basic ${Buffer.from('abc123:').toString('base64')}`);
    expect(p.since).toBe('0');
    expect(p.recursive).toBe(true);
  });

  it('maps http(s) to ws(s) and prefers an explicit token as Bearer', () => {
    expect(parseSubscribeUrl('https://t@example.com/sub/a', 'other')).toMatchObject({
      url: 'wss://example.com/sub/a',
      authorization: 'Bearer other',
      recursive: false,
    });
    expect(parseSubscribeUrl('http://example.com/sub/a').url).toBe('ws://example.com/sub/a');
  });

  it('rejects bad URLs with a clear message that never contains the token', () => {
    for (const bad of ['not a url', 'ftp://secrettoken@h/sub/x', 'ws://secrettoken@h/', 'ws://h/sub/x?since=yesterday']) {
      let err: unknown;
      try {
        parseSubscribeUrl(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SubscribeError);
      expect((err as Error).message).not.toContain('secrettoken');
    }
    expect(() => subscribe('ftp://h/sub/x')).toThrow(/unsupported URL scheme/);
    expect(() => subscribe('ws://h/sub/x', { token: 'a b' })).toThrow(/invalid token/);
  });
});

describe('backoffDelay', () => {
  it('is full jitter under an exponential, capped ceiling', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(1000, 50 * 2 ** attempt);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, { minMs: 50, maxMs: 1000 });
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(ceiling);
      }
    }
  });
});

describe('subscribe (async iterator)', () => {
  it('receives messages in order with topic, headers, id and exact bytes; sends the token and subprotocol', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url('/sub/foo', 'tok123').replace('ws://', 'http://'), FAST));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    const [conn] = await server.connections(1);
    expect(conn.authorization).toBe(`Basic ${Buffer.from('tok123:').toString('base64')}`);
    expect(conn.ws.protocol).toBe('hookbot.v1');
    expect(conn.since).toBeUndefined();

    const binary = Buffer.from([0, 1, 2, 255, 254]);
    const sent = [
      server.publish('{"hello":"world"}', 'foo', { 'content-type': 'application/json', 'x-github-event': 'push' }),
      server.publish(binary),
      server.publish('third'),
    ];
    const got = await take(it, 3);
    expect(got.map((m) => m.id)).toEqual(sent.map((m) => m.id));
    expect(got[0].headers).toEqual({ 'content-type': 'application/json', 'x-github-event': 'push' });
    expect(got[0].topic).toBe('foo');
    expect(got[0].body.toString()).toBe('{"hello":"world"}');
    expect(Buffer.compare(got[1].body, binary)).toBe(0);
    expect(got[2].time).toBe(sent[2].time);
    // The last one handed out is not processed until the next is requested.
    expect(sub.lastId).toBe(sent[1].id);
    await it.return!();
    expect(sub.lastId).toBe(sent[2].id);
    await sub.closed;
  });

  it('uses Bearer for options.token and the unsafe header when asked', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url('/unsafe/sub/foo', ''), { ...FAST, token: 'bearer-tok', unsafe: true }));
    await waitFor(sub, 'live');
    const [conn] = await server.connections(1);
    expect(conn.authorization).toBe('Bearer bearer-tok');
    expect(conn.unsafe).toBe('I understand the security implications');
  });

  it('reconnects after a drop and resumes by id: nothing missed, nothing twice', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url(), FAST));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    const a = [server.publish('1'), server.publish('2')];
    expect((await take(it, 2)).map((m) => m.id)).toEqual(a.map((m) => m.id));

    server.dropAll();
    // Published while the client is away: only in history.
    const b = [server.publish('3'), server.publish('4')];
    const conns = await server.connections(2);
    expect(conns[1].since).toBe(a[1].id);
    const c = server.publish('5');
    const got = await take(it, 3);
    expect(got.map((m) => m.body.toString())).toEqual(['3', '4', '5']);
    expect(got.map((m) => m.id)).toEqual([...b, c].map((m) => m.id));
  });

  it('drops replayed duplicates (ids at or below the last one received)', async () => {
    const server = await fake();
    server.replayAll = true;
    const sub = track(subscribe(server.url(), FAST));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    server.publish('1');
    server.publish('2');
    await take(it, 2);
    server.dropAll();
    await server.connections(2);
    server.publish('3');
    const [next] = await take(it, 1);
    expect(next.body.toString()).toBe('3');
  });

  it('reports a gap in stream order through onGap and the gap event', async () => {
    const server = await fake();
    const gaps: string[] = [];
    const events: string[] = [];
    const sub = track(subscribe(server.url(), { ...FAST, since: '1600000000000-0', onGap: (s) => gaps.push(s) }));
    sub.on('gap', (s) => events.push(s));
    server.gapOnReplay = true;
    server.publish('kept');
    const it = sub[Symbol.asyncIterator]();
    const [m] = await take(it, 1);
    expect(m.body.toString()).toBe('kept');
    expect(gaps).toEqual(['1600000000000-0']);
    expect(events).toEqual(['1600000000000-0']);
    expect(server.conns[0].since).toBe('1600000000000-0');
  });

  it('detects a connection that stalls without closing and recovers within the deadline', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url(), { ...FAST, deadlineMs: 500 }));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    const first = server.publish('before');
    await take(it, 1);

    // The path goes dark: no frames, no pongs, but the TCP connection stays up.
    server.stalled = true;
    const stalledAt = Date.now();
    const lost = server.publish('sent into the void'); // history has it; the client will replay it
    server.conns[0].ws.pause(); // the server stops reading the client too
    await waitFor(sub, 'disconnect', 3000);
    const detectedMs = Date.now() - stalledAt;
    expect(detectedMs).toBeLessThan(500 + 300);
    server.stalled = false;
    const conns = await server.connections(2, 3000);
    expect(conns[1].since).toBe(first.id);
    const [m] = await take(it, 1);
    expect(m.id).toBe(lost.id);
  });

  it('fails fast on a refused handshake (401) with a clear error and no retry', async () => {
    const server = await fake();
    server.refuse = 401;
    const sub = track(subscribe(server.url('/sub/foo', 'secrettoken'), FAST));
    const it = sub[Symbol.asyncIterator]();
    const err = await it.next().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SubscribeError);
    expect((err as SubscribeError).status).toBe(401);
    expect((err as Error).message).toMatch(/401/);
    expect((err as Error).message).not.toContain('secrettoken');
    await expect(sub.closed).rejects.toThrow(/401/);
    // Give a retry a chance to happen; there must be none.
    await new Promise((r) => setTimeout(r, 200));
    expect(server.conns.length).toBe(0);
  });

  it('names the problem from a 400 body and fails on a server without hookbot.v1', async () => {
    const server = await fake();
    server.refuse = 400;
    server.refuseBody = 'X-Hookbot-Unsafe-Is-Ok header required.';
    const sub = track(subscribe(server.url('/unsafe/sub/foo'), FAST));
    await expect(sub.closed).rejects.toThrow(/400.*Unsafe-Is-Ok header required/);

    server.refuse = 0;
    server.noSubprotocol = true;
    const sub2 = track(subscribe(server.url(), FAST));
    await expect(sub2.closed).rejects.toThrow(/does not speak hookbot\.v1/);
  });

  it('retries a 503 handshake with backoff until the server accepts', async () => {
    const server = await fake();
    server.refuse = 503;
    const sub = track(subscribe(server.url(), FAST));
    const reconnects: number[] = [];
    sub.on('reconnect', (r) => reconnects.push(r.attempt));
    while (reconnects.length < 3) await new Promise((r) => setTimeout(r, 20));
    server.refuse = 0;
    await waitFor(sub, 'live');
    expect(reconnects.slice(0, 3)).toEqual([1, 2, 3]);
  });

  it('close() ends a pending next() and stops reconnecting', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url(), FAST));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    const pending = it.next();
    await sub.close();
    expect(await pending).toEqual({ done: true, value: undefined });
    await sub.closed;
    await new Promise((r) => setTimeout(r, 150));
    expect(server.conns.length).toBe(1);
  });

  it('for-await with break counts the current message processed and closes; an AbortSignal closes too', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url(), FAST));
    sub.once('live', () => {
      server.publish('a');
      server.publish('b');
    });
    const seen: string[] = [];
    for await (const m of sub) {
      seen.push(m.body.toString());
      if (seen.length === 2) break;
    }
    expect(seen).toEqual(['a', 'b']);
    expect(sub.lastId).toBe(server.history[1].id);
    await sub.closed;
    expect(() => sub[Symbol.asyncIterator]()).toThrow(/already consumed/);

    const ac = new AbortController();
    const sub2 = track(subscribe(server.url(), { ...FAST, signal: ac.signal }));
    await waitFor(sub2, 'live');
    ac.abort();
    await sub2.closed;
    expect(sub2.connected).toBe(false);
  });

  it('with a slow consumer, steps away at maxBuffered and resumes by id without loss or duplicates', async () => {
    const server = await fake();
    const sub = track(subscribe(server.url(), { ...FAST, maxBuffered: 5 }));
    const it = sub[Symbol.asyncIterator]();
    await waitFor(sub, 'live');
    const disconnected = waitFor(sub, 'disconnect');
    const sent = Array.from({ length: 10 }, (_, i) => server.publish(`m${i}`));
    await disconnected; // it stepped away to catch up
    // Published while it is away: only in history.
    sent.push(...Array.from({ length: 20 }, (_, i) => server.publish(`n${i}`)));
    const got: string[] = [];
    for (let i = 0; i < 30; i++) {
      const [m] = await take(it, 1);
      got.push(m.id);
      await new Promise((r) => setTimeout(r, 2));
    }
    expect(got).toEqual(sent.map((m) => m.id));
    expect(server.conns.length).toBeGreaterThanOrEqual(2);
    expect(server.conns[1].since).toBe(sent[9].id);
  });
});

describe('subscribe (callback) and state file', () => {
  it('calls onMessage one at a time and persists the id only after it resolves', async () => {
    const server = await fake();
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-client-'));
    const stateFile = join(dir, 'state');
    const seen: string[] = [];
    let active = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const sub = track(
      subscribe(server.url(), {
        ...FAST,
        stateFile,
        onMessage: async (m) => {
          active++;
          expect(active).toBe(1);
          seen.push(m.body.toString());
          if (m.body.toString() === '1') await gate;
          active--;
        },
      }),
    );
    await waitFor(sub, 'live');
    const a = server.publish('1');
    const b = server.publish('2');
    while (seen.length < 1) await new Promise((r) => setTimeout(r, 5));
    expect(existsSync(stateFile)).toBe(false);
    release();
    while (seen.length < 2 || sub.lastId !== b.id) await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual(['1', '2']);
    expect(readFileSync(stateFile, 'utf8')).toBe(`${b.id}\n`);
    expect(readdirSync(dir)).toEqual(['state']); // no temp files left
    await sub.close();
    expect(a.id < b.id).toBe(true);

    // A new client resumes after what was processed.
    const c = server.publish('3');
    const got: string[] = [];
    const sub2 = track(subscribe(server.url(), { ...FAST, stateFile, onMessage: (m) => void got.push(m.id) }));
    while (got.length < 1) await new Promise((r) => setTimeout(r, 5));
    expect(server.conns.at(-1)!.since).toBe(b.id);
    expect(got).toEqual([c.id]);
    await sub2.close();
    expect(readStateFile(stateFile)).toBe(c.id);
  });

  it('stops with the handler error and does not mark that message processed', async () => {
    const server = await fake();
    const sub = track(
      subscribe(server.url(), {
        ...FAST,
        onMessage: (m) => {
          if (m.body.toString() === 'bad') throw new Error('handler broke');
        },
      }),
    );
    await waitFor(sub, 'live');
    const ok = server.publish('ok');
    server.publish('bad');
    await expect(sub.closed).rejects.toThrow('handler broke');
    expect(sub.lastId).toBe(ok.id);
  });

  it('refuses a state file that does not hold an id', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-client-'));
    const stateFile = join(dir, 'state');
    writeFileSync(stateFile, 'garbage\n');
    expect(() => subscribe('ws://127.0.0.1:1/sub/x', { stateFile })).toThrow(/does not hold a message id/);
  });
});
