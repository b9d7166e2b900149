/**
 * Server options, validated once. Every error names the option that is wrong,
 * so an operator can fix a unit file without reading code. What the options
 * are (flags, variables, defaults, parsers) is the table in options.ts; this
 * file turns the values read from it into the Config the server runs with,
 * and checks the rules that span several options.
 */
import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import type { Retention } from './backends/backend.js';
import type { CatchUpWindow } from './backends/redis.js';
import { DEFAULT_DATA_DIR, type FsyncMode } from './backends/sqlite.js';
import { LIMIT_DEFAULTS, type LimitsConfig } from './ops/limits.js';
import { type Bind, ConfigError, formatSize, parseList, readServeOptions, type ServeOptions, type ServeValues } from './options.js';
import { ROUTERS } from './routers/registry.js';

export { ConfigError, parseBind, parseBoolean, parseCount, parseDuration, parseList, parsePublicUrl, parseSize, SERVE_DEFAULTS, SERVE_OPTIONS } from './options.js';
export type { Bind, ServeOptions, ServeValues } from './options.js';

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
  /** Why a store option is ignored (--redis given as well), logged at start. */
  storeWarning?: string;
  /** In-server routers to run (`--router`), and what they verify deliveries with. */
  routers: string[];
  githubSecrets: string[];
  gitlabTokens: string[];
  /** How long a router remembers a delivery id, so a redelivery is re-published once. */
  dedupeWindowMs: number;
  /** When set, /metrics requires `Authorization: Bearer <it>` (never logged). */
  metricsToken?: string;
  /** Cluster mode: how far a node may fall behind the shared feed and still deliver everything. */
  catchUp: CatchUpWindow;
  /** Time a client has to send its request headers (408 after). */
  headerTimeoutMs: number;
  /** Time a publisher has to send its body once the headers are in (408 after). */
  bodyTimeoutMs: number;
  /** Idle keep-alive connections are closed after this long. */
  idleTimeoutMs: number;
  /** serve --smee: smee.io- and gosmee-compatible channels. */
  smee: boolean;
  /** Where the server is reached (origin and a path ending in `/`), for the channel URLs /new hands out; else from the request. */
  publicUrl?: string;
}

/** The key from --key or HOOKBOT_KEY; missing is the error the original gives. */
export function resolveKeys(key: string | undefined, env: NodeJS.ProcessEnv): string[] {
  const current = key ?? env.HOOKBOT_KEY;
  if (!current) throw new ConfigError('HOOKBOT_KEY not set (set the HOOKBOT_KEY environment variable or pass --key)');
  return [current, ...parseList(env.HOOKBOT_PREVIOUS_KEYS).filter((k) => k !== current)];
}

/** The limits' fields (see ops/limits.ts for what each one does). */
function limits(v: ServeValues): LimitsConfig {
  const rateLimitBurst = v.rateLimitBurst ?? v.rateLimit;
  if (v.rateLimit > 0 && rateLimitBurst < 1) throw new ConfigError('--rate-limit-burst must be at least 1 while --rate-limit is on');
  if (v.maxBodyInFlight > 0 && v.maxBody > v.maxBodyInFlight) {
    throw new ConfigError(
      `--max-body ${formatSize(v.maxBody)} is larger than --max-body-in-flight ${formatSize(v.maxBodyInFlight)}: publishes between the two would always be refused (503); raise --max-body-in-flight (0 disables it) or lower --max-body`,
    );
  }
  return {
    rateLimit: v.rateLimit,
    rateLimitBurst,
    maxSubscribersPerIp: v.maxSubscribersPerIp,
    maxSubscriptions: v.maxSubscriptions ?? LIMIT_DEFAULTS.maxSubscriptions,
    maxConnectionsPerIp: v.maxConnectionsPerIp,
    maxBodyInFlight: v.maxBodyInFlight,
    trustProxy: v.trustProxy,
    limitExempt: v.limitExempt,
  };
}

/**
 * Where history lives: the durable store in --data-dir (the default), memory
 * (--memory), or Redis, which takes precedence over both. A flag beats its
 * environment variable; the two store choices at the same level contradict.
 */
function store(opts: ServeOptions, env: NodeJS.ProcessEnv, v: ServeValues): Pick<Config, 'dataDir' | 'fsync' | 'storeWarning'> {
  const memoryFlag = opts.memory === true;
  const memoryEnv = !memoryFlag && v.memory;
  const dirEnv = env.HOOKBOT_DATA_DIR || undefined;
  if (memoryFlag && opts.dataDir !== undefined) throw new ConfigError('--memory and --data-dir cannot be used together: --memory keeps nothing on disk');
  if (memoryEnv && opts.dataDir === undefined && dirEnv !== undefined) {
    throw new ConfigError('HOOKBOT_MEMORY and HOOKBOT_DATA_DIR cannot be used together: HOOKBOT_MEMORY keeps nothing on disk');
  }
  const memory = memoryFlag || (opts.dataDir === undefined && memoryEnv);
  const fsyncGiven = opts.fsync !== undefined || Boolean(env.HOOKBOT_FSYNC);
  if (v.redis !== undefined) {
    const given = [...(v.dataDir !== undefined ? ['--data-dir'] : []), ...(v.memory ? ['--memory'] : []), ...(fsyncGiven ? ['--fsync'] : [])];
    return given.length === 0 ? {} : { storeWarning: `--redis takes precedence: history is kept in Redis, and ${given.join(' and ')} ${given.length > 1 ? 'are' : 'is'} ignored` };
  }
  if (memory) {
    if (v.fsync === 'always') throw new ConfigError('--fsync always needs the durable store; it has no effect with --memory');
    return {};
  }
  return { dataDir: resolvePath(opts.dataDir ?? dirEnv ?? DEFAULT_DATA_DIR), fsync: v.fsync };
}

/** A router that could not verify anything refuses to start. */
function routers(v: ServeValues): Pick<Config, 'routers' | 'githubSecrets' | 'gitlabTokens' | 'dedupeWindowMs'> {
  for (const { name, secret } of ROUTERS) {
    if (v.router.includes(name) && v[secret.option].length === 0) {
      throw new ConfigError(`--router ${name} needs ${secret.what}: set ${secret.env} or pass ${secret.flag} (comma-separate several to rotate)`);
    }
  }
  return { routers: v.router, githubSecrets: v.githubSecret, gitlabTokens: v.gitlabToken, dedupeWindowMs: v.dedupeWindow };
}

/**
 * Every serve option from `opts` (as typed), else its HOOKBOT_* variable in
 * `env`, else its default; validated once.
 */
export function resolveServeConfig(opts: ServeOptions, env: NodeJS.ProcessEnv = process.env): Config {
  // The key first, as the original: without one nothing else matters.
  const keys = resolveKeys(opts.key, env);
  const v = readServeOptions(opts, env);

  if (Boolean(v.sslkey) !== Boolean(v.sslcrt)) throw new ConfigError('--sslkey and --sslcrt must be given together');
  const tls = v.sslkey && v.sslcrt ? { key: readFileOption(v.sslkey, '--sslkey'), cert: readFileOption(v.sslcrt, '--sslcrt') } : undefined;

  const retention: Retention = { count: v.history, bytes: v.historyBytes, ageMs: v.historyAge, totalBytes: v.historyTotalBytes, topics: v.historyTopics };

  return {
    bind: v.bind,
    keys,
    tls,
    maxBody: v.maxBody,
    maxSubscriberBuffer: v.maxSubscriberBuffer,
    logLevel: v.logLevel,
    statsIntervalMs: v.statsInterval,
    pingIntervalMs: v.pingInterval,
    sseHeartbeatMs: v.sseHeartbeat,
    keepHeaders: v.keepHeader,
    retention,
    ...(v.redis !== undefined ? { redisUrl: v.redis } : {}),
    ...store(opts, env, v),
    ...routers(v),
    ...limits(v),
    ...(v.metricsToken ? { metricsToken: v.metricsToken } : {}),
    catchUp: { ageMs: v.catchUpAge, count: v.catchUpCount, bytes: v.catchUpBytes },
    headerTimeoutMs: v.headerTimeout,
    bodyTimeoutMs: v.bodyTimeout,
    idleTimeoutMs: v.idleTimeout,
    smee: v.smee,
    ...(v.publicUrl !== undefined ? { publicUrl: v.publicUrl } : {}),
  };
}

function readFileOption(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(`${option} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
