/**
 * WebSocket subscribers.
 *
 * `ws` does the handshake, reads control frames and closes; data frames go
 * out through our own writer. Server frames are unmasked, so one frame (header
 * and payload in one Buffer) is built per message and the very same Buffer is
 * written to every subscriber's socket, through its Outbox (which batches a
 * subscriber's queued frames into one send).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Subscriber } from '../broker.js';
import { Outbox } from '../outbox.js';
import { parseSince, UNSAFE_HEADER, UNSAFE_HEADER_ERROR, UNSAFE_HEADER_VALUE, type Context } from '../context.js';
import { isMessageId, type Message } from '../../protocol/message.js';
import { isRecursive, parseEndpoint, PathError, type Endpoint } from '../../protocol/topics.js';

export const SUBPROTOCOL = 'hookbot.v1';

/** Frames a subscriber may send (pings, pongs, close) never need more. */
const MAX_INCOMING_FRAME = 4096;

/** Close code for a raw subscriber whose node missed messages (a private code: 4000-4999). */
export const CLOSE_MISSED = 4000;

const OPCODE_TEXT = 0x1;
const OPCODE_BINARY = 0x2;

/** One complete, unmasked, final WebSocket frame. */
export function frame(payload: Buffer, opcode = OPCODE_BINARY): Buffer {
  const len = payload.length;
  const headerLength = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(headerLength + len);
  out[0] = 0x80 | opcode;
  if (len < 126) {
    out[1] = len;
  } else if (len < 65536) {
    out[1] = 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 127;
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  payload.copy(out, headerLength);
  return out;
}

const rawFrame = (m: Message) => frame(m.body);
const framedFrame = (m: Message) => frame(m.framed());
const envelopeFrame = (m: Message) => frame(Buffer.from(JSON.stringify(m.toJSON())), OPCODE_TEXT);

export interface WsStats {
  connected: number;
  slowDisconnects: number;
}

class WsSubscriber implements Subscriber {
  readonly topic: string;
  readonly ws: WebSocket;
  readonly #key: string;
  readonly #make: (m: Message) => Buffer;
  readonly #out: Outbox;
  alive = true;

  constructor(ws: WebSocket, socket: Socket, topic: string, envelope: boolean, maxBuffer: number, onSlow: (sub: WsSubscriber) => void) {
    this.ws = ws;
    this.topic = topic;
    this.#out = new Outbox(socket, maxBuffer, () => onSlow(this));
    if (envelope) {
      this.#key = 'ws:v1';
      this.#make = envelopeFrame;
    } else if (isRecursive(topic)) {
      this.#key = 'ws:framed';
      this.#make = framedFrame;
    } else {
      this.#key = 'ws:raw';
      this.#make = rawFrame;
    }
  }

  get closed(): boolean {
    return this.#out.closed;
  }

  set closed(value: boolean) {
    this.#out.closed = value;
  }

  send(message: Message): void {
    this.#out.write(message.encoded(this.#key, this.#make));
  }

  gap(since: string): void {
    if (this.#key === 'ws:v1') this.#out.write(frame(Buffer.from(JSON.stringify({ type: 'gap', since })), OPCODE_TEXT));
  }

  lost(since: string): void {
    if (this.#key === 'ws:v1') return this.gap(since);
    // Raw frames cannot say "you missed some": close, so the client reconnects and resumes by ?since=.
    this.ws.close(CLOSE_MISSED, 'messages were missed; reconnect with ?since=<last id>');
  }

  live(): void {
    this.#out.live();
    if (this.#key === 'ws:v1') this.#out.write(LIVE_FRAME);
  }

  drained(): Promise<void> | undefined {
    return this.#out.drained();
  }
}

const LIVE_FRAME = frame(Buffer.from('{"type":"live"}'), OPCODE_TEXT);

/** Writes a plain HTTP error on a socket that asked to upgrade, then closes it. */
function refuse(socket: Duplex, status: number, reason: string, body: string, extra = ''): void {
  if (!socket.writable) return void socket.destroy();
  const payload = body.endsWith('\n') ? body : body + '\n';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n${extra}Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`,
  );
}

export class WebSocketTransport {
  readonly stats: WsStats = { connected: 0, slowDisconnects: 0 };
  readonly #ctx: Context;
  readonly #wss: WebSocketServer;
  readonly #subscribers = new Set<WsSubscriber>();
  readonly #pingTimer: NodeJS.Timeout;

  constructor(ctx: Context) {
    this.#ctx = ctx;
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: MAX_INCOMING_FRAME,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    this.#pingTimer = setInterval(() => this.#pingAll(), ctx.config.pingIntervalMs);
    this.#pingTimer.unref();
  }

  /** The server's `upgrade` listener: every check happens before the handshake completes. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const ctx = this.#ctx;
    if (ctx.shuttingDown) return refuse(socket, 503, 'Service Unavailable', '503 Service Unavailable: server is shutting down');
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    let endpoint: Endpoint;
    try {
      endpoint = parseEndpoint(q === -1 ? url : url.slice(0, q));
    } catch (err) {
      const message = err instanceof PathError ? err.message : 'bad path';
      return refuse(socket, 400, 'Bad Request', `400 Bad Request: ${message}`);
    }
    if (endpoint.action === 'pub') return refuse(socket, 400, 'Bad Request', '400 Bad Request: publish with POST; subscribe at /sub/<topic>');
    if (endpoint.unsafe && req.headers[UNSAFE_HEADER] !== UNSAFE_HEADER_VALUE) return refuse(socket, 400, 'Bad Request', UNSAFE_HEADER_ERROR);
    if (!ctx.tokens.verifyAuthorization(endpoint.path, req.headers.authorization, false)) {
      return refuse(socket, 401, 'Unauthorized', '401 Unauthorized', 'WWW-Authenticate: Basic realm="hookbot"\r\n');
    }
    const params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
    const since = parseSince(params.get('since'), isMessageId);
    if (since instanceof Error) return refuse(socket, 400, 'Bad Request', `400 Bad Request: ${since.message}`);

    const admission = ctx.limits.admitSubscriber(req);
    if (!admission.ok) {
      ctx.metrics.subscriberRefused('ws', admission.status === 503 ? 'server_limit' : 'per_ip_limit');
      const reason = admission.status === 503 ? 'Service Unavailable' : 'Too Many Requests';
      return refuse(socket, admission.status, reason, admission.message, `Retry-After: ${admission.retryAfter}\r\n`);
    }
    // Held until the connection ends, whether or not the handshake completes.
    socket.once('close', admission.release);
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, socket as Socket, endpoint.topic, since));
  }

  #accept(ws: WebSocket, socket: Socket, topic: string, since: string | undefined): void {
    const ctx = this.#ctx;
    const sub = new WsSubscriber(ws, socket, topic, ws.protocol === SUBPROTOCOL, ctx.config.maxSubscriberBuffer, (s) => this.#slow(s));
    this.#subscribers.add(sub);
    this.stats.connected++;
    ws.on('pong', () => {
      sub.alive = true;
    });
    ws.on('message', () => {
      ws.close(1008, 'subscribers must not send data');
    });
    ws.on('error', (err) => {
      ctx.log.debug({ topic, err: err.message }, 'subscriber protocol error');
    });
    ws.on('close', () => {
      sub.closed = true;
      if (this.#subscribers.delete(sub)) this.stats.connected--;
      ctx.broker.unsubscribe(sub);
    });
    ctx.broker.subscribe(sub, since).catch((err: Error) => {
      ctx.log.warn({ topic, err: err.message }, 'resume failed');
      ws.close(1013, 'history unavailable, try again later');
    });
  }

  #slow(sub: WsSubscriber): void {
    this.stats.slowDisconnects++;
    this.#ctx.broker.slowDisconnect(sub);
    // The close frame would queue behind the backlog; end the connection now.
    sub.ws.close(1013, 'subscriber too slow');
    setTimeout(() => sub.ws.terminate(), 1000).unref();
  }

  #pingAll(): void {
    for (const sub of this.#subscribers) {
      if (!sub.alive) {
        sub.ws.terminate();
        continue;
      }
      sub.alive = false;
      sub.ws.ping();
    }
  }

  get connected(): number {
    return this.stats.connected;
  }

  /** Closes every subscriber with 1001 (going away). */
  close(): void {
    clearInterval(this.#pingTimer);
    for (const sub of this.#subscribers) sub.ws.close(1001, 'server shutting down');
  }

  terminateAll(): void {
    for (const sub of this.#subscribers) sub.ws.terminate();
  }
}
