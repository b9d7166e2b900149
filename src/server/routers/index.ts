/**
 * Starts the configured in-server routers on a broker: each is subscribed to
 * its recursive feed topic and re-publishes through broker.publish.
 */
import { connectRedis, type RedisConnection } from '../backends/redis-connect.js';
import type { Broker, Subscriber } from '../broker.js';
import type { Logger } from '../log.js';
import { RedisSeenStore } from './dedupe.js';
import { createRouter } from './pipeline.js';
import { ROUTER_NAMES, routerSpec, type RouterSpec } from './registry.js';
import type { Router, RouterEvent, RouterHost, SeenStore } from './router.js';

export interface RoutersConfig {
  /** Router names to run (validated by config against the registry). */
  routers: readonly string[];
  githubSecrets: readonly string[];
  gitlabTokens: readonly string[];
  dedupeWindowMs: number;
  /** With a Redis backend every node sees every feed message: delivery ids are then claimed in Redis, so one node re-publishes. */
  redisUrl?: string;
}

export type RouterCounts = Record<string, Record<RouterEvent, number>>;

export interface RunningRouters {
  readonly routers: readonly Router[];
  /** Per router: deliveries verified/failed/duplicate and messages published. */
  readonly counts: RouterCounts;
  /** Unsubscribes and waits for messages already taken to be re-published. */
  close(): Promise<void>;
}

/** Where verification outcomes are counted for /metrics. */
export interface RouterMetrics {
  routerVerification(router: string, result: 'ok' | 'failed'): void;
}

export async function startRouters(config: RoutersConfig, broker: Broker, log: Logger, metrics?: RouterMetrics): Promise<RunningRouters> {
  const counts: RouterCounts = {};
  const host: RouterHost = {
    // No idempotency key: the dedupe store already decides, and a server never repeats a delivery after a crash.
    publish: (topic, headers, body) => broker.publish(topic, headers, body),
    log,
    count(event, router) {
      const c = (counts[router] ??= { verified: 0, failed: 0, duplicate: 0, published: 0 });
      c[event]++;
      if (event === 'verified') metrics?.routerVerification(router, 'ok');
      else if (event === 'failed') metrics?.routerVerification(router, 'failed');
    },
  };
  const specs: RouterSpec[] = [...new Set(config.routers)].map((name) => {
    const spec = routerSpec(name);
    if (!spec) throw new Error(`unknown router ${JSON.stringify(name)} (available: ${ROUTER_NAMES.join(', ')})`);
    return spec;
  });
  const routers: Router[] = [];
  let redis: RedisConnection | undefined;
  let seen: SeenStore | undefined;
  if (config.redisUrl && config.routers.length > 0) {
    // Fail fast rather than queue while Redis is away: a stalled claim would stall the router's feed.
    redis = connectRedis(config.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 3000, connectionName: 'hookbot-routers' });
    redis.on('error', (err: Error) => log.debug({ err: err.message }, 'router dedupe Redis connection error'));
    seen = new RedisSeenStore(redis, config.dedupeWindowMs);
    const connected = redis;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5000);
      connected.once('ready', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  for (const spec of specs) {
    routers.push(createRouter(spec.adapter, { secrets: config[spec.secret.config], dedupeWindowMs: config.dedupeWindowMs, seen }, host));
  }
  const subscribers: Subscriber[] = routers.map((r) => ({
    topic: r.topic,
    // handle() queues and never rejects; the broker's send must not block or throw.
    send: (m) => void r.handle(m),
  }));
  for (const [i, sub] of subscribers.entries()) {
    await broker.subscribe(sub);
    log.info({ router: routers[i].name, topic: routers[i].topic }, `router ${routers[i].name} subscribed to ${routers[i].topic}`);
  }
  return {
    routers,
    counts,
    async close() {
      for (const sub of subscribers) broker.unsubscribe(sub);
      await Promise.all(routers.map((r) => r.idle()));
      redis?.disconnect();
    },
  };
}
