/**
 * The operational endpoints: /healthz, /readyz, /metrics and the inspector
 * under /_/. Off the hot paths, so they go through express, and this is the
 * only module that imports it.
 */
import express from 'express';
import type { Context } from '../context.js';
import { CHANNEL_ASSETS, CHANNEL_ASSETS_PATH, CHANNEL_PAGE_CSP, CHANNEL_PAGE_DIR, redeliverOnChannel } from '../ops/channel-page.js';
import { COMMON_PAGE_DIR, Inspector, INSPECTOR_DIR, INSPECTOR_PATH } from '../ops/inspector.js';

/** Paths the operational app answers; everything else is a topic. */
const OPS_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

export function isOpsPath(path: string): boolean {
  return OPS_PATHS.has(path) || path === '/_' || path.startsWith('/_/');
}

export function createOpsApp(ctx: Context): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use((_req, res, next) => {
    res.set('x-content-type-options', 'nosniff');
    next();
  });
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
  if (ctx.channels) mountChannelPage(app, ctx);
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

/** A smee channel page's script and styles, and its Redeliver call (the channel id in the body is the credential). */
function mountChannelPage(app: express.Express, ctx: Context): void {
  app.use(CHANNEL_ASSETS_PATH, (_req, res, next) => {
    res.set({ 'content-security-policy': CHANNEL_PAGE_CSP, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' });
    next();
  });
  app.post(`${CHANNEL_ASSETS_PATH}/redeliver`, express.json({ limit: '4kb' }), (req, res, next) => {
    res.set('cache-control', 'no-store');
    redeliverOnChannel(ctx, req, req.body).then((out) => res.status(out.status).json(out.body), next);
  });
  // Only the assets: the page itself is served at each channel's own URL, for minted ids only.
  const assets = express.static(CHANNEL_PAGE_DIR, { index: false, fallthrough: true, maxAge: 0 });
  app.use(CHANNEL_ASSETS_PATH, (req, res, next) => (CHANNEL_ASSETS.has(req.path) ? assets(req, res, next) : next()));
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
        .handle({ query: req.query, body: req.body })
        .then((out) => res.status(out.status).json(out.body), next);
    });
  }
  // Without strict routing '/_' also matches '/_/': only the bare form redirects.
  app.get('/_', (req, res, next) => (req.originalUrl.split('?')[0] === '/_' ? res.redirect(301, '/_/') : next()));
  // What the inspector and the channel pages share (styles, DOM helpers), then the inspector's own files.
  app.use('/_/common', express.static(COMMON_PAGE_DIR, { index: false, fallthrough: true, maxAge: 0 }));
  app.use('/_', express.static(INSPECTOR_DIR, { index: 'index.html', fallthrough: true, maxAge: 0 }));
}
