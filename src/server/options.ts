/**
 * Every `hookbot serve` option in one table: flag, environment variable,
 * default, help and parser. The CLI builds its commander options (and so
 * `serve --help`) from this table, and `resolveServeConfig` reads and validates
 * every value through it, so a flag, its variable, its help line and its
 * validation cannot drift apart.
 *
 * Adding an option is one entry in SERVE_OPTIONS: its parsed value then
 * appears, typed, in `readServeOptions(...)` for config.ts to put where the
 * server reads it.
 */
import { DEFAULT_RETENTION } from './backends/backend.js';
import { checkRedisUrl, DEFAULT_CATCH_UP } from './backends/redis.js';
import { DEFAULT_DATA_DIR, FSYNC_MODES, type FsyncMode } from './backends/sqlite.js';
import { exemptList, LIMIT_DEFAULTS } from './ops/limits.js';
import { ROUTER_NAMES } from './routers/registry.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

// ---- value parsers: each error names the option, so an operator can fix a unit file without reading code

export interface Bind {
  /** undefined: every interface, as Go's `:8080`. */
  host: string | undefined;
  port: number;
}

/** `host:port` or `:port`, as the original's --bind. */
export function parseBind(value: string, option = '--bind'): Bind {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  if (!m) throw new ConfigError(`${option} must be host:port or :port, got ${JSON.stringify(value)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(`${option} port must be 0-65535, got ${port}`);
  const host = m[1] ?? m[2];
  return { host: host === '' ? undefined : host, port };
}

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: KiB, kb: KiB, kib: KiB, m: MiB, mb: MiB, mib: MiB, g: GiB, gb: GiB, gib: GiB };

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

/** On/off from the environment (a bare flag is true): 1/true/yes/on or 0/false/no/off. */
export function parseBoolean(value: string | boolean, option: string): boolean {
  if (typeof value === 'boolean') return value;
  const v = value.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off', ''].includes(v)) return false;
  throw new ConfigError(`${option} must be true or false, got ${JSON.stringify(value)}`);
}

/**
 * An absolute http(s) URL the server is reached at, as its origin and a path
 * ending in `/` (channel ids are appended to it): `https://h.example.com/hooks/`.
 */
export function parsePublicUrl(value: string, option: string): string | undefined {
  if (value === '') return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${option} must be an absolute URL such as https://hookbot.example.com, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`${option} must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  if (url.username || url.password || url.search || url.hash) throw new ConfigError(`${option} must be scheme, host and an optional path, without credentials, query or fragment`);
  return url.origin + (url.pathname.endsWith('/') ? url.pathname : url.pathname + '/');
}

/** The inverse of parseSize for exact units, so defaults derived from constants read as typed. */
export function formatSize(bytes: number): string {
  for (const [unit, n] of [['GiB', GiB], ['MiB', MiB], ['KiB', KiB]] as const) if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  return String(bytes);
}

export function formatDuration(ms: number): string {
  // Days only from two on: `24h` reads better than `1d`.
  for (const [unit, n] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) if (ms >= (unit === 'd' ? 2 * n : n) && ms % n === 0) return `${ms / n}${unit}`;
  return `${ms}ms`;
}

function atLeast(min: number, what: string, parse: (value: string, option: string) => number) {
  return (value: string, option: string): number => {
    const n = parse(value, option);
    if (n < min) throw new ConfigError(`${option} must be at least ${what}`);
    return n;
  };
}

// ---- the table

interface SpecBase {
  /** commander flags: `-b, --bind <addr>`, `--trust-proxy [hops]`, `--fsync`. */
  flags: string;
  /** `HOOKBOT_<FLAG>`; only names that predate that rule differ (HOOKBOT_REDIS_URL). */
  env: string;
  help: string;
  /** The default as a user would type it: shown in --help and parsed like any given value. */
  default?: string;
  /** Shown as the default when none can be parsed (derived from another option, or "none"). */
  defaultText?: string;
  /** Also accepted before the command, as the original's global options (`hookbot --key K serve`). */
  global?: boolean;
}

/** `--name <value>`: one string. */
export interface ValueSpec<T> extends SpecBase {
  kind: 'value';
  parse(value: string, option: string): T;
}
/** `--name <value>`, repeatable; each value (and the variable) may be comma-separated. */
export interface ListSpec<T> extends SpecBase {
  kind: 'list';
  parse(items: string[], option: string): T;
}
/** `--name [value]`: bare is true. */
export interface OptionalValueSpec<T> extends SpecBase {
  kind: 'optional';
  parse(value: string | true, option: string): T;
}
/** `--name`: on or off. */
export interface FlagSpec extends SpecBase {
  kind: 'flag';
}

export type OptionSpec = ValueSpec<unknown> | ListSpec<unknown> | OptionalValueSpec<unknown> | FlagSpec;

const text = (value: string) => value;
const isFsyncMode = (mode: string): mode is FsyncMode => (FSYNC_MODES as readonly string[]).includes(mode);
const words = (items: string[]) => items;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export const SERVE_OPTIONS = {
  bind: {
    kind: 'value',
    flags: '-b, --bind <addr>',
    env: 'HOOKBOT_BIND',
    default: ':8080',
    help: 'address to listen on, host:port or :port (every interface)',
    parse: (value: string, option: string) => parseBind(value, option),
  },
  key: {
    kind: 'value',
    flags: '--key <key>',
    env: 'HOOKBOT_KEY',
    global: true,
    help: 'HMAC key for tokens; required (serve, make-tokens, route-github)',
    parse: text,
  },
  sslkey: {
    kind: 'value',
    flags: '-k, --sslkey <file>',
    env: 'HOOKBOT_SSLKEY',
    help: 'TLS private key (PEM); with --sslcrt serves HTTPS/WSS only',
    parse: text,
  },
  sslcrt: {
    kind: 'value',
    flags: '-c, --sslcrt <file>',
    env: 'HOOKBOT_SSLCRT',
    help: 'TLS certificate chain (PEM)',
    parse: text,
  },
  maxBody: {
    kind: 'value',
    flags: '--max-body <size>',
    env: 'HOOKBOT_MAX_BODY',
    default: '25MiB',
    help: 'largest publish body',
    parse: atLeast(1, '1 byte', parseSize),
  },
  maxSubscriberBuffer: {
    kind: 'value',
    flags: '--max-subscriber-buffer <size>',
    env: 'HOOKBOT_MAX_SUBSCRIBER_BUFFER',
    default: '8MiB',
    help: 'bytes queued for one subscriber before it is disconnected (1013)',
    parse: atLeast(1, '1 byte', parseSize),
  },
  keepHeader: {
    kind: 'list',
    flags: '--keep-header <name>',
    env: 'HOOKBOT_KEEP_HEADER',
    defaultText: 'none',
    help: 'also keep this request header with each message (repeatable, or comma-separated)',
    parse: (names: string[], option: string) =>
      names.map((h) => {
        const name = h.toLowerCase();
        if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) throw new ConfigError(`${option} ${JSON.stringify(name)} is not a valid header name`);
        if (name === 'authorization' || name === 'cookie' || name === 'proxy-authorization') throw new ConfigError(`${option} ${name} would store credentials with every message; refusing`);
        return name;
      }),
  },
  history: {
    kind: 'value',
    flags: '--history <count>',
    env: 'HOOKBOT_HISTORY',
    default: String(DEFAULT_RETENTION.count),
    help: 'messages kept per topic for resume (0 disables history)',
    parse: parseCount,
  },
  historyBytes: {
    kind: 'value',
    flags: '--history-bytes <size>',
    env: 'HOOKBOT_HISTORY_BYTES',
    default: formatSize(DEFAULT_RETENTION.bytes),
    help: 'bytes kept per topic (counted as for --history-total-bytes)',
    parse: parseSize,
  },
  historyAge: {
    kind: 'value',
    flags: '--history-age <duration>',
    env: 'HOOKBOT_HISTORY_AGE',
    default: formatDuration(DEFAULT_RETENTION.ageMs),
    help: 'how long a message is kept',
    parse: parseDuration,
  },
  historyTotalBytes: {
    kind: 'value',
    flags: '--history-total-bytes <size>',
    env: 'HOOKBOT_HISTORY_TOTAL_BYTES',
    default: formatSize(DEFAULT_RETENTION.totalBytes),
    help: 'bytes kept across all topics (topic, kept headers, body and a 64-byte overhead per message)',
    parse: parseSize,
  },
  historyTopics: {
    kind: 'value',
    flags: '--history-topics <n>',
    env: 'HOOKBOT_HISTORY_TOPICS',
    default: String(DEFAULT_RETENTION.topics),
    help: 'topics with history at most (the least recently published loses its history first); also bounds the topics remembered as trimmed',
    parse: atLeast(1, '1', parseCount),
  },
  dataDir: {
    kind: 'value',
    flags: '--data-dir <dir>',
    env: 'HOOKBOT_DATA_DIR',
    defaultText: DEFAULT_DATA_DIR,
    help: 'keep ids, history and dedupe state durably in this directory, created if missing',
    parse: (dir: string, option: string) => {
      if (dir === '') throw new ConfigError(`${option} must not be empty`);
      return dir;
    },
  },
  memory: {
    kind: 'flag',
    flags: '--memory',
    env: 'HOOKBOT_MEMORY',
    defaultText: 'off',
    help: 'keep history in memory only: nothing survives a restart',
  },
  fsync: {
    kind: 'value',
    flags: '--fsync <mode>',
    env: 'HOOKBOT_FSYNC',
    default: 'normal',
    help: 'normal: an acknowledged publish survives the process dying; always: also a power loss (fsync before each 200)',
    parse: (mode: string, option: string): FsyncMode => {
      if (!isFsyncMode(mode)) throw new ConfigError(`${option} must be one of ${FSYNC_MODES.join(', ')}, got ${JSON.stringify(mode)}`);
      return mode;
    },
  },
  redis: {
    kind: 'value',
    flags: '--redis <url>',
    env: 'HOOKBOT_REDIS_URL',
    defaultText: 'the data directory',
    help: 'cluster mode: keep history and fan out through Redis: redis[s]://[:password@]host:port[/db], redis[s]-sentinel://host:26379[,host...]/<master>[/db] or redis[s]-cluster://host:port[,host...]',
    parse: (url: string) => {
      if (url === '') return undefined;
      try {
        checkRedisUrl(url);
      } catch (err) {
        // Never the URL itself: it may hold a password.
        throw new ConfigError(`--redis (or HOOKBOT_REDIS_URL): ${(err as Error).message}`);
      }
      return url;
    },
  },
  catchUpAge: {
    kind: 'value',
    flags: '--catch-up-age <duration>',
    env: 'HOOKBOT_CATCH_UP_AGE',
    default: formatDuration(DEFAULT_CATCH_UP.ageMs),
    help: 'cluster mode: how long a node may be cut off from Redis (or behind) and still deliver everything',
    parse: atLeast(1000, '1s', parseDuration),
  },
  catchUpCount: {
    kind: 'value',
    flags: '--catch-up-count <n>',
    env: 'HOOKBOT_CATCH_UP_COUNT',
    default: String(DEFAULT_CATCH_UP.count),
    help: 'cluster mode: messages a node may fall behind and still deliver everything',
    parse: atLeast(1, '1', parseCount),
  },
  catchUpBytes: {
    kind: 'value',
    flags: '--catch-up-bytes <size>',
    env: 'HOOKBOT_CATCH_UP_BYTES',
    default: formatSize(DEFAULT_CATCH_UP.bytes),
    help: 'cluster mode: bytes of messages (counted as for history) a node may fall behind and still deliver everything',
    parse: atLeast(1, '1 byte', parseSize),
  },
  pingInterval: {
    kind: 'value',
    flags: '--ping-interval <duration>',
    env: 'HOOKBOT_PING_INTERVAL',
    default: '30s',
    help: 'ping subscribers this often; no pong by the next ping disconnects',
    parse: atLeast(10, '10ms', parseDuration),
  },
  sseHeartbeat: {
    kind: 'value',
    flags: '--sse-heartbeat <duration>',
    env: 'HOOKBOT_SSE_HEARTBEAT',
    default: '15s',
    help: 'send Server-Sent Events subscribers a `: ping` comment this often',
    parse: atLeast(10, '10ms', parseDuration),
  },
  statsInterval: {
    kind: 'value',
    flags: '--stats-interval <duration>',
    env: 'HOOKBOT_STATS_INTERVAL',
    default: '60s',
    help: 'how often the stats line is logged',
    parse: parseDuration,
  },
  router: {
    kind: 'list',
    flags: '--router <name>',
    env: 'HOOKBOT_ROUTER',
    defaultText: 'none',
    help: `run an in-server router: ${ROUTER_NAMES.join(', ')} (repeatable, or comma-separated)`,
    parse: (names: string[], option: string) => {
      for (const r of names) {
        if (!(ROUTER_NAMES).includes(r)) throw new ConfigError(`${option} ${JSON.stringify(r)} is not a router; available: ${ROUTER_NAMES.join(', ')}`);
      }
      return [...new Set(names)];
    },
  },
  githubSecret: {
    kind: 'list',
    flags: '--github-secret <secrets>',
    env: 'HOOKBOT_GITHUB_SECRET',
    global: true,
    defaultText: 'none',
    help: 'GitHub webhook secret(s) that delivery signatures are verified with (serve --router github, route-github), comma-separated to rotate',
    parse: words,
  },
  gitlabToken: {
    kind: 'list',
    flags: '--gitlab-token <tokens>',
    env: 'HOOKBOT_GITLAB_TOKEN',
    defaultText: 'none',
    help: 'GitLab webhook secret token(s) the gitlab router accepts, comma-separated to rotate',
    parse: words,
  },
  dedupeWindow: {
    kind: 'value',
    flags: '--dedupe-window <duration>',
    env: 'HOOKBOT_DEDUPE_WINDOW',
    default: '1h',
    help: 'how long routers remember delivery ids, and publishes their Idempotency-Key, so a redelivery is published once',
    parse: parseDuration,
  },
  metricsToken: {
    kind: 'value',
    flags: '--metrics-token <token>',
    env: 'HOOKBOT_METRICS_TOKEN',
    defaultText: 'open',
    help: 'require Authorization: Bearer <token> on /metrics',
    parse: (token: string) => token || undefined,
  },
  rateLimit: {
    kind: 'value',
    flags: '--rate-limit <n>',
    env: 'HOOKBOT_RATE_LIMIT',
    default: String(LIMIT_DEFAULTS.rateLimit),
    help: 'publishes per second per client address, 429 beyond; 0 disables',
    parse: parseCount,
  },
  rateLimitBurst: {
    kind: 'value',
    flags: '--rate-limit-burst <n>',
    env: 'HOOKBOT_RATE_LIMIT_BURST',
    defaultText: 'same as --rate-limit',
    help: 'publishes a client may make at once before --rate-limit applies',
    parse: parseCount,
  },
  maxSubscribersPerIp: {
    kind: 'value',
    flags: '--max-subscribers-per-ip <n>',
    env: 'HOOKBOT_MAX_SUBSCRIBERS_PER_IP',
    default: String(LIMIT_DEFAULTS.maxSubscribersPerIp),
    help: 'concurrent subscribers per client address, 429 beyond; 0 disables',
    parse: parseCount,
  },
  maxSubscriptions: {
    kind: 'value',
    flags: '--max-subscriptions <n>',
    env: 'HOOKBOT_MAX_SUBSCRIPTIONS',
    // Derived from this machine's open-file limit (LIMIT_DEFAULTS), so --help names the rule, not a number.
    defaultText: 'open-file limit less a tenth',
    help: 'concurrent subscriptions on this server, 503 beyond; 0 disables',
    parse: parseCount,
  },
  maxConnectionsPerIp: {
    kind: 'value',
    flags: '--max-connections-per-ip <n>',
    env: 'HOOKBOT_MAX_CONNECTIONS_PER_IP',
    default: String(LIMIT_DEFAULTS.maxConnectionsPerIp),
    help: 'concurrent TCP connections per client address (publishers and subscribers), 429 beyond; 0 disables; not applied behind --trust-proxy',
    parse: parseCount,
  },
  maxBodyInFlight: {
    kind: 'value',
    flags: '--max-body-in-flight <size>',
    env: 'HOOKBOT_MAX_BODY_IN_FLIGHT',
    default: formatSize(LIMIT_DEFAULTS.maxBodyInFlight),
    help: 'publish body bytes being received at once, server-wide; past it new publishes get 503 and their bodies are not read; 0 disables',
    parse: parseSize,
  },
  headerTimeout: {
    kind: 'value',
    flags: '--header-timeout <duration>',
    env: 'HOOKBOT_HEADER_TIMEOUT',
    default: '10s',
    help: 'time a client has to send its request headers; 408 after',
    parse: atLeast(100, '100ms', parseDuration),
  },
  bodyTimeout: {
    kind: 'value',
    flags: '--body-timeout <duration>',
    env: 'HOOKBOT_BODY_TIMEOUT',
    default: '15s',
    help: 'time a publisher has to send its whole body once the headers are in; 408 after',
    parse: atLeast(100, '100ms', parseDuration),
  },
  idleTimeout: {
    kind: 'value',
    flags: '--idle-timeout <duration>',
    env: 'HOOKBOT_IDLE_TIMEOUT',
    default: '5s',
    help: 'an idle keep-alive connection (no request in progress) is closed after this long',
    parse: atLeast(100, '100ms', parseDuration),
  },
  limitExempt: {
    kind: 'value',
    flags: '--limit-exempt <cidrs>',
    env: 'HOOKBOT_LIMIT_EXEMPT',
    default: LIMIT_DEFAULTS.limitExempt.join(','),
    help: 'client addresses/ranges the per-address limits skip, comma-separated; "" for none',
    parse: (value: string, option: string) => {
      const list = parseList(value);
      try {
        exemptList(list);
      } catch (err) {
        throw new ConfigError(`${option}: ${(err as Error).message}`);
      }
      return list;
    },
  },
  trustProxy: {
    kind: 'optional',
    flags: '--trust-proxy [hops]',
    env: 'HOOKBOT_TRUST_PROXY',
    defaultText: 'off; bare: 1',
    help: 'take the client address from X-Forwarded-For, set by this many proxies in front',
    parse: (value: string | true, option: string) => (value === true || value === 'true' ? 1 : value === 'false' ? 0 : parseCount(value, option)),
  },
  smee: {
    kind: 'flag',
    flags: '--smee',
    env: 'HOOKBOT_SMEE',
    defaultText: 'off',
    help: 'serve smee.io- and gosmee-compatible channels: GET /new mints one, its URL is the credential to publish and subscribe',
  },
  publicUrl: {
    kind: 'value',
    flags: '--public-url <url>',
    env: 'HOOKBOT_PUBLIC_URL',
    defaultText: 'from the request',
    help: 'scheme, host (and path) this server is reached at, for the channel URLs /new hands out',
    parse: parsePublicUrl,
  },
  logLevel: {
    kind: 'value',
    flags: '--log-level <level>',
    env: 'HOOKBOT_LOG_LEVEL',
    default: 'info',
    help: LOG_LEVELS.join(', '),
    parse: (level: string, option: string) => {
      if (!LOG_LEVELS.includes(level)) throw new ConfigError(`${option} must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`);
      return level;
    },
  },
} as const satisfies Record<string, OptionSpec>;

export type ServeOptionName = keyof typeof SERVE_OPTIONS;

/** What a caller hands over for an option, as typed: a list for repeatable ones, true for a bare flag. */
type RawOf<S> = S extends { kind: 'list' } ? string[] : S extends { kind: 'optional' } ? string | boolean : S extends { kind: 'flag' } ? boolean : string;
/** The validated value; undefined only when the option has no default and was not given. */
type ValueOf<S> = S extends { kind: 'flag' }
  ? boolean
  : S extends { parse(...args: never[]): infer T }
    ? S extends { kind: 'list' } | { kind: 'optional' } | { default: string }
      ? T
      : T | undefined
    : never;

/** The raw option values (what commander hands over, strings as typed); all optional. */
export type ServeOptions = { [K in ServeOptionName]?: RawOf<(typeof SERVE_OPTIONS)[K]> };
export type ServeValues = { [K in ServeOptionName]: ValueOf<(typeof SERVE_OPTIONS)[K]> };

/** `--bind` from `-b, --bind <addr>`. */
export function longFlag(spec: OptionSpec): string {
  const m = /(--[a-z0-9-]+)/.exec(spec.flags);
  if (!m) throw new Error(`option flags without a long name: ${spec.flags}`);
  return m[1];
}

/**
 * Reads one option: the given value, else its environment variable, else its
 * default; validated by its parser. Lists come out flattened and split on commas;
 * an option without a default that is nowhere set is undefined (lists: empty).
 */
export function readOption(spec: OptionSpec, given: string | boolean | string[] | undefined, env: NodeJS.ProcessEnv): unknown {
  const option = longFlag(spec);
  let raw: string | boolean | string[] | undefined = given;
  let fromEnv = false;
  if (raw === undefined || (Array.isArray(raw) && raw.length === 0)) {
    raw = env[spec.env];
    fromEnv = raw !== undefined;
  }
  if (raw === undefined) raw = spec.default;
  try {
    switch (spec.kind) {
      case 'flag':
        return raw === undefined ? false : parseBoolean(raw as string | boolean, option);
      case 'list': {
        const items = raw === undefined ? [] : (Array.isArray(raw) ? raw : [String(raw)]).flatMap((s) => parseList(s));
        return spec.parse(items, option);
      }
      case 'optional':
        if (raw === undefined || raw === false) return spec.parse('0', option);
        return spec.parse(raw === true ? true : String(raw), option);
      case 'value':
        return raw === undefined ? undefined : spec.parse(String(raw), option);
    }
  } catch (err) {
    // Say where a bad value came from when it was not typed on the command line.
    if (fromEnv && err instanceof ConfigError && !err.message.includes(spec.env)) throw new ConfigError(`${err.message} (from ${spec.env})`);
    throw err;
  }
}

/** Every serve option read and validated once; errors name the option (and the variable, when it came from one). */
export function readServeOptions(opts: ServeOptions, env: NodeJS.ProcessEnv): ServeValues {
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(SERVE_OPTIONS) as Array<[ServeOptionName, OptionSpec]>) {
    values[name] = readOption(spec, opts[name], env);
  }
  return values as ServeValues;
}

/** The parsed defaults: what `hookbot serve` runs with when nothing is set. */
export const SERVE_DEFAULTS: Readonly<ServeValues> = readServeOptions({}, {});
