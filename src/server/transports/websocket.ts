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
import { WebSocket, WebSocketServer } from 'ws';
import { CloseCode, HttpError } from '../../protocol/errors.js';
import { isRecursive } from '../../protocol/topics.js';
import { admit, SINCE_QUERY } from '../admission.js';
import type { Context } from '../context.js';
import { asHttpError, refuseSocket } from '../http/respond.js';
import type { Connection, EndReason, Session, Sessions } from '../subscriber.js';
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

/**
 * A subscriber's WebSocket, made by `ws` (its `WebSocket` option) and used as
 * its session's connection: it ends with a close frame. Its event listeners
 * are shared functions that find their session here, so a connection holds
 * no closures of its own (idle subscribers are counted in thousands).
 */
class SubscriberSocket extends WebSocket implements Connection {
  session: Session | undefined;
  /** Cleared by each ping, set by each pong: a subscriber that misses one is dropped. */
  alive = true;

  end(reason: EndReason): void {
    const [code, text] = CLOSES[reason];
    this.close(code, text);
    // The close frame queues behind a slow subscriber's backlog; end the connection soon regardless.
    if (reason === 'slow') setTimeout(() => this.terminate(), SLOW_CLOSE_GRACE_MS).unref();
  }

  /** A subscriber that did not answer the last ping is dropped; the others are pinged again. */
  heartbeat(): void {
    if (!this.alive) {
      this.terminate();
      return;
    }
    this.alive = false;
    this.ping();
  }
}

// ws types a listener's `this` as its base class; every socket here is a SubscriberSocket.
function onPong(this: WebSocket): void {
  (this as SubscriberSocket).alive = true;
}

function onMessage(this: WebSocket): void {
  this.close(CloseCode.POLICY_VIOLATION, 'subscribers must not send data');
}

function onClose(this: WebSocket): void {
  (this as SubscriberSocket).session?.disconnected();
}

/** Until `ws` takes the socket over, an error (a reset mid-handshake) just ends it. */
function destroyOnError(this: Duplex): void {
  this.destroy();
}

export class WebSocketTransport {
  readonly #ctx: Context;
  readonly #sessions: Sessions;
  readonly #wss: WebSocketServer;
  readonly #pingTimer: NodeJS.Timeout;
  readonly #onError: (this: WebSocket, err: Error) => void;

  constructor(ctx: Context, sessions: Sessions) {
    this.#ctx = ctx;
    this.#sessions = sessions;
    this.#wss = new WebSocketServer({
      noServer: true,
      WebSocket: SubscriberSocket,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: MAX_INCOMING_FRAME,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    // Every answer, the 101 included, says its content is what it claims.
    this.#wss.on('headers', (headers) => headers.push('X-Content-Type-Options: nosniff'));
    this.#pingTimer = setInterval(() => sessions.each('ws', (s) => s.heartbeat()), ctx.config.pingIntervalMs);
    this.#pingTimer.unref();
    const log = ctx.log;
    this.#onError = function (err) {
      log.debug({ topic: (this as SubscriberSocket).session?.topic, err: err.message }, 'subscriber protocol error');
    };
  }

  /** The server's `upgrade` listener for WebSocket requests. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', destroyOnError);
    let admitted;
    try {
      admitted = admit(this.#ctx, req, 'ws', [SINCE_QUERY]);
    } catch (err) {
      if (!(err instanceof HttpError)) this.#ctx.log.error({ err: (err as Error).message }, 'subscribe failed');
      return refuseSocket(socket, asHttpError(err));
    }
    const { endpoint, since, slot } = admitted;
    // Held until the connection ends, whether or not the handshake completes.
    this.#ctx.limits.releaseOnClose(socket as Socket, slot);
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws as SubscriberSocket, socket as Socket, endpoint.topic, since));
  }

  #accept(ws: SubscriberSocket, socket: Socket, topic: string, since: string | undefined): void {
    const encoder = ws.protocol === SUBPROTOCOL ? hookbotV1Encoder : isRecursive(topic) ? framedEncoder : rawEncoder;
    const session = this.#sessions.open({ transport: 'ws', topic, encoder, socket, connection: ws });
    ws.session = session;
    ws.on('pong', onPong);
    ws.on('message', onMessage);
    ws.on('error', this.#onError);
    ws.on('close', onClose);
    session.start(since);
  }

  /** Stops pinging; the sessions themselves are closed by Sessions.closeAll(). */
  close(): void {
    clearInterval(this.#pingTimer);
  }
}
