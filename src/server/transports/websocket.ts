/**
 * WebSocket subscribers: `GET /sub/<topic>` with `Upgrade: websocket`.
 *
 * Every check is the admission pipeline's, run before the handshake
 * completes; a refusal is an HTTP answer on the raw socket. `ws` then does the
 * handshake, reads control frames and closes; data frames go out through the
 * session's outbox, pre-built per message by the chosen format (raw, framed
 * for recursive topics, or `hookbot.v1` when offered).
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { CloseCode, HttpError } from '../../protocol/errors.js';
import { isRecursive } from '../../protocol/topics.js';
import { admit, SINCE_QUERY } from '../admission.js';
import type { Context } from '../context.js';
import { asHttpError, refuseSocket } from '../http/respond.js';
import type { Connection, EndReason, Sessions } from '../subscriber.js';
import { hookbotV1Encoder, SUBPROTOCOL } from './hookbot-v1.js';
import { framedEncoder, rawEncoder } from './raw.js';

export { SUBPROTOCOL };
export const CLOSE_MISSED = CloseCode.MISSED;

/** Frames a subscriber may send (pings, pongs, close) never need more. */
const MAX_INCOMING_FRAME = 4096;

/** How long a close frame may take behind a slow subscriber's backlog before the connection is cut. */
const SLOW_CLOSE_GRACE_MS = 1000;

const CLOSES: Record<EndReason, [code: number, reason: string]> = {
  slow: [CloseCode.TRY_AGAIN_LATER, 'subscriber too slow'],
  shutdown: [CloseCode.GOING_AWAY, 'server shutting down'],
  'resume-failed': [CloseCode.TRY_AGAIN_LATER, 'history unavailable, try again later'],
  missed: [CloseCode.MISSED, 'messages were missed; reconnect with ?since=<last id>'],
};

/** A WebSocket as a session's connection: it ends with a close frame. */
class WsConnection implements Connection {
  readonly #ws: WebSocket;
  /** Cleared by each ping, set by each pong: a subscriber that misses one is dropped. */
  alive = true;

  constructor(ws: WebSocket) {
    this.#ws = ws;
  }

  end(reason: EndReason): void {
    const [code, text] = CLOSES[reason];
    this.#ws.close(code, text);
    // The close frame queues behind a slow subscriber's backlog; end the connection soon regardless.
    if (reason === 'slow') setTimeout(() => this.#ws.terminate(), SLOW_CLOSE_GRACE_MS).unref();
  }

  /** A subscriber that did not answer the last ping is dropped; the others are pinged again. */
  heartbeat(): void {
    if (!this.alive) {
      this.#ws.terminate();
      return;
    }
    this.alive = false;
    this.#ws.ping();
  }
}

export class WebSocketTransport {
  readonly #ctx: Context;
  readonly #sessions: Sessions;
  readonly #wss: WebSocketServer;
  readonly #pingTimer: NodeJS.Timeout;

  constructor(ctx: Context, sessions: Sessions) {
    this.#ctx = ctx;
    this.#sessions = sessions;
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: MAX_INCOMING_FRAME,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    // Every answer, the 101 included, says its content is what it claims.
    this.#wss.on('headers', (headers) => headers.push('X-Content-Type-Options: nosniff'));
    this.#pingTimer = setInterval(() => sessions.each('ws', (s) => s.heartbeat()), ctx.config.pingIntervalMs);
    this.#pingTimer.unref();
  }

  /** The server's `upgrade` listener for WebSocket requests. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    let admitted;
    try {
      admitted = admit(this.#ctx, req, 'ws', [SINCE_QUERY]);
    } catch (err) {
      if (!(err instanceof HttpError)) this.#ctx.log.error({ err: (err as Error).message }, 'subscribe failed');
      return refuseSocket(socket, asHttpError(err));
    }
    const { endpoint, since, slot } = admitted;
    // Held until the connection ends, whether or not the handshake completes.
    socket.once('close', slot.release);
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, socket as Socket, endpoint.topic, since));
  }

  #accept(ws: WebSocket, socket: Socket, topic: string, since: string | undefined): void {
    const log = this.#ctx.log;
    const connection = new WsConnection(ws);
    const encoder = ws.protocol === SUBPROTOCOL ? hookbotV1Encoder : isRecursive(topic) ? framedEncoder : rawEncoder;
    const session = this.#sessions.open({ transport: 'ws', topic, encoder, socket, connection });
    ws.on('pong', () => {
      connection.alive = true;
    });
    ws.on('message', () => {
      ws.close(CloseCode.POLICY_VIOLATION, 'subscribers must not send data');
    });
    ws.on('error', (err) => {
      log.debug({ topic, err: err.message }, 'subscriber protocol error');
    });
    ws.on('close', () => session.disconnected());
    session.start(since);
  }

  /** Stops pinging; the sessions themselves are closed by Sessions.closeAll(). */
  close(): void {
    clearInterval(this.#pingTimer);
  }
}
