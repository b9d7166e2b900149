/**
 * Server options, validated once. Every error names the option that is wrong,
 * so an operator can fix a unit file without reading code.
 */
import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { DEFAULT_RETENTION, type Retention } from './backends/backend.js';
import { checkRedisUrl } from './backends/redis.js';
import { FSYNC_MODES, type FsyncMode } from './backends/sqlite.js';
import { exemptList, LIMIT_DEFAULTS, type LimitsConfig } from './ops/limits.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface Bind {
  /** undefined: every interface, as Go's `:8080`. */
  host: string | undefined;
  port: number;
}

/** Every serve option, validated; the limits' fields are LimitsConfig's. */
export interface Config extends LimitsConfig {
  bind: Bind;
  /** Current key first, then previous keys still accepted for verification. */
  keys: string[];
  tls: { key: Buffer; cert: Buffer } | undefined;
  /** Largest publish body in bytes. */
  maxBody: number;
  /** Bytes a subscriber may have queued before it is disconnected as a slow consumer. */
  maxSubscriberBuffer: number;
  logLevel: string;
  /** How often the stats line is logged. */
  statsIntervalMs: number;
  /** How often subscribers are pinged; one missed pong disconnects them. */
  pingIntervalMs: number;
  /** How often an idle Server-Sent Events stream gets a `: ping` comment, so proxies and clients can tell it is alive. */
  sseHeartbeatMs: number;
  /** Extra request headers (lower-case) kept with each message. */
  keepHeaders: string[];
  retention: Retention;
  /** Cluster mode: history and fan-out in this Redis instead of in memory (never logged: it may hold a password). */
  redisUrl?: string;
  /** The durable store's directory (absolute); undefined with --memory or --redis. */
  dataDir?: string;
  /** When the durable store fsyncs: 'normal' (default) or 'always' (before every 200). */
  fsync?: FsyncMode;
  /** Store options that --redis overrides, to be logged as a warning at startup. */
  storeWarning?: string;
  /** In-server routers to run (`--router`), and what they verify deliveries with. */
  routers: string[];
  githubSecrets: string[];
  gitlabTokens: string[];
  /** How long a router remembers a delivery id, so a redelivery is re-published once. */
  dedupeWindowMs: number;
  /** When set, /metrics requires `Authorization: Bearer <it>` (never logged). */
  metricsToken?: string;
}

export const DEFAULTS = {
  bind: ':8080',
  maxBody: 25 * 1024 * 1024,
  maxSubscriberBuffer: 8 * 1024 * 1024,
  logLevel: 'info',
  statsIntervalMs: 60_000,
  pingIntervalMs: 30_000,
  sseHeartbeatMs: 15_000,
} as const;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** `host:port` or `:port`, as the original's --bind. */
export function parseBind(value: string, option = '--bind'): Bind {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  if (!m) throw new ConfigError(`${option} must be host:port or :port, got ${JSON.stringify(value)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(`${option} port must be 0-65535, got ${port}`);
  const host = m[1] ?? m[2];
  return { host: host === '' ? undefined : host, port };
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3 };

/** Bytes: `1048576`, `512KiB`, `25MiB`, `1G`. */
export function parseSize(value: string, option: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ConfigError(`${option} must be a size such as 1048576, 512KiB or 25MiB, got ${JSON.stringify(value)}`);
  return Math.floor(Number(m[1]) * unit);
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds: `500ms`, `30s`, `5m`, `1h`, `7d`; a bare number is seconds. */
export function parseDuration(value: string, option: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value);
  if (!m) throw new ConfigError(`${option} must be a duration such as 30s, 5m, 1h or 7d, got ${JSON.stringify(value)}`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? 's']);
}

export function parseCount(value: string, option: string): number {
  if (!/^\s*\d+\s*$/.test(value)) throw new ConfigError(`${option} must be a whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** Comma-separated list, blanks dropped. */
export function parseList(value: string | undefined): string[] {
  return (value ?? '').split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

/** The raw option values commander hands over (strings as typed). */
export interface ServeOptions {
  bind?: string;
  key?: string;
  sslkey?: string;
  sslcrt?: string;
  maxBody?: string;
  maxSubscriberBuffer?: string;
  logLevel?: string;
  statsInterval?: string;
  pingInterval?: string;
  sseHeartbeat?: string;
  keepHeader?: string[];
  history?: string;
  historyBytes?: string;
  historyAge?: string;
  historyTotalBytes?: string;
  redis?: string;
  dataDir?: string;
  memory?: boolean;
  fsync?: string;
  router?: string[];
  githubSecret?: string[];
  gitlabToken?: string[];
  dedupeWindow?: string;
  metricsToken?: string;
  rateLimit?: string;
  rateLimitBurst?: string;
  maxSubscribersPerIp?: string;
  maxSubscriptions?: string;
  /** `--trust-proxy` alone is true (one proxy); with a value, the number of proxies. */
  trustProxy?: string | boolean;
  limitExempt?: string;
}

/** The limits flags (see src/limits.ts for what each one does). */
export function resolveLimits(opts: ServeOptions, env: NodeJS.ProcessEnv): Pick<Config, 'rateLimit' | 'rateLimitBurst' | 'maxSubscribersPerIp' | 'maxSubscriptions' | 'trustProxy' | 'limitExempt'> {
  const count = (value: string | undefined, option: string, fallback: number) => (value !== undefined ? parseCount(value, option) : fallback);
  const rateLimit = count(opts.rateLimit ?? env.HOOKBOT_RATE_LIMIT, '--rate-limit', LIMIT_DEFAULTS.rateLimit);
  const rateLimitBurst = count(opts.rateLimitBurst ?? env.HOOKBOT_RATE_LIMIT_BURST, '--rate-limit-burst', rateLimit);
  if (rateLimit > 0 && rateLimitBurst < 1) throw new ConfigError('--rate-limit-burst must be at least 1 while --rate-limit is on');
  const trust = opts.trustProxy ?? env.HOOKBOT_TRUST_PROXY;
  const exempt = opts.limitExempt ?? env.HOOKBOT_LIMIT_EXEMPT;
  const limitExempt = exempt === undefined ? [...LIMIT_DEFAULTS.limitExempt] : parseList(exempt);
  try {
    exemptList(limitExempt);
  } catch (err) {
    throw new ConfigError(`--limit-exempt: ${(err as Error).message}`);
  }
  const trustProxy = trust === undefined || trust === false ? 0 : trust === true || trust === 'true' ? 1 : trust === 'false' ? 0 : parseCount(trust, '--trust-proxy');
  return {
    rateLimit,
    rateLimitBurst,
    maxSubscribersPerIp: count(opts.maxSubscribersPerIp ?? env.HOOKBOT_MAX_SUBSCRIBERS_PER_IP, '--max-subscribers-per-ip', LIMIT_DEFAULTS.maxSubscribersPerIp),
    maxSubscriptions: count(opts.maxSubscriptions ?? env.HOOKBOT_MAX_SUBSCRIPTIONS, '--max-subscriptions', LIMIT_DEFAULTS.maxSubscriptions),
    trustProxy,
    limitExempt,
  };
}

export const DEFAULT_DATA_DIR = './hookbot-data';

function parseBoolean(value: string | undefined, name: string): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new ConfigError(`${name} must be 1 or 0 (true or false), got ${JSON.stringify(value)}`);
}

/**
 * Where history lives: the durable store in --data-dir (the default), memory
 * (--memory), or Redis, which takes precedence over both. A flag beats its
 * environment variable; the two store choices at the same level contradict.
 */
export function resolveStore(opts: ServeOptions, env: NodeJS.ProcessEnv, redis: boolean): Pick<Config, 'dataDir' | 'fsync' | 'storeWarning'> {
  const fsyncValue = opts.fsync ?? (env.HOOKBOT_FSYNC || undefined);
  if (fsyncValue !== undefined && !(FSYNC_MODES as readonly string[]).includes(fsyncValue)) {
    throw new ConfigError(`--fsync must be one of ${FSYNC_MODES.join(', ')}, got ${JSON.stringify(fsyncValue)}`);
  }
  const fsync = (fsyncValue ?? 'normal') as FsyncMode;
  const memoryEnv = parseBoolean(env.HOOKBOT_MEMORY, 'HOOKBOT_MEMORY');
  const dirEnv = env.HOOKBOT_DATA_DIR || undefined;
  if (opts.dataDir === '') throw new ConfigError('--data-dir must not be empty');
  if (opts.memory && opts.dataDir !== undefined) throw new ConfigError('--memory and --data-dir cannot be used together: --memory keeps nothing on disk');
  if (!opts.memory && opts.dataDir === undefined && memoryEnv && dirEnv !== undefined) {
    throw new ConfigError('HOOKBOT_MEMORY and HOOKBOT_DATA_DIR cannot be used together: HOOKBOT_MEMORY keeps nothing on disk');
  }
  const memory = opts.memory === true || (opts.dataDir === undefined && memoryEnv === true);
  if (redis) {
    const given = [
      ...(opts.dataDir !== undefined || dirEnv !== undefined ? ['--data-dir'] : []),
      ...(opts.memory || memoryEnv ? ['--memory'] : []),
      ...(fsyncValue !== undefined ? ['--fsync'] : []),
    ];
    return given.length === 0 ? {} : { storeWarning: `--redis takes precedence: history is kept in Redis, and ${given.join(' and ')} ${given.length > 1 ? 'are' : 'is'} ignored` };
  }
  if (memory) {
    if (fsync === 'always') throw new ConfigError('--fsync always needs the durable store; it has no effect with --memory');
    return {};
  }
  return { dataDir: resolvePath(opts.dataDir ?? dirEnv ?? DEFAULT_DATA_DIR), fsync };
}

export const ROUTERS = ['github', 'gitlab'];

/** `--router` names and their credentials; a router that could not verify anything refuses to start. */
export function resolveRouters(opts: ServeOptions, env: NodeJS.ProcessEnv): Pick<Config, 'routers' | 'githubSecrets' | 'gitlabTokens' | 'dedupeWindowMs'> {
  const routers = [...new Set((opts.router ?? []).flatMap((r) => parseList(r)))];
  for (const r of routers) {
    if (!ROUTERS.includes(r)) throw new ConfigError(`--router ${JSON.stringify(r)} is not a router; available: ${ROUTERS.join(', ')}`);
  }
  // Flags replace the environment rather than adding to it, so a stale env secret can't linger.
  const githubSecrets = opts.githubSecret?.length ? opts.githubSecret.flatMap((s) => parseList(s)) : parseList(env.HOOKBOT_GITHUB_SECRET);
  const gitlabTokens = opts.gitlabToken?.length ? opts.gitlabToken.flatMap((s) => parseList(s)) : parseList(env.HOOKBOT_GITLAB_TOKEN);
  if (routers.includes('github') && githubSecrets.length === 0) {
    throw new ConfigError('--router github needs the GitHub webhook secret: set HOOKBOT_GITHUB_SECRET or pass --github-secret (comma-separate several to rotate)');
  }
  if (routers.includes('gitlab') && gitlabTokens.length === 0) {
    throw new ConfigError('--router gitlab needs the GitLab webhook secret token: set HOOKBOT_GITLAB_TOKEN or pass --gitlab-token (comma-separate several to rotate)');
  }
  const dedupeWindowMs = opts.dedupeWindow !== undefined ? parseDuration(opts.dedupeWindow, '--dedupe-window') : 3_600_000;
  return { routers, githubSecrets, gitlabTokens, dedupeWindowMs };
}

/** The key from --key or HOOKBOT_KEY; missing is the error the original gives. */
export function resolveKeys(key: string | undefined, env: NodeJS.ProcessEnv): string[] {
  const current = key ?? env.HOOKBOT_KEY;
  if (!current) throw new ConfigError('HOOKBOT_KEY not set (set the HOOKBOT_KEY environment variable or pass --key)');
  return [current, ...parseList(env.HOOKBOT_PREVIOUS_KEYS).filter((k) => k !== current)];
}

export function resolveServeConfig(opts: ServeOptions, env: NodeJS.ProcessEnv = process.env): Config {
  const keys = resolveKeys(opts.key, env);

  if (Boolean(opts.sslkey) !== Boolean(opts.sslcrt)) throw new ConfigError('--sslkey and --sslcrt must be given together');
  let tls: Config['tls'];
  if (opts.sslkey && opts.sslcrt) {
    tls = { key: readFileOption(opts.sslkey, '--sslkey'), cert: readFileOption(opts.sslcrt, '--sslcrt') };
  }

  const logLevel = opts.logLevel ?? env.HOOKBOT_LOG_LEVEL ?? DEFAULTS.logLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);

  const maxBody = opts.maxBody ? parseSize(opts.maxBody, '--max-body') : DEFAULTS.maxBody;
  if (maxBody < 1) throw new ConfigError('--max-body must be at least 1 byte');
  const maxSubscriberBuffer = opts.maxSubscriberBuffer ? parseSize(opts.maxSubscriberBuffer, '--max-subscriber-buffer') : DEFAULTS.maxSubscriberBuffer;
  if (maxSubscriberBuffer < 1) throw new ConfigError('--max-subscriber-buffer must be at least 1 byte');

  const pingIntervalMs = opts.pingInterval ? parseDuration(opts.pingInterval, '--ping-interval') : DEFAULTS.pingIntervalMs;
  if (pingIntervalMs < 10) throw new ConfigError('--ping-interval must be at least 10ms');
  const sseHeartbeatMs = opts.sseHeartbeat ? parseDuration(opts.sseHeartbeat, '--sse-heartbeat') : DEFAULTS.sseHeartbeatMs;
  if (sseHeartbeatMs < 10) throw new ConfigError('--sse-heartbeat must be at least 10ms');
  const statsIntervalMs = opts.statsInterval ? parseDuration(opts.statsInterval, '--stats-interval') : DEFAULTS.statsIntervalMs;

  const keepHeaders = (opts.keepHeader ?? []).flatMap((h) => parseList(h)).map((h) => h.toLowerCase());
  for (const h of keepHeaders) {
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(h)) throw new ConfigError(`--keep-header ${JSON.stringify(h)} is not a valid header name`);
    if (h === 'authorization' || h === 'cookie' || h === 'proxy-authorization') throw new ConfigError(`--keep-header ${h} would store credentials with every message; refusing`);
  }

  const retention = {
    count: opts.history !== undefined ? parseCount(opts.history, '--history') : DEFAULT_RETENTION.count,
    bytes: opts.historyBytes !== undefined ? parseSize(opts.historyBytes, '--history-bytes') : DEFAULT_RETENTION.bytes,
    ageMs: opts.historyAge !== undefined ? parseDuration(opts.historyAge, '--history-age') : DEFAULT_RETENTION.ageMs,
    totalBytes: opts.historyTotalBytes !== undefined ? parseSize(opts.historyTotalBytes, '--history-total-bytes') : DEFAULT_RETENTION.totalBytes,
  };

  const redisUrl = opts.redis ?? (env.HOOKBOT_REDIS_URL || undefined);
  if (redisUrl !== undefined) {
    try {
      checkRedisUrl(redisUrl);
    } catch (err) {
      throw new ConfigError(`--redis (or HOOKBOT_REDIS_URL): ${(err as Error).message}`);
    }
  }

  const metricsToken = opts.metricsToken ?? (env.HOOKBOT_METRICS_TOKEN || undefined);

  return {
    bind: parseBind(opts.bind ?? env.HOOKBOT_BIND ?? DEFAULTS.bind),
    keys,
    tls,
    maxBody,
    maxSubscriberBuffer,
    logLevel,
    statsIntervalMs,
    pingIntervalMs,
    sseHeartbeatMs,
    keepHeaders,
    retention,
    ...(redisUrl !== undefined ? { redisUrl } : {}),
    ...resolveStore(opts, env, redisUrl !== undefined),
    ...resolveRouters(opts, env),
    ...resolveLimits(opts, env),
    ...(metricsToken ? { metricsToken } : {}),
  };
}

function readFileOption(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(`${option} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
