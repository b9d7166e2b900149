/**
 * Turns a `--redis` URL into an ioredis connection, for a single server, a
 * Sentinel-managed master or a Redis Cluster. The one place connection setup
 * is written, shared by the backend and the routers' dedupe store.
 *
 * URL forms (a password is never echoed in an error):
 *   redis://[[user]:password@]host[:port][/db]          rediss:// for TLS
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/<master-name>[/<db>]
 *       [?sentinelUsername=...&sentinelPassword=...]      rediss-sentinel:// for TLS
 *       (default port 26379; the userinfo authenticates to the master, the
 *       query parameters to the sentinels when they require it)
 *   redis-cluster://[[user]:password@]host[:port][,host[:port]...][/0]
 *                                                       rediss-cluster:// for TLS
 *       (default port 6379; any few nodes serve as seeds, the rest is discovered)
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';

export interface HostPort {
  host: string;
  port: number;
}

export type RedisTarget =
  | { kind: 'standalone'; url: string }
  | {
      kind: 'sentinel';
      tls: boolean;
      sentinels: HostPort[];
      name: string;
      db: number;
      username?: string;
      password?: string;
      sentinelUsername?: string;
      sentinelPassword?: string;
    }
  | { kind: 'cluster'; tls: boolean; nodes: HostPort[]; username?: string; password?: string };

export type RedisConnection = Redis | Cluster;

const FORMS =
  'expected redis://[user:password@]host[:port][/db], rediss://..., redis-sentinel://[:password@]host[:port][,host[:port]...]/<master-name>[/<db>] or redis-cluster://[:password@]host[:port][,host[:port]...]';

const SCHEMES: Record<string, { kind: 'sentinel' | 'cluster'; tls: boolean; defaultPort: number }> = {
  'redis-sentinel:': { kind: 'sentinel', tls: false, defaultPort: 26379 },
  'rediss-sentinel:': { kind: 'sentinel', tls: true, defaultPort: 26379 },
  'redis-cluster:': { kind: 'cluster', tls: false, defaultPort: 6379 },
  'rediss-cluster:': { kind: 'cluster', tls: true, defaultPort: 6379 },
};

const SENTINEL_QUERY = ['sentinelUsername', 'sentinelPassword'];

/** Throws (without echoing a password) unless `url` is one of the forms above. */
export function checkRedisUrl(url: string): void {
  parseRedisUrl(url);
}

export function parseRedisUrl(url: string): RedisTarget {
  const m = /^([a-z][a-z0-9+.-]*:)\/\/([^/?#]*)([^?#]*)(\?[^#]*)?$/i.exec(url.trim());
  if (!m) throw new Error(`invalid Redis URL: ${FORMS}`);
  const protocol = m[1].toLowerCase();
  const authority = m[2];
  const at = authority.lastIndexOf('@');
  const hostList = authority.slice(at + 1);
  const path = m[3];
  // What an error may show: never the userinfo or the query (both can hold passwords).
  const shown = `${protocol}//${hostList}${path}`;
  if (protocol === 'redis:' || protocol === 'rediss:') return { kind: 'standalone', url: checkStandalone(url, shown) };
  const scheme = SCHEMES[protocol];
  if (!scheme) throw new Error(`invalid Redis URL ${shown}: scheme must be redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://`);

  const { username, password } = userinfo(at < 0 ? '' : authority.slice(0, at), shown);
  const hosts = parseHosts(hostList, scheme.defaultPort, shown);
  const query = new URLSearchParams(m[4] ?? '');
  const auth = { ...(username ? { username } : {}), ...(password ? { password } : {}) };

  if (scheme.kind === 'cluster') {
    if ([...query.keys()].length > 0) throw new Error(`invalid Redis URL ${shown}: redis-cluster:// takes no query parameters`);
    if (path !== '' && path !== '/' && path !== '/0') {
      throw new Error(`invalid Redis URL ${shown}: Redis Cluster only has database 0, so the path must be empty or /0`);
    }
    return { kind: 'cluster', tls: scheme.tls, nodes: hosts, ...auth };
  }

  for (const key of query.keys()) {
    if (!SENTINEL_QUERY.includes(key)) throw new Error(`invalid Redis URL ${shown}: unknown query parameter ${JSON.stringify(key)} (only ${SENTINEL_QUERY.join(', ')})`);
  }
  const pm = /^\/([^/]+)(?:\/(\d+))?\/?$/.exec(path);
  if (!pm) throw new Error(`invalid Redis URL ${shown}: the path must be the Sentinel master name, like /mymaster or /mymaster/0`);
  let name: string;
  try {
    name = decodeURIComponent(pm[1]);
  } catch {
    throw new Error(`invalid Redis URL ${shown}: the master name is not valid percent-encoding`);
  }
  const sentinelUsername = query.get('sentinelUsername') || undefined;
  const sentinelPassword = query.get('sentinelPassword') || undefined;
  return {
    kind: 'sentinel',
    tls: scheme.tls,
    sentinels: hosts,
    name,
    db: pm[2] === undefined ? 0 : Number(pm[2]),
    ...auth,
    ...(sentinelUsername ? { sentinelUsername } : {}),
    ...(sentinelPassword ? { sentinelPassword } : {}),
  };
}

function checkStandalone(url: string, shown: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`invalid Redis URL ${shown}: ${FORMS}`);
  }
  if (!u.hostname) throw new Error(`invalid Redis URL ${shown}: host missing`);
  if (u.pathname !== '' && u.pathname !== '/' && !/^\/\d+$/.test(u.pathname)) {
    throw new Error(`invalid Redis URL ${shown}: path must be a database number, like /0`);
  }
  return url;
}

function userinfo(raw: string, shown: string): { username?: string; password?: string } {
  if (raw === '') return {};
  const colon = raw.indexOf(':');
  try {
    const username = decodeURIComponent(colon < 0 ? raw : raw.slice(0, colon));
    const password = colon < 0 ? undefined : decodeURIComponent(raw.slice(colon + 1));
    return { ...(username ? { username } : {}), ...(password ? { password } : {}) };
  } catch {
    throw new Error(`invalid Redis URL ${shown}: user or password is not valid percent-encoding`);
  }
}

function parseHosts(list: string, defaultPort: number, shown: string): HostPort[] {
  if (list === '') throw new Error(`invalid Redis URL ${shown}: host missing`);
  return list.split(',').map((entry) => {
    const hm = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(entry);
    if (!hm) throw new Error(`invalid Redis URL ${shown}: ${JSON.stringify(entry)} is not host[:port] (list several as host1:port,host2:port)`);
    const port = hm[3] === undefined ? defaultPort : Number(hm[3]);
    if (port < 1 || port > 65535) throw new Error(`invalid Redis URL ${shown}: port ${port} of ${hm[1] ?? hm[2]} is not 1-65535`);
    return { host: hm[1] ?? hm[2], port };
  });
}

/**
 * A connection for `url`. `options` are the plain ioredis options the caller
 * wants on every link (timeouts, offline queue, retryStrategy, name); this
 * maps them onto Sentinel or Cluster.
 */
export function connectRedis(url: string, options: RedisOptions): RedisConnection {
  const target = parseRedisUrl(url);
  if (target.kind === 'standalone') return new Redis(url, options);
  if (target.kind === 'sentinel') {
    return new Redis({
      ...options,
      sentinels: target.sentinels,
      name: target.name,
      role: 'master',
      db: target.db,
      username: target.username,
      password: target.password,
      sentinelUsername: target.sentinelUsername,
      sentinelPassword: target.sentinelPassword,
      // Sentinel disconnects clients of a demoted master, and this watches for
      // +switch-master too, so the next connect asks the sentinels again.
      failoverDetector: true,
      // A write reaching a master that just became a replica: reconnect (not resend) to the new master.
      reconnectOnError: (err) => err.message.startsWith('READONLY'),
      ...(target.tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
      ...(options.connectTimeout !== undefined ? { sentinelCommandTimeout: options.connectTimeout } : {}),
    });
  }

  const auth = { username: target.username, password: target.password, ...(target.tls ? { tls: {} } : {}) };
  const { retryStrategy, enableOfflineQueue, lazyConnect, ...nodeOptions } = options;
  const clusterOptions: ClusterOptions = {
    redisOptions: { ...nodeOptions, ...auth },
    ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
    ...(lazyConnect !== undefined ? { lazyConnect } : {}),
    ...(retryStrategy ? { clusterRetryStrategy: (times: number) => retryStrategy(times) } : {}),
    // ioredis resends a command whose connection closed under it; for a
    // publish script that may already have run, that would be a duplicate.
    // MOVED/ASK/TRYAGAIN/CLUSTERDOWN retries stay on: those commands did not run.
    retryDelayOnFailover: 0,
  };
  // With TLS, keep host names: certificates name hosts, not addresses.
  if (target.tls) clusterOptions.dnsLookup = (address, callback) => callback(null, address);
  return new Cluster(target.nodes, clusterOptions);
}
