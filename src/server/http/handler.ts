/**
 * HTTP endpoints. Publishing and `/status` are the hot paths and are handled
 * on node's request/response directly; the operational endpoints go through
 * express. This is the only module that imports express.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import express from 'express';
import { BackendUnavailableError, MAX_IDEMPOTENCY_KEY } from '../backends/backend.js';
import { keptHeaders, UNSAFE_HEADER, UNSAFE_HEADER_ERROR, UNSAFE_HEADER_VALUE, type Context } from '../context.js';
import { envelopeFor, ROUTER_NAMES } from '../routers/registry.js';
import { Inspector, INSPECTOR_DIR, INSPECTOR_PATH } from '../ops/inspector.js';
import type { SseTransport } from '../transports/sse.js';
import { Message } from '../../protocol/message.js';
import { parseEndpoint, PathError, type Endpoint } from '../../protocol/topics.js';

const TEXT = 'text/plain; charset=utf-8';
// A string body lets node send status line, headers and body in one write.
const OK = 'OK\n';
const NO_QUERY: URLSearchParams = new URLSearchParams();

function reply(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) return void res.destroy();
  const payload = body.endsWith('\n') ? body : body + '\n';
  res.writeHead(status, { 'content-type': TEXT, 'content-length': Buffer.byteLength(payload), ...headers });
  res.end(payload);
}

function unauthorized(res: ServerResponse): void {
  reply(res, 401, '401 Unauthorized', { 'www-authenticate': 'Basic realm="hookbot"' });
}

/** Paths the operational express app answers; everything else is a topic. */
const OPS_PATHS = new Set(['/healthz', '/readyz', '/metrics']);
function isOpsPath(path: string): boolean {
  return OPS_PATHS.has(path) || path === '/_' || path.startsWith('/_/');
}

export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => void;

export function createHttpHandler(ctx: Context, sse: SseTransport): HttpHandler {
  const app = createOpsApp(ctx);

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (path === '/status') return reply(res, 200, 'OK');
    if (isOpsPath(path)) return void app(req as express.Request, res as express.Response);

    let endpoint: Endpoint;
    try {
      endpoint = parseEndpoint(path);
    } catch (err) {
      return reply(res, 400, `400 Bad Request: ${err instanceof PathError ? err.message : 'bad path'}`);
    }
    const query = q === -1 ? NO_QUERY : new URLSearchParams(url.slice(q + 1));
    const method = req.method ?? 'GET';

    if (endpoint.action === 'pub' || (endpoint.action === 'any' && method === 'POST')) {
      if (method !== 'POST') return reply(res, 405, '405 Method Not Allowed: publish with POST', { allow: 'POST' });
      return publish(ctx, req, res, endpoint, query);
    }
    if (endpoint.action === 'sub' || (endpoint.action === 'any' && (method === 'GET' || method === 'HEAD'))) {
      if (method !== 'GET') return reply(res, 405, '405 Method Not Allowed: subscribe with GET', { allow: 'GET' });
      if (endpoint.unsafe && req.headers[UNSAFE_HEADER] !== UNSAFE_HEADER_VALUE) return reply(res, 400, UNSAFE_HEADER_ERROR);
      if (!ctx.tokens.verifyAuthorization(endpoint.path, req.headers.authorization, false)) return unauthorized(res);
      if ((req.headers.accept ?? '').includes('text/event-stream')) {
        const admission = ctx.limits.admitSubscriber(req);
        if (!admission.ok) {
          ctx.metrics.subscriberRefused('sse', admission.status === 503 ? 'server_limit' : 'per_ip_limit');
          return reply(res, admission.status, admission.message, { 'retry-after': String(admission.retryAfter) });
        }
        // The slot is held for as long as the event stream is open.
        res.once('close', admission.release);
        return sse.handle(req, res, endpoint, query);
      }
      return reply(res, 400, '400 Bad Request: subscribe with a WebSocket upgrade, or with Accept: text/event-stream for Server-Sent Events');
    }
    return reply(res, 501, '501 Not Implemented: POST publishes, GET subscribes');
  };
  return handler;
}

function publish(ctx: Context, req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, query: URLSearchParams): void {
  const startedAt = performance.now();
  const metrics = ctx.metrics;
  if (ctx.shuttingDown) {
    metrics.publishRejected('unavailable');
    return reply(res, 503, '503 Service Unavailable: server is shutting down', { connection: 'close' });
  }
  // Before the token check, so guessing tokens is rate limited too.
  const limited = ctx.limits.publish(req);
  if (limited) {
    metrics.publishRejected('rate_limited');
    return reply(res, limited.status, limited.message, { 'retry-after': String(limited.retryAfter) });
  }
  if (!endpoint.unsafe && !ctx.tokens.verifyAuthorization(endpoint.path, req.headers.authorization)) {
    metrics.publishRejected('unauthorized');
    return unauthorized(res);
  }

  const metadata = query.get('extra-metadata');
  const envelope = metadata === null ? undefined : envelopeFor(metadata);
  if (metadata !== null && !envelope) {
    metrics.publishRejected('bad_request');
    return reply(res, 400, `400 Bad Request (bad ?extra-metadata=): supported values are ${ROUTER_NAMES.join(', ')}`);
  }

  const max = ctx.config.maxBody;
  const tooLarge = () => {
    metrics.publishRejected('too_large');
    // Answer, then stop reading: the rest of the body is never buffered.
    reply(res, 413, `413 Payload Too Large: body exceeds --max-body of ${max} bytes`, { connection: 'close' });
    req.unpipe();
    req.resume();
    res.on('finish', () => req.destroy());
  };
  // A retry of a publish already stored gets the original id back; GitHub's delivery id serves for its envelopes.
  const idempotencyHeader = req.headers['idempotency-key'] ?? (metadata === 'github' ? req.headers['x-github-delivery'] : undefined);
  const idempotencyKey = Array.isArray(idempotencyHeader) ? idempotencyHeader[0] : idempotencyHeader || undefined;
  if (idempotencyKey !== undefined && idempotencyKey.length > MAX_IDEMPOTENCY_KEY) {
    metrics.publishRejected('bad_request');
    return reply(res, 400, `400 Bad Request: Idempotency-Key is longer than ${MAX_IDEMPOTENCY_KEY} characters`);
  }
  const options = idempotencyKey === undefined ? undefined : { idempotencyKey };

  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) return tooLarge();

  const chunks: Buffer[] = [];
  let size = 0;
  let failed = false;
  req.on('data', (chunk: Buffer) => {
    if (failed) return;
    size += chunk.length;
    if (size > max) {
      failed = true;
      chunks.length = 0;
      return tooLarge();
    }
    chunks.push(chunk);
  });
  req.on('error', () => {
    failed = true;
  });
  req.on('end', () => {
    if (failed) return;
    const raw = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
    const headers = keptHeaders(req.headers, ctx.config.keepHeaders);
    const body = envelope ? envelope(req.headers, raw) : raw;
    const accepted = (message: Message) => {
      metrics.publishAccepted(size, startedAt);
      res.writeHead(200, ['content-type', TEXT, 'content-length', '3', 'x-hookbot-message-id', message.id]);
      res.end(OK);
    };
    const refused = (err: Error) => {
      if (err instanceof BackendUnavailableError) {
        metrics.publishRejected('unavailable');
        return reply(res, 503, `503 Service Unavailable: ${err.message}`, { 'retry-after': '1' });
      }
      metrics.publishRejected('error');
      ctx.log.error({ topic: endpoint.topic, err: err.message }, 'publish failed');
      reply(res, 500, '500 Internal Server Error: publish failed');
    };
    let result: Message | Promise<Message>;
    try {
      result = ctx.broker.publishNow(endpoint.topic, headers, body, options);
    } catch (err) {
      return refused(err as Error);
    }
    if (result instanceof Message) accepted(result);
    else result.then(accepted, refused);
  });
}

function createOpsApp(ctx: Context): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  // Process alive and answering; says nothing about the backend, so a Redis outage never restarts the process.
  app.get('/healthz', (_req, res) => {
    res.set('cache-control', 'no-store').type('text/plain').send('OK\n');
  });
  // Ready to accept publishes and subscribers: listening, not shutting down, backend reachable.
  app.get('/readyz', (_req, res) => {
    const reason = ctx.shuttingDown ? 'shutting down' : !ctx.broker.backend.ready() ? `backend ${ctx.broker.backend.name} not ready` : undefined;
    res.set('cache-control', 'no-store').type('text/plain');
    if (reason) res.status(503).set('retry-after', '1').send(`503 Service Unavailable: ${reason}\n`);
    else res.send('OK\n');
  });
  app.get('/metrics', (req, res, next) => {
    if (!ctx.metrics.authorize(req.headers.authorization)) {
      res.status(401).set('www-authenticate', 'Bearer realm="hookbot metrics"').type('text/plain').send('401 Unauthorized: /metrics needs Authorization: Bearer <--metrics-token>\n');
      return;
    }
    ctx.metrics.render().then((text) => res.set('cache-control', 'no-store').type(ctx.metrics.contentType).send(text), next);
  });
  mountInspector(app, ctx);
  // Last: unknown operational paths and errors get plain answers.
  app.use((_req, res) => {
    res.status(404).type('text/plain').send('404 Not Found\n');
  });
  app.use((err: Error & { status?: number; statusCode?: number }, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    const status = err.status ?? err.statusCode ?? 500;
    if (status >= 500) ctx.log.error({ err: err.message }, 'request failed');
    res.status(status).type('text/plain').send(status >= 500 ? '500 Internal Server Error\n' : `${status} ${err.message}\n`);
  });
  return app;
}

/** The inspector: its static page under /_/ and its token-protected JSON API under /_/api/. */
function mountInspector(app: express.Express, ctx: Context): void {
  const inspector = new Inspector(ctx);
  app.use('/_', (_req, res, next) => {
    // The page renders webhook bodies from anyone; nothing but its own files may run or be fetched.
    res.set({
      'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
    });
    next();
  });
  app.use('/_/api', (req, res, next) => {
    res.set('cache-control', 'no-store');
    if (inspector.authorized(req.headers.authorization)) return next();
    res.status(401).json({ error: `a token for ${INSPECTOR_PATH} (or a master token) is required: Authorization: Bearer <token>` });
  });
  app.use('/_/api', express.json({ limit: '16kb' }));
  for (const route of inspector.routes) {
    app[route.method](`/_/api${route.path}`, (req, res, next) => {
      route
        .handle({ query: req.query as Record<string, unknown>, body: req.body })
        .then((out) => res.status(out.status).json(out.body), next);
    });
  }
  // Without strict routing '/_' also matches '/_/': only the bare form redirects.
  app.get('/_', (req, res, next) => (req.originalUrl.split('?')[0] === '/_' ? res.redirect(301, '/_/') : next()));
  app.use('/_', express.static(INSPECTOR_DIR, { index: 'index.html', fallthrough: true, maxAge: 0 }));
}
