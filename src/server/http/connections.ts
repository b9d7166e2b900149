/**
 * Connection hygiene: what a client can hold open and for how long, before
 * any request is routed. Timeouts for headers and idle keep-alive, a cap on
 * connections per client address, malformed requests answered and closed,
 * and the rule that only a WebSocket subscribe takes the upgrade path.
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { HttpError, Status } from '../../protocol/errors.js';
import type { Context } from '../context.js';
import { refuseSocket } from './respond.js';
import { isOpsPath } from './ops.js';

/** How often node checks its header and request timeouts; the default (30 s) would let a timeout run that much late. */
const TIMEOUT_CHECK_MS = 1000;

/** Requests that offered an upgrade we did not take: served as plain HTTP/1.1, then the connection is closed. */
const DECLINED_UPGRADE = Symbol('declined upgrade');

/** Whether a request asks to become a WebSocket subscriber (GET, Upgrade: websocket, on a topic path). */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  if (req.method !== 'GET') return false;
  const upgrade = req.headers.upgrade;
  if (upgrade === undefined || !/(^|,)\s*websocket\s*(,|$)/i.test(upgrade)) return false;
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  return path !== '/status' && !isOpsPath(path);
}

/** Whether this request offered an upgrade that is being served as plain HTTP instead. */
export function declinedUpgrade(req: IncomingMessage): boolean {
  return (req as IncomingMessage & { [DECLINED_UPGRADE]?: boolean })[DECLINED_UPGRADE] === true;
}

/** What node's parser hands onIncoming: a request with node's own upgrade flag. */
type ParsedRequest = IncomingMessage & { upgrade: boolean; [DECLINED_UPGRADE]?: boolean };

interface ParserWithIncoming {
  onIncoming?: (req: ParsedRequest, keepAlive: boolean) => unknown;
}

/**
 * Node sends every request with `Upgrade` and `Connection: upgrade` to the
 * 'upgrade' listener, body unread, so `POST /pub/x` with an h2c offer (curl
 * --http2) or `GET /status` with `Upgrade: websocket` could never be served.
 * Node decides that per request in the parser's onIncoming, right after the
 * headers: this wraps it (once per connection) so only WebSocket subscribes
 * keep the upgrade flag and everything else takes the normal request path.
 */
function routeUpgrades(socket: Socket): void {
  const parser = (socket as Socket & { parser?: ParserWithIncoming }).parser;
  const onIncoming = parser?.onIncoming;
  if (!parser || !onIncoming) return;
  parser.onIncoming = (req, keepAlive) => {
    if (req.upgrade && !isWebSocketUpgrade(req)) {
      req.upgrade = false;
      req[DECLINED_UPGRADE] = true;
    }
    return onIncoming(req, keepAlive);
  };
}

/** Sets the server's timeouts and wires connection tracking, upgrade routing and client-error answers. */
export function configureConnections(server: Server, ctx: Context, tls: boolean, sockets: Set<Socket>): void {
  const { config, limits } = ctx;
  server.headersTimeout = config.headerTimeoutMs;
  // A backstop only: publish bodies have their own, tighter --body-timeout (http/publish.ts).
  server.requestTimeout = config.headerTimeoutMs + config.bodyTimeoutMs + 5000;
  server.keepAliveTimeout = config.idleTimeoutMs;
  // One shared listener, not a closure per connection: it is all the server's own bookkeeping of a closed socket.
  const closed = function (this: Socket): void {
    sockets.delete(this);
    limits.socketClosed(this);
  };
  // The parser sits on the TLS socket for HTTPS, so that is the one whose requests we see.
  server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', closed);
    limits.trackConnection(socket);
    routeUpgrades(socket);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      return refuseSocket(socket, new HttpError(Status.REQUEST_TIMEOUT, `request not received in time (--header-timeout ${config.headerTimeoutMs} ms, --body-timeout ${config.bodyTimeoutMs} ms)`));
    }
    if (err.code === 'HPE_HEADER_OVERFLOW') return refuseSocket(socket, new HttpError(Status.HEADER_FIELDS_TOO_LARGE, 'malformed HTTP request'));
    refuseSocket(socket, new HttpError(Status.BAD_REQUEST, 'malformed HTTP request'));
  });
}

/**
 * After refusing a request whose body may still be arriving: the answer goes
 * out with `Connection: close`, then our side of the connection is shut and
 * whatever the client still sends is read and dropped, for at most
 * LINGER_MS or LINGER_BYTES, before the socket is closed (nginx's lingering
 * close). Closing at once would make the kernel answer the unread bytes with
 * a reset, and many clients then report the reset instead of our answer.
 */
export const LINGER_MS = 5000;
export const LINGER_BYTES = 64 * 1024 * 1024;
const lingering = new WeakSet<Socket>();

export function lingeringClose(req: IncomingMessage): void {
  const socket = req.socket;
  if (lingering.has(socket)) return;
  lingering.add(socket);
  // The body is pulled off the wire and dropped, never buffered.
  req.resume();
  // Node calls destroySoon() on a Connection: close socket once the answer is written.
  socket.destroySoon = () => {
    socket.end();
    let seen = 0;
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
    };
    const timer = setTimeout(done, LINGER_MS);
    timer.unref();
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > LINGER_BYTES) done();
    });
    socket.once('end', done);
  };
}

/** How often node checks header and request timeouts: passed to createServer. */
export const SERVER_OPTIONS = { connectionsCheckingInterval: TIMEOUT_CHECK_MS } as const;
