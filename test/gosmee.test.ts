/**
 * gosmee clients against hookbot serve --smee, with the requests exactly as
 * gosmee makes them: v0.22's `GET <channel>?stream=<id>` (r3labs/sse: a
 * gosmee User-Agent, Cache-Control, Connection, X-Accel-Buffering) and
 * current clients' `GET <base>/events/<id>`, each plus what Go's transport
 * adds. The stream is read as gosmee reads it (id/event/data fields, `ready`
 * and comments skipped), and each message re-delivered as gosmee does:
 * `bodyB` decoded, with the X-*, User-Agent and Content-Type headers, to an
 * app that checks the GitHub signature over the exact bytes.
 */
import { randomBytes } from 'node:crypto';
import { request, type ClientRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { githubSignature, startTestServer, Waiters, WebhookApp } from './helpers.js';

const SECRET = 'gosmee-secret';

interface GoEvent {
  id: string;
  event: string;
  data: string;
}

/** The two request shapes, headers as gosmee sets them (Go adds Host and Accept-Encoding: gzip). */
const CLIENTS = {
  'v0.22 (?stream=, gosmee User-Agent)': (channelUrl: string, channel: string) => ({
    url: `${channelUrl}?stream=${channel}`,
    headers: { 'Cache-Control': 'no-cache', Accept: 'text/event-stream', Connection: 'keep-alive', 'User-Agent': 'gosmee/v0.22.1', 'X-Accel-Buffering': 'no', 'Accept-Encoding': 'gzip' },
  }),
  'current (/events/<id>)': (channelUrl: string, channel: string) => ({
    url: `${channelUrl.slice(0, -channel.length - 1)}/events/${channel}`,
    headers: { Accept: 'text/event-stream', 'Cache-Control': 'no-cache', 'User-Agent': 'gosmee/v0.32.0', 'X-Accel-Buffering': 'no', 'Accept-Encoding': 'gzip' },
  }),
};

/** A stream read line by line as gosmee's client does, keeping every event it dispatches. */
class GosmeeStream {
  readonly events: GoEvent[] = [];
  status = 0;
  contentType = '';
  #req: ClientRequest;
  readonly #waiters = new Waiters();

  constructor(url: string, headers: Record<string, string>) {
    this.#req = request(url, { headers }, (res) => {
      this.status = res.statusCode ?? 0;
      this.contentType = String(res.headers['content-type']);
      let buffered = '';
      let event: GoEvent = { id: '', event: '', data: '' };
      let data: string[] = [];
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffered += chunk;
        for (let nl = buffered.indexOf('\n'); nl !== -1; nl = buffered.indexOf('\n')) {
          const line = buffered.slice(0, nl).replace(/\r$/, '');
          buffered = buffered.slice(nl + 1);
          if (line === '') {
            if (data.length > 0 || event.event !== '' || event.id !== '') this.events.push({ ...event, data: data.join('\n') });
            event = { id: '', event: '', data: '' };
            data = [];
          } else if (!line.startsWith(':')) {
            const colon = line.indexOf(':');
            const field = colon === -1 ? line : line.slice(0, colon);
            const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') event.id = value;
            else if (field === 'event') event.event = value;
            else if (field === 'data') data.push(value);
          }
        }
        this.#wake();
      });
      res.on('end', () => this.#wake());
      this.#wake();
    });
    this.#req.on('error', () => this.#wake());
    this.#req.end();
  }

  #wake(): void {
    this.#waiters.wake();
  }

  /** What gosmee forwards: events that are neither control (`ready`) nor a gap, nor empty. */
  messages(): GoEvent[] {
    return this.events.filter((e) => e.data !== 'ready' && e.event === '' && e.data !== '');
  }

  until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    return this.#waiters.until(predicate, what, timeoutMs, () => JSON.stringify(this.events).slice(-400));
  }

  close(): void {
    this.#req.destroy();
  }
}

/** gosmee's re-delivery of one message: the decoded bytes, with X-*, User-Agent and Content-Type. */
async function replay(e: GoEvent, target: string): Promise<number> {
  const payload = JSON.parse(e.data) as Record<string, string>;
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(payload)) if (k.startsWith('x-') || k === 'user-agent' || k === 'content-type') headers[k] = v;
  const res = await fetch(target, { method: 'POST', headers, body: new Uint8Array(Buffer.from(payload.bodyB, 'base64')) });
  return res.status;
}

let server: HookbotServer;
let app: WebhookApp;
const streams: GosmeeStream[] = [];
beforeAll(async () => {
  server = await startTestServer({ smee: true, history: '5' });
  app = await WebhookApp.start(SECRET);
});
afterAll(async () => {
  for (const s of streams) s.close();
  await app.close();
  await server.close();
});

async function mint(): Promise<{ url: string; id: string }> {
  const url = (await fetch(server.url + '/new', { redirect: 'manual' })).headers.get('location')!;
  return { url, id: url.slice(url.lastIndexOf('/') + 1) };
}

async function open(url: string, headers: Record<string, string>): Promise<GosmeeStream> {
  const s = new GosmeeStream(url, headers);
  streams.push(s);
  await s.until(() => s.events.some((e) => e.data === 'ready'), 'ready');
  expect([s.status, s.contentType]).toEqual([200, 'text/event-stream']);
  return s;
}

async function publish(url: string, body: Buffer, headers: Record<string, string>): Promise<string> {
  const res = await fetch(url, { method: 'POST', body: new Uint8Array(body), headers });
  expect(res.status).toBe(200);
  return res.headers.get('x-hookbot-message-id')!;
}

/** Bodies a re-serialising relay would break: the exact bytes are what the signature covers. */
const BODIES: Array<[string, Buffer, string]> = [
  ['non-canonical JSON', Buffer.from('{ "b" : 2,\r\n  "a": [1, 2.50, 1e3], "e": "caf\\u00e9", "b": 3 }\n'), 'application/json'],
  ['binary', Buffer.concat([Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0xc3, 0x28]), randomBytes(2048)]), 'application/octet-stream'],
  ['form-encoded', Buffer.from('payload=%7B%22a%22%3A1%7D&x=%E2%9C%93'), 'application/x-www-form-urlencoded'],
];

describe.each(Object.entries(CLIENTS))('gosmee %s', (_name, shape) => {
  it('starts with data: ready, then each message with bodyB decoding to exactly the posted bytes, which verify at the app', async () => {
    const { url, id } = await mint();
    const { url: streamUrl, headers } = shape(url, id);
    const s = await open(streamUrl, headers);
    // The start id rides on ready, so an r3labs client (which keeps any id) resumes from it; nothing before it.
    expect(s.events[0]).toMatchObject({ event: '', data: 'ready' });
    expect(s.events[0].id).toMatch(/^\d+-0$/);

    const ids: string[] = [];
    for (const [, body, type] of BODIES) {
      ids.push(await publish(url, body, { 'content-type': type, 'user-agent': 'GitHub-Hookshot/1', 'x-github-event': 'push', 'x-hub-signature-256': githubSignature(SECRET, body) }));
    }
    await s.until(() => s.messages().length === BODIES.length, `${BODIES.length} messages`);
    const before = app.deliveries.length;
    for (const [i, e] of s.messages().entries()) {
      const payload = JSON.parse(e.data);
      expect(e.id).toBe(ids[i]);
      expect(Buffer.from(payload.bodyB, 'base64').equals(BODIES[i][1]), BODIES[i][0]).toBe(true);
      expect(payload).toMatchObject({ 'content-type': BODIES[i][2], 'x-github-event': 'push', 'content-length': String(BODIES[i][1].length), timestamp: ids[i].split('-')[0] });
      expect(Object.keys(payload)).toEqual([...Object.keys(payload)].sort());
      expect(await replay(e, app.url)).toBe(200);
    }
    expect(app.deliveries.slice(before).map((d) => d.body.toString('base64'))).toEqual(BODIES.map(([, b]) => b.toString('base64')));
  });

  it('resumes from Last-Event-ID, and announces history it no longer has as event: gosmee-gap', async () => {
    const { url, id } = await mint();
    const { url: streamUrl, headers } = shape(url, id);
    const first = await open(streamUrl, headers);
    const seen = await publish(url, Buffer.from('{"n":0}'), { 'content-type': 'application/json' });
    await first.until(() => first.messages().length === 1, 'first message');
    first.close();

    const missed: string[] = [];
    for (let n = 1; n <= 2; n++) missed.push(await publish(url, Buffer.from(`{"n":${n}}`), { 'content-type': 'application/json' }));
    const resumed = await open(streamUrl, { ...headers, 'Last-Event-ID': seen });
    await resumed.until(() => resumed.messages().length === 2, 'the missed messages');
    expect(resumed.events[0]).toEqual({ id: '', event: '', data: 'ready' });
    expect(resumed.messages().map((e) => e.id)).toEqual(missed);
    resumed.close();

    // History keeps 5: resuming from the first of 8 misses two.
    for (let n = 3; n <= 7; n++) await publish(url, Buffer.from(`{"n":${n}}`), { 'content-type': 'application/json' });
    const gapped = await open(streamUrl, { ...headers, 'Last-Event-ID': seen });
    await gapped.until(() => gapped.messages().length === 5, 'the retained messages');
    expect(gapped.events[1]).toEqual({ id: '', event: 'gosmee-gap', data: JSON.stringify({ error: 'missed_history', requested_id: seen }) });
    expect(gapped.messages().map((e) => JSON.parse(Buffer.from(JSON.parse(e.data).bodyB, 'base64').toString()).n)).toEqual([3, 4, 5, 6, 7]);
  });
});

describe('which format a channel stream speaks', () => {
  it('is smee-client\'s for an EventSource without gosmee\'s marks, gosmee\'s with either mark or on /events/', async () => {
    const { url, id } = await mint();
    const smee = new GosmeeStream(url, { Accept: 'text/event-stream' });
    const byAgent = new GosmeeStream(url, { Accept: 'text/event-stream', 'User-Agent': 'gosmee/dev' });
    const byQuery = new GosmeeStream(`${url}?stream=${id}`, { Accept: 'text/event-stream' });
    // gosmee's own server streams /events/<id> whatever the Accept header says.
    const events = new GosmeeStream(`${server.url}/events/${id}`, {});
    streams.push(smee, byAgent, byQuery, events);
    await smee.until(() => smee.events.some((e) => e.event === 'ready'), 'smee ready');
    for (const s of [byAgent, byQuery, events]) await s.until(() => s.events.some((e) => e.data === 'ready'), 'gosmee ready');
    expect((await fetch(`${server.url}/events/${id}`, { method: 'POST', body: 'x' })).status).toBe(405);
  });
});
