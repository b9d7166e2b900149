/**
 * Server-Sent Events subscribers: `GET /sub/<topic>` with `Accept: text/event-stream`.
 *
 * Each message becomes one event, encoded once per message and the very same
 * Buffer written to every SSE subscriber:
 *
 *     id: <message id>
 *     event: <topic>              (base64:<topic> when data is base64)
 *     data: <body line 1>
 *     data: <body line 2>
 *
 * SSE has no way to carry a CR inside `data:` (a parser treats CR, LF and CRLF
 * alike as line ends) nor bytes that are not UTF-8, so a body that is not
 * UTF-8 text or that contains a CR is sent as one base64 `data:` line under
 * `event: base64:<topic>`. Everything else is split on LF; a client joins the
 * `data:` lines with LF and gets the body back byte for byte.
 *
 * Resume: `Last-Event-ID` (what EventSource sends when it reconnects), else
 * `?last-event-id=`, else `?since=`; the broker replays history after it and
 * switches to live with no gap and no duplicate.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Subscriber } from '../broker.js';
import { parseSince, type Context } from '../context.js';
import { isMessageId, isUtf8Text, type Message } from '../../protocol/message.js';
import { Outbox } from '../outbox.js';
import type { Endpoint } from '../../protocol/topics.js';

const CR = 0x0d;

/** How long an EventSource waits before reconnecting; sent once at the start of every stream. */
const RETRY_MS = 2000;
const PREAMBLE = Buffer.from(`retry: ${RETRY_MS}\n\n`);
const PING = Buffer.from(': ping\n\n');

/** One complete SSE event for a message. */
export function sseEvent(m: Message): Buffer {
  const body = m.body;
  if (isUtf8Text(body) && !body.includes(CR)) {
    const text = body.toString('utf8');
    // A `data: ` line per LF-separated line; an empty body is one empty data line.
    return Buffer.from(`id: ${m.id}\nevent: ${m.topic}\ndata: ${text.replaceAll('\n', '\ndata: ')}\n\n`);
  }
  return Buffer.from(`id: ${m.id}\nevent: base64:${m.topic}\ndata: ${body.toString('base64')}\n\n`);
}

function gapEvent(since: string): Buffer {
  return Buffer.from(`event: gap\ndata: ${JSON.stringify({ since })}\n\n`);
}

export interface SseStats {
  connected: number;
  slowDisconnects: number;
}

class SseSubscriber implements Subscriber {
  readonly topic: string;
  readonly res: ServerResponse;
  readonly #out: Outbox;

  constructor(res: ServerResponse, topic: string, maxBuffer: number, onSlow: (sub: SseSubscriber) => void) {
    this.res = res;
    this.topic = topic;
    this.#out = new Outbox(res, maxBuffer, () => onSlow(this), () => res.socket);
  }

  get closed(): boolean {
    return this.#out.closed;
  }

  set closed(value: boolean) {
    this.#out.closed = value;
  }

  send(message: Message): void {
    this.#out.write(message.encoded('sse', sseEvent));
  }

  gap(since: string): void {
    this.#out.write(gapEvent(since));
  }

  lost(since: string): void {
    this.#out.write(gapEvent(since));
  }

  live(): void {
    this.#out.live();
  }

  drained(): Promise<void> | undefined {
    return this.#out.drained();
  }

  write(data: Buffer): void {
    this.#out.write(data);
  }

  /** Ends the stream; the socket is closed too, since an SSE connection is never reused. */
  end(): void {
    this.closed = true;
    const res = this.res;
    if (res.writableEnded) return;
    // Taken now: node detaches the socket from the response as it finishes.
    const socket = res.socket;
    res.end();
    res.once('finish', () => socket?.end());
  }
}

function refuse(res: ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void {
  const payload = message + '\n';
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(payload), ...extra });
  res.end(payload);
}

/** The id to resume after, from the freshest source: EventSource's reconnect header beats the URL it was opened with. */
function resumeId(req: IncomingMessage, query: URLSearchParams): string | undefined | Error {
  const header = req.headers['last-event-id'];
  const sources: Array<[string, string | null | undefined]> = [
    ['Last-Event-ID header', Array.isArray(header) ? header[0] : header],
    ['?last-event-id=', query.get('last-event-id')],
    ['?since=', query.get('since')],
  ];
  for (const [name, value] of sources) {
    if (value === null || value === undefined || value === '') continue;
    const since = parseSince(value, isMessageId);
    if (since instanceof Error) return new Error(since.message.replace(/^since/, name));
    return since;
  }
  return undefined;
}

export class SseTransport {
  readonly stats: SseStats = { connected: 0, slowDisconnects: 0 };
  readonly #ctx: Context;
  readonly #subscribers = new Set<SseSubscriber>();
  readonly #heartbeat: NodeJS.Timeout;

  constructor(ctx: Context) {
    this.#ctx = ctx;
    this.#heartbeat = setInterval(() => {
      for (const sub of this.#subscribers) sub.write(PING);
    }, ctx.config.sseHeartbeatMs);
    this.#heartbeat.unref();
  }

  get connected(): number {
    return this.stats.connected;
  }

  /** Called by the HTTP handler once the path, the unsafe guard and the token have been checked. */
  handle(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, query: URLSearchParams): void {
    const ctx = this.#ctx;
    if (ctx.shuttingDown) return refuse(res, 503, '503 Service Unavailable: server is shutting down', { connection: 'close' });
    const since = resumeId(req, query);
    if (since instanceof Error) return refuse(res, 400, `400 Bad Request: ${since.message}`);

    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      // nginx buffers proxied responses unless told not to, which would hold events back.
      'x-accel-buffering': 'no',
    });
    res.flushHeaders();
    res.socket?.setNoDelay(true);

    const sub = new SseSubscriber(res, endpoint.topic, ctx.config.maxSubscriberBuffer, (s) => this.#slow(s));
    this.#subscribers.add(sub);
    this.stats.connected++;
    sub.write(PREAMBLE);
    res.on('error', (err) => {
      ctx.log.debug({ topic: sub.topic, err: err.message }, 'sse subscriber error');
    });
    res.on('close', () => {
      sub.closed = true;
      if (this.#subscribers.delete(sub)) this.stats.connected--;
      ctx.broker.unsubscribe(sub);
    });
    ctx.broker.subscribe(sub, since).catch((err: Error) => {
      ctx.log.warn({ topic: sub.topic, err: err.message }, 'resume failed');
      // The client reconnects after `retry:` with its Last-Event-ID and tries again.
      ctx.broker.unsubscribe(sub);
      sub.end();
    });
  }

  #slow(sub: SseSubscriber): void {
    this.stats.slowDisconnects++;
    this.#ctx.broker.slowDisconnect(sub);
    // The end of the stream would queue behind the backlog; give it a moment, then cut the connection.
    sub.end();
    setTimeout(() => sub.res.destroy(), 1000).unref();
  }

  /** Ends every stream (shutdown); clients reconnect elsewhere with their Last-Event-ID. */
  close(): void {
    clearInterval(this.#heartbeat);
    for (const sub of this.#subscribers) {
      this.#ctx.broker.unsubscribe(sub);
      sub.end();
    }
  }
}
