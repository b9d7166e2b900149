/**
 * Puts the pieces together: backend → broker → transports → one HTTP(S)
 * server, plus the stats line and graceful shutdown.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Backend } from './backends/backend.js';
import { MemoryBackend } from './backends/memory.js';
import { RedisBackend } from './backends/redis.js';
import { SqliteBackend } from './backends/sqlite.js';
import { Broker } from './broker.js';
import type { Config } from './config.js';
import type { Context } from './context.js';
import { configureConnections, SERVER_OPTIONS } from './http/connections.js';
import { createHttpHandler } from './http/handler.js';
import { refuseSocket } from './http/respond.js';
import { Limits } from './ops/limits.js';
import { createLogger, type Logger } from './log.js';
import { Metrics } from './ops/metrics.js';
import { startRouters } from './routers/index.js';
import { Sessions } from './subscriber.js';
import { SseTransport } from './transports/sse.js';
import { ChannelIds } from '../protocol/channels.js';
import { TokenVerifier } from '../protocol/tokens.js';
import { WebSocketTransport } from './transports/websocket.js';

export interface HookbotServer {
  readonly port: number;
  /** http(s)://127.0.0.1:port (or the bound host). */
  readonly url: string;
  readonly broker: Broker;
  readonly config: Config;
  /** Every connected subscriber, with counts per transport. */
  readonly sessions: Sessions;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly limits: Limits;
  /** Stops accepting, closes subscribers with 1001, closes the backend. */
  close(): Promise<void>;
}

/** How long shutdown waits for subscribers to take their close frames. */
const CLOSE_GRACE_MS = 2000;

export function createBackend(config: Config, log?: Logger): Backend {
  if (config.storeWarning) log?.warn(config.storeWarning);
  if (config.redisUrl) {
    return new RedisBackend(config.redisUrl, config.retention, log?.child({ backend: 'redis' }), { catchUp: config.catchUp, idempotencyWindowMs: config.dedupeWindowMs });
  }
  if (config.dataDir !== undefined) {
    return new SqliteBackend(config.dataDir, config.retention, { fsync: config.fsync, log: log?.child({ backend: 'sqlite' }), dedupeWindowMs: config.dedupeWindowMs });
  }
  return new MemoryBackend(config.retention, Date.now, { windowMs: config.dedupeWindowMs });
}

/** How long startup waits for Redis before serving anyway (publishes answer 503 until it is reachable). */
const REDIS_STARTUP_WAIT_MS = 5000;

export async function startServer(config: Config, log: Logger = createLogger(config.logLevel), backend: Backend = createBackend(config, log)): Promise<HookbotServer> {
  if (backend instanceof RedisBackend) {
    await backend.whenReady(REDIS_STARTUP_WAIT_MS).catch(() => log.warn('Redis not reachable yet; publishes answer 503 until it is'));
  }
  const broker = new Broker(backend, log);
  // Before the routers, so they can count verifications; ws and sse are read at scrape time only, by when they exist.
  const sessions = new Sessions(broker, log, config.maxSubscriberBuffer);
  const limits = new Limits(config);
  const metrics = new Metrics({ broker, subscribers: () => sessions.counts(), bodyInFlight: () => limits.bodyInFlight }, config.metricsToken);
  // Subscribed before listening, so no webhook arriving at startup goes unrouted.
  const routers = await startRouters(config, broker, log, metrics);
  const ctx: Context = {
    config,
    broker,
    tokens: new TokenVerifier(config.keys),
    ...(config.smee ? { channels: new ChannelIds(config.keys) } : {}),
    log,
    metrics,
    limits,
    shuttingDown: false,
  };
  const ws = new WebSocketTransport(ctx, sessions);
  const sse = new SseTransport(ctx, sessions);
  const http = createHttpHandler(ctx, sse);

  const server: Server = config.tls ? createHttpsServer({ ...SERVER_OPTIONS, key: config.tls.key, cert: config.tls.cert }, http) : createHttpServer(SERVER_OPTIONS, http);
  const sockets = new Set<Socket>();
  configureConnections(server, ctx, Boolean(config.tls), sockets);
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const refused = limits.connectionRefusal(socket);
    if (refused) return refuseSocket(socket, refused);
    ws.handleUpgrade(req, socket, head);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.bind.port, config.bind.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shownHost = config.bind.host ?? '';
  log.info({ port: address.port, tls: Boolean(config.tls), backend: backend.name }, `Listening on ${shownHost}:${address.port}`);

  let last = { ...broker.stats };
  const statsTimer = setInterval(() => {
    const now = { ...broker.stats };
    log.info(
      {
        subscribers: sessions.counts().ws + sessions.counts().sse,
        subscriptions: broker.subscriptions,
        publishes: now.publishes - last.publishes,
        deliveries: now.deliveries - last.deliveries,
        drops: now.drops - last.drops,
        slowDisconnects: now.slowDisconnects - last.slowDisconnects,
        totals: now,
        ...(routers.routers.length > 0 ? { routers: routers.counts } : {}),
      },
      'stats',
    );
    last = now;
  }, config.statsIntervalMs);
  statsTimer.unref();

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      ctx.shuttingDown = true;
      clearInterval(statsTimer);
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      ws.close();
      sse.close();
      sessions.closeAll();
      // Subscribers that don't take their close frame in time are cut off.
      const deadline = setTimeout(() => {
        for (const s of sockets) s.destroy();
      }, CLOSE_GRACE_MS);
      await stopped;
      clearTimeout(deadline);
      await routers.close();
      await broker.close();
    })());

  const host = shownHost === '' || shownHost === '0.0.0.0' || shownHost === '::' ? '127.0.0.1' : shownHost.includes(':') ? `[${shownHost}]` : shownHost;
  return {
    port: address.port,
    url: `${config.tls ? 'https' : 'http'}://${host}:${address.port}`,
    broker,
    config,
    sessions,
    log,
    metrics,
    limits,
    close,
  };
}
