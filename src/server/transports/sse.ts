/**
 * Server-Sent Events subscribers: `GET /sub/<topic>` with `Accept: text/event-stream`.
 *
 * The same admission pipeline as WebSocket, then a response head and a raw
 * stream: the response is sent without chunked encoding (the connection
 * closes when the stream ends, as every SSE connection does), so events are
 * written straight to the socket through the session's outbox, batched
 * exactly like WebSocket frames.
 *
 * Resume: `Last-Event-ID` (what EventSource sends when it reconnects), else
 * `?last-event-id=`, else `?since=`; the broker replays history after it and
 * switches to live with no gap and no duplicate.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { HttpError, Status } from '../../protocol/errors.js';
import { admit, type SinceSource } from '../admission.js';
import type { Context } from '../context.js';
import { asHttpError, replyError } from '../http/respond.js';
import type { Connection, Encoder, EndReason, Sessions } from '../subscriber.js';
import { sseEncoder } from './sse-events.js';

/** The freshest source first: EventSource's reconnect header beats the URL it was opened with. */
export const SSE_SINCE: readonly SinceSource[] = [
  {
    name: 'Last-Event-ID header',
    read: (req) => {
      const h = req.headers['last-event-id'];
      return Array.isArray(h) ? h[0] : h;
    },
  },
  { name: '?last-event-id=', read: (_req, query) => query.get('last-event-id') ?? undefined },
  { name: '?since=', read: (_req, query) => query.get('since') ?? undefined },
];

/** How long the end of a slow subscriber's stream may queue behind its backlog before the connection is cut. */
const SLOW_END_GRACE_MS = 1000;

/** An event stream as a session's connection: it ends by ending the response (and its socket). */
class SseConnection implements Connection {
  readonly #res: ServerResponse;

  constructor(res: ServerResponse) {
    this.#res = res;
  }

  end(reason: EndReason): void {
    const res = this.#res;
    if (!res.writableEnded) res.end();
    if (reason === 'slow') setTimeout(() => res.destroy(), SLOW_END_GRACE_MS).unref();
  }
}

/** Whether a GET asks for an event stream rather than a page or a WebSocket. */
export function wantsEventStream(req: IncomingMessage): boolean {
  return (req.headers.accept ?? '').includes('text/event-stream');
}

export class SseTransport {
  readonly #ctx: Context;
  readonly #sessions: Sessions;
  readonly #heartbeat: NodeJS.Timeout;

  constructor(ctx: Context, sessions: Sessions) {
    this.#ctx = ctx;
    this.#sessions = sessions;
    this.#heartbeat = setInterval(() => sessions.each('sse', (s) => s.heartbeat()), ctx.config.sseHeartbeatMs);
    this.#heartbeat.unref();
  }

  /** Serves a subscribe request with Accept: text/event-stream, in hookbot's format unless told another (smee channels). */
  handle(req: IncomingMessage, res: ServerResponse, encoder: Encoder = sseEncoder): void {
    let admitted;
    try {
      admitted = admit(this.#ctx, req, 'sse', SSE_SINCE);
    } catch (err) {
      if (!(err instanceof HttpError)) this.#ctx.log.error({ err: (err as Error).message }, 'subscribe failed');
      return replyError(res, asHttpError(err));
    }
    const { endpoint, since, slot } = admitted;
    // A response queued behind another on its connection (a pipelined request) has no socket,
    // and never will while the stream ahead of it stays open: nothing to stream on.
    if (!res.socket) {
      slot.release();
      return replyError(res, new HttpError(Status.BAD_REQUEST, 'an event stream cannot be pipelined behind another request'));
    }
    // Held until the connection closes, which it does with the stream. (A queued response never
    // sees 'close' of its own: the socket's is the one that comes.)
    this.#ctx.limits.releaseOnClose(res.socket, slot);
    this.#stream(res, res.socket, endpoint.topic, encoder, since);
  }

  /** Opens an event stream of `topic` in `encoder`'s format on an admitted request. */
  #stream(res: ServerResponse, socket: Socket, topic: string, encoder: Encoder, since: string | undefined): void {
    // No chunked encoding: events go straight onto the socket, and the connection closes with the stream.
    res.useChunkedEncodingByDefault = false;
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      // nginx buffers proxied responses unless told not to, which would hold events back.
      'x-accel-buffering': 'no',
    });
    res.flushHeaders();
    socket.setNoDelay(true);
    const session = this.#sessions.open({ transport: 'sse', topic, encoder, socket, connection: new SseConnection(res) });
    res.on('error', (err) => {
      this.#ctx.log.debug({ topic, err: err.message }, 'sse subscriber error');
    });
    res.on('close', () => session.disconnected());
    session.start(since);
  }

  /** Stops the heartbeats; the sessions themselves are closed by Sessions.closeAll(). */
  close(): void {
    clearInterval(this.#heartbeat);
  }
}
