/**
 * The cluster backend: ids, history and fan-out live in Redis so that every
 * node behind a load balancer sees the same messages in the same order.
 *
 * Layout (all keys share the hash tag `{<ns>}` so the Lua scripts touch one
 * slot and also work on Redis Cluster; keys built inside the scripts, such as
 * a topic's index, carry the same leading tag):
 *   {ns}:lastid        the last id handed out, for every topic and node
 *   {ns}:feed          stream of every message (topic, headers, body, time, previous id),
 *                      what every node reads to deliver; kept for the catch-up window
 *   {ns}:feed-index    the same ids with each message's stored size, so trimming the
 *                      feed never reads bodies; {ns}:feed-bytes is their sum
 *   {ns}:feed-trimmed  newest id trimmed from the feed; {ns}:feed-due when its head ages out
 *   {ns}:cursors       hash node -> "<last id it read> <ms>", what trimming waits for
 *                      (and `*since`: when the set began, see cursor.lua)
 *   {ns}:log           stream of every retained message (history): the copy read for
 *                      recursive replay
 *   {ns}:t:<topic>     per-topic stream holding only ids and stored sizes (the topic's
 *                      index), trimmed by the per-topic count and byte limits
 *   {ns}:bytes         hash topic -> retained bytes (storedSize)
 *   {ns}:trimmed       hash topic -> newest id trimmed from it, for gap detection
 *   {ns}:total         retained bytes over all topics (storedSize of each message)
 *   {ns}:expire-at     when the log's head is due for age expiry (saves reading it per publish)
 *   {ns}:idem, {ns}:idem-at  publishers' idempotency keys -> original id, and when stored
 *
 * Topic names go into key names verbatim: Redis keys are binary-safe, nothing
 * here uses them as SCAN/KEYS glob patterns, and the hash tag is always the
 * leading `{ns}`, so no topic (not even `/unsafe/{x}*`) can change the slot or
 * collide with another key.
 *
 * Publishing is one Lua script (src/server/backends/redis-lua/): it checks the
 * idempotency key, takes the id from Redis TIME and the global last id,
 * appends to history and to the feed, and trims, all atomically.
 *
 * Delivery: each node reads the feed itself (XREAD BLOCK from the last id it
 * delivered), on a connection of its own, instead of pub/sub. Delivery after a
 * dropped link, after a Redis restart or a Cluster failover is then the same
 * read from the same id: nothing depends on a PUBLISH reaching a node, or on
 * per-topic history still holding what a node missed. Every feed entry names
 * the id before it, so a reader that finds a different one knows entries were
 * trimmed (it fell further behind than the catch-up window) or lost (Redis lost
 * data) and tells its subscribers, never delivering past a silent hole.
 *
 * Limits worth knowing:
 * - Byte limits of history count body bytes exactly, but Redis memory is
 *   higher: headers, stream overhead, and entries deleted from the middle of a
 *   stream node (per-topic trimming) are only freed once their whole node
 *   (≤ 4 KiB or 100 entries by default) is gone. The feed counts storedSize().
 * - {ns}:trimmed keeps one small field per topic that ever lost a message, so
 *   resumes on long-gone topics still learn about gaps; it is not bounded.
 * - All nodes must run with the same retention and catch-up settings.
 */
import { randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { RedisOptions } from 'ioredis';
import { checkRedisUrl, connectRedis, type RedisConnection } from './redis-connect.js';
import {
  BackendUnavailableError,
  historyEnabled,
  storedSize,
  type Backend,
  type HistoryResult,
  type PublishOptions,
  type Retention,
} from './backend.js';
import { DEFAULT_IDEMPOTENCY_MAX_KEYS, DEFAULT_IDEMPOTENCY_WINDOW_MS, idempotencyScope } from './idempotency.js';
import { compareIds, Message, type Headers } from '../../protocol/message.js';
import { backoffDelay } from '../../util/backoff.js';

/** The parts of a pino logger this file uses. */
export interface LogLike {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/**
 * How far behind a node may fall (or how long its Redis link may be down) and
 * still deliver every message: the feed keeps each message at least until every
 * live node has read it, but never beyond any of these. Independent of history.
 */
export interface CatchUpWindow {
  ageMs: number;
  count: number;
  /** Counted with storedSize(), like history. */
  bytes: number;
}

export const DEFAULT_CATCH_UP: CatchUpWindow = { ageMs: 5 * 60_000, count: 100_000, bytes: 64 * 1024 * 1024 };

export interface RedisBackendOptions {
  /** Key namespace, so several hookbot clusters can share one Redis. */
  namespace?: string;
  /** Reject a command Redis has not answered within this long (a hung Redis). */
  commandTimeoutMs?: number;
  /** First and longest pause between reconnect attempts (exponential backoff with jitter between them). */
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  catchUp?: Partial<CatchUpWindow>;
  /** How long a publisher's idempotency key is remembered (--dedupe-window); 0 ignores keys. */
  idempotencyWindowMs?: number;
  /** Idempotency keys kept at most (the oldest go first). */
  idempotencyMaxKeys?: number;
}

const silent: LogLike = { debug() {}, info() {}, warn() {}, error() {} };

/** Feed entries one read returns at most. */
const READ_COUNT = 500;
/** How long one XREAD waits for new entries before asking again. */
const BLOCK_MS = 5000;
/** How often a node refreshes its cursor (and trims what every node has read). */
const CURSOR_INTERVAL_MS = 1000;
/** A cursor silent for this long (or the catch-up age, if longer) belongs to a node that is gone. */
const MIN_CURSOR_TTL_MS = 10_000;

const SCRIPT_DIR = new URL('./redis-lua/', import.meta.url);
let scripts: Record<'publish' | 'expire' | 'history' | 'cursor', string> | undefined;

/**
 * The Lua scripts, read once: src/ and dist/ both hold them beside this file
 * (`npm run build` copies them), so tests, the CLI and the package find them.
 */
function loadScripts(): NonNullable<typeof scripts> {
  if (scripts) return scripts;
  const read = (name: string): string => {
    try {
      return readFileSync(new URL(`${name}.lua`, SCRIPT_DIR), 'utf8');
    } catch (err) {
      throw new Error(`cannot read the Redis script ${name}.lua in ${SCRIPT_DIR.pathname}: ${(err as Error).message} (npm run build copies src/**/*.lua to dist/)`, { cause: err });
    }
  };
  // Redis scripts cannot include files: each one is sent with the shared part in front.
  const common = read('common');
  const script = (name: string) => `${common}\n${read(name)}`;
  scripts = { publish: script('publish'), expire: script('expire'), history: script('history'), cursor: script('cursor') };
  return scripts;
}

type Arg = string | Buffer | number;
type ScriptedRedis = RedisConnection & {
  hookbotPublish(...args: Arg[]): Promise<[string, string, number]>;
  hookbotExpire(...args: Arg[]): Promise<number>;
  hookbotHistoryBuffer(...args: Arg[]): Promise<[Buffer, number, LogEntry[]]>;
  hookbotCursor(...args: Arg[]): Promise<[string, string, string]>;
};
type LogEntry = [Buffer, Buffer[]];

/** KEYS every script starts with (see common.lua); its own KEYS follow, then the common ARGV, then its own. */
const COMMON_KEYS = 12;

const PAGE = 500;

export interface RedisBackendStats {
  /** Times the node (re)attached to the feed after its read link failed. */
  reattaches: number;
  /** Entries the first read after each re-attach returned: what accumulated while the link was down. */
  caughtUp: number;
  /** Times this node told its subscribers it missed messages. */
  lost: number;
  duplicatesDropped: number;
}

export class RedisBackend implements Backend {
  readonly name = 'redis';
  #retention: Retention;
  #enabled: boolean;
  #log: LogLike;
  #cmd: ScriptedRedis;
  /** Blocks in XREAD, so it has a connection (or Cluster) of its own. */
  #reader: RedisConnection;
  #keys: {
    log: string; bytes: string; trimmed: string; total: string; expat: string; topicPrefix: string;
    feed: string; cursors: string; lastid: string; idem: string; idemAt: string;
  };
  /** The first KEYS and the first ARGV of every script, built once. */
  #commonKeys: string[];
  #commonArgs: Arg[];
  #idempotencyWindowMs: number;
  #idempotencyMaxKeys: number;
  readonly #nodeId = randomUUID();
  #listener: (m: Message) => void = () => {};
  #lostListeners: Array<(afterId: string) => void> = [];
  #readyListeners: Array<(ready: boolean) => void> = [];
  #lastReady = false;
  /** Id of the last feed entry handed to the listener: where reading resumes. Undefined until first attached. */
  #lastDelivered: string | undefined;
  /** False after a read failed, until the cursor is registered (and checked) again. */
  #attached = false;
  /** Whether the next entry must name #lastDelivered as its predecessor (off right after a reported loss). */
  #checkChain = true;
  #firstReadAfterAttach = false;
  #cursorTimer: NodeJS.Timeout | undefined;
  #expireTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #stats: RedisBackendStats = { reattaches: 0, caughtUp: 0, lost: 0, duplicatesDropped: 0 };
  #minDelay: number;
  #maxDelay: number;

  constructor(url: string, retention: Retention, log: LogLike = silent, options: RedisBackendOptions = {}) {
    checkRedisUrl(url);
    const lua = loadScripts();
    this.#retention = retention;
    this.#enabled = historyEnabled(retention);
    this.#log = log;
    const catchUp = { ...DEFAULT_CATCH_UP, ...options.catchUp };
    for (const [name, v] of Object.entries(catchUp)) {
      if (!(Number.isInteger(v) && v > 0)) throw new RangeError(`catch-up ${name} must be a positive integer, got ${v}`);
    }
    this.#idempotencyWindowMs = options.idempotencyWindowMs ?? DEFAULT_IDEMPOTENCY_WINDOW_MS;
    this.#idempotencyMaxKeys = options.idempotencyMaxKeys ?? DEFAULT_IDEMPOTENCY_MAX_KEYS;
    const ns = options.namespace ?? 'hookbot';
    // The namespace is the hash tag: braces in it would move keys to other Cluster slots.
    if (!/^[^{}]+$/.test(ns)) throw new Error(`Redis namespace must be non-empty and contain no braces, got ${JSON.stringify(ns)}`);
    const tag = `{${ns}}`;
    this.#keys = {
      log: `${tag}:log`,
      bytes: `${tag}:bytes`,
      trimmed: `${tag}:trimmed`,
      total: `${tag}:total`,
      expat: `${tag}:expire-at`,
      topicPrefix: `${tag}:t:`,
      feed: `${tag}:feed`,
      cursors: `${tag}:cursors`,
      lastid: `${tag}:lastid`,
      idem: `${tag}:idem`,
      idemAt: `${tag}:idem-at`,
    };
    const k = this.#keys;
    this.#commonKeys = [
      k.log, k.bytes, k.trimmed, k.total, k.expat,
      k.feed, `${tag}:feed-index`, `${tag}:feed-bytes`, `${tag}:feed-trimmed`, `${tag}:feed-due`, k.cursors, k.lastid,
    ];
    this.#commonArgs = [
      k.topicPrefix, retention.ageMs, retention.totalBytes,
      catchUp.ageMs, catchUp.count, catchUp.bytes, Math.max(catchUp.ageMs, MIN_CURSOR_TTL_MS),
    ];
    this.#minDelay = options.minReconnectDelayMs ?? 50;
    this.#maxDelay = Math.max(options.maxReconnectDelayMs ?? 2000, this.#minDelay);
    const commandTimeout = options.commandTimeoutMs ?? 3000;
    const common: RedisOptions = {
      // Fail fast while Redis is away: a publisher must get a 503 now, not a
      // 200 minutes later (or never), so nothing is queued offline and a
      // command in flight when the link drops is rejected, not resent.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout: 5000,
      retryStrategy: (times) => backoffDelay(times - 1, { minMs: this.#minDelay, maxMs: this.#maxDelay, jitter: 0.5 }),
      lazyConnect: false,
    };
    // Named per node, so CLIENT LIST shows whose link is whose.
    const node = this.#nodeId.slice(0, 8);
    this.#cmd = connectRedis(url, { ...common, commandTimeout, connectionName: `${ns}-cmd-${node}` }) as ScriptedRedis;
    // The read blocks up to BLOCK_MS; past that plus the command timeout the link is taken for dead.
    this.#reader = connectRedis(url, { ...common, commandTimeout: BLOCK_MS + commandTimeout, connectionName: `${ns}-read-${node}` });
    this.#cmd.defineCommand('hookbotPublish', { numberOfKeys: COMMON_KEYS + 3, lua: lua.publish });
    this.#cmd.defineCommand('hookbotExpire', { numberOfKeys: COMMON_KEYS, lua: lua.expire });
    this.#cmd.defineCommand('hookbotHistory', { numberOfKeys: COMMON_KEYS + 1, lua: lua.history });
    this.#cmd.defineCommand('hookbotCursor', { numberOfKeys: COMMON_KEYS, lua: lua.cursor });

    // Both are EventEmitters; TypeScript cannot call `on` on the Redis | Cluster union directly.
    for (const [role, conn] of [['command', this.#cmd], ['reader', this.#reader]] as Array<[string, EventEmitter]>) {
      // ioredis emits 'error' on every failed reconnect; log it without the URL (it may hold a password).
      conn.on('error', (err: Error) => this.#log.debug({ role, err: err.message }, 'redis connection error'));
      conn.on('close', () => this.#updateReady());
      conn.on('end', () => this.#updateReady());
      conn.on('ready', () => this.#updateReady());
    }
    (this.#reader as EventEmitter).on('close', () => {
      this.#attached = false;
      this.#updateReady();
    });

    void this.#readLoop();
    this.#cursorTimer = setInterval(() => void this.#refreshCursor(), CURSOR_INTERVAL_MS);
    this.#cursorTimer.unref();
    if (this.#enabled) {
      const every = Math.min(Math.max(Math.floor(retention.ageMs / 10), 1000), 60_000);
      this.#expireTimer = setInterval(() => void this.#expire().catch(() => {}), every);
      this.#expireTimer.unref();
    }
  }

  /** Counters for metrics and tests. */
  get stats(): Readonly<RedisBackendStats> {
    return { ...this.#stats };
  }

  /** This node's name in {ns}:cursors; its connections are named `<ns>-cmd-` and `<ns>-read-` with its first 8 characters. */
  get nodeId(): string {
    return this.#nodeId;
  }

  setListener(listener: (m: Message) => void): void {
    this.#listener = listener;
  }

  onLost(listener: (afterId: string) => void): void {
    this.#lostListeners.push(listener);
  }

  /** True when this node can both accept publishes and read the feed. */
  ready(): boolean {
    return !this.#closed && this.#cmd.status === 'ready' && this.#reader.status === 'ready' && this.#attached;
  }

  onReadyChange(listener: (ready: boolean) => void): void {
    this.#readyListeners.push(listener);
  }

  /** Resolves once ready(), for startup and tests; rejects after timeoutMs. */
  whenReady(timeoutMs: number): Promise<void> {
    if (this.ready()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new BackendUnavailableError('redis unavailable: not ready in time')), timeoutMs);
      const listener = (ready: boolean): void => {
        if (!ready) return;
        clearTimeout(timer);
        this.#readyListeners = this.#readyListeners.filter((l) => l !== listener);
        resolve();
      };
      this.onReadyChange(listener);
    });
  }

  #updateReady(): void {
    const now = this.ready();
    if (now === this.#lastReady) return;
    this.#lastReady = now;
    if (now) this.#log.info({ ready: now }, 'redis backend ready');
    else if (!this.#closed) this.#log.warn({ ready: now, command: this.#cmd.status, reader: this.#reader.status }, 'redis backend not ready; publishes answer 503 until it is back');
    for (const l of this.#readyListeners) l(now);
  }

  #unavailable(err: unknown): BackendUnavailableError {
    if (err instanceof BackendUnavailableError) return err;
    const reason = err instanceof Error ? err.message : String(err);
    return new BackendUnavailableError(`redis unavailable: ${reason}`);
  }

  #checkUsable(): void {
    if (this.#closed) throw new BackendUnavailableError('server is shutting down');
    if (this.#cmd.status !== 'ready') throw new BackendUnavailableError(`redis unavailable: connection ${this.#cmd.status}`);
    // Until this node knows where it starts reading, a message accepted (or a
    // history read) now could fall before that point and never reach its subscribers.
    if (this.#lastDelivered === undefined) throw new BackendUnavailableError('redis unavailable: not reading the feed yet');
  }

  async publish(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Promise<Message> {
    this.#checkUsable();
    const k = this.#keys;
    const r = this.#retention;
    const key = this.#idempotencyWindowMs > 0 ? options?.idempotencyKey : undefined;
    const headersJson = JSON.stringify(headers);
    let reply: [string, string, number];
    try {
      reply = await this.#cmd.hookbotPublish(
        ...this.#commonKeys, k.topicPrefix + topic, k.idem, k.idemAt,
        ...this.#commonArgs, topic, headersJson, body, this.#enabled ? '1' : '0', r.count, r.bytes, storedSize(topic, headers, body),
        key === undefined ? '' : idempotencyScope(topic, key), this.#idempotencyWindowMs, this.#idempotencyMaxKeys,
      );
    } catch (err) {
      throw this.#unavailable(err);
    }
    // A repeated key: the original message's id; nothing was stored or dispatched again.
    if (reply[2] === 1) return new Message(reply[0], topic, headers, body);
    // time is Redis's clock at acceptance, the same on every node.
    return new Message(reply[0], topic, headers, body, Number(reply[1]));
  }

  async #expire(): Promise<void> {
    if (!this.#enabled || this.#closed || this.#cmd.status !== 'ready') return;
    await this.#cmd.hookbotExpire(...this.#commonKeys, ...this.#commonArgs);
  }

  // ---- delivery: reading the feed ----

  /**
   * Registers this node's cursor and, after a failed read, checks that the feed
   * still holds everything after it. On first start the cursor is the last id
   * handed out (what was published before this node ran is history's business).
   */
  async #attach(): Promise<void> {
    const [cursor, lastId, trimmed] = await this.#cmd.hookbotCursor(...this.#commonKeys, ...this.#commonArgs, this.#nodeId, this.#lastDelivered ?? '');
    if (this.#closed) return;
    const was = this.#lastDelivered;
    if (was === undefined) {
      this.#lastDelivered = cursor;
    } else {
      this.#stats.reattaches++;
      // Redis forgot ids this node delivered (restart without persistence, failover to a
      // replica that lagged), or trimmed entries it had not read: either way it may have missed some.
      const forgot = lastId === '' ? was !== '0-0' : compareIds(lastId, was) < 0;
      const trimmedPast = trimmed !== '' && compareIds(trimmed, was) > 0;
      if (forgot || trimmedPast) this.#reportLost(was, forgot ? 'redis no longer has the last id this node read' : 'the feed was trimmed past this node');
    }
    this.#attached = true;
    this.#firstReadAfterAttach = was !== undefined;
    this.#updateReady();
  }

  async #readLoop(): Promise<void> {
    let failures = 0;
    while (!this.#closed) {
      try {
        if (!this.#attached) await this.#attach();
        if (this.#closed) return;
        const reply = (await this.#reader.xreadBuffer('COUNT', READ_COUNT, 'BLOCK', BLOCK_MS, 'STREAMS', this.#keys.feed, this.#lastDelivered!));
        failures = 0;
        const entries = reply?.[0]?.[1] ?? [];
        if (this.#firstReadAfterAttach) {
          this.#firstReadAfterAttach = false;
          this.#stats.caughtUp += entries.length;
        }
        this.#deliver(entries);
      } catch (err) {
        if (this.#closed) return;
        this.#attached = false;
        this.#updateReady();
        const message = (err as Error).message;
        this.#log.debug({ err: message }, 'reading the feed failed; re-attaching');
        // A read that timed out on a link that may be dead: start a fresh connection.
        if (/timed out/i.test(message)) this.#reader.disconnect(true);
        await this.#pause(failures++);
      }
    }
  }

  /**
   * After a failure: waits until both connections are ready again if one of
   * them is not (they reconnect with their own backoff), else for a backoff
   * delay (Redis answered, but with an error, e.g. a Cluster without that slot).
   */
  #pause(attempt: number): Promise<void> {
    const bothReady = () => this.#cmd.status === 'ready' && this.#reader.status === 'ready';
    const delay = backoffDelay(attempt, { minMs: this.#minDelay, maxMs: this.#maxDelay, jitter: 0.5 });
    const conns = [this.#cmd, this.#reader] as EventEmitter[];
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        for (const c of conns) c.off('ready', onReady);
        resolve();
      };
      const onReady = (): void => {
        if (bothReady()) done();
      };
      // Waiting on 'ready' events, the delay is only a safety net.
      const timer = setTimeout(done, bothReady() ? delay : Math.max(delay, this.#maxDelay));
      if (!bothReady()) for (const c of conns) c.on('ready', onReady);
    });
  }

  #deliver(entries: LogEntry[]): void {
    for (const [rawId, f] of entries) {
      const id = rawId.toString('latin1');
      const last = this.#lastDelivered!;
      if (compareIds(id, last) <= 0) {
        this.#stats.duplicatesDropped++;
        continue;
      }
      let message: Message;
      let prev: string;
      try {
        // Fields in the order publish.lua writes them: t, h, b, m, p. The body is
        // copied so the message does not pin the socket's read buffer.
        if (f.length !== 10) throw new Error(`${f.length} fields`);
        prev = f[9].toString('latin1');
        message = new Message(id, f[1].toString(), JSON.parse(f[3].toString()) as Headers, Buffer.from(f[5]), Number(f[7].toString('latin1')));
      } catch (err) {
        // Skipped, never retried forever; its subscribers hear of the hole.
        this.#log.error({ err: (err as Error).message, id }, 'undecodable feed entry');
        this.#lastDelivered = id;
        this.#reportLost(last, 'undecodable feed entry');
        continue;
      }
      if (this.#checkChain && prev !== last) this.#reportLost(last, 'feed entries before this one were trimmed or lost');
      this.#checkChain = true;
      this.#lastDelivered = id;
      try {
        this.#listener(message);
      } catch (err) {
        this.#log.error({ err: (err as Error).message, id }, 'listener failed');
      }
    }
  }

  /** Every local subscriber hears that messages after `afterId` may be missing; once per hole. */
  #reportLost(afterId: string, reason: string): void {
    this.#stats.lost++;
    this.#checkChain = false;
    this.#log.warn({ afterId, reason }, 'this node missed messages; telling its subscribers');
    for (const l of this.#lostListeners) {
      try {
        l(afterId);
      } catch (err) {
        this.#log.error({ err: (err as Error).message }, 'lost listener failed');
      }
    }
  }

  /** Keeps this node's cursor alive (and lets trimming pass what every node has read). */
  async #refreshCursor(): Promise<void> {
    if (this.#closed || this.#lastDelivered === undefined || this.#cmd.status !== 'ready') return;
    try {
      await this.#cmd.hookbotCursor(...this.#commonKeys, ...this.#commonArgs, this.#nodeId, this.#lastDelivered);
    } catch (err) {
      this.#log.debug({ err: (err as Error).message }, 'cursor refresh failed; next time');
    }
  }

  // ---- history ----

  async history(topic: string, since?: string, limit?: number): Promise<HistoryResult> {
    if (!this.#enabled) return { gap: false, messages: [] };
    this.#checkUsable();
    try {
      return topic.endsWith('/') ? await this.#recursiveHistory(topic, since, limit) : await this.#exactHistory(topic, since, limit);
    } catch (err) {
      throw this.#unavailable(err);
    }
  }

  async #exactHistory(topic: string, since: string | undefined, limit: number | undefined): Promise<HistoryResult> {
    const k = this.#keys;
    if (limit !== undefined && limit <= 0) {
      const all = await this.#exactHistory(topic, since, undefined);
      return { gap: all.gap || all.messages.length > 0, messages: [] };
    }
    const [trimmed, cut, entries] = await this.#cmd.hookbotHistoryBuffer(
      ...this.#commonKeys, k.topicPrefix + topic,
      ...this.#commonArgs, topic, since === undefined ? '-' : `(${since}`, limit ?? 0,
    );
    const upTo = trimmed.length > 0 ? trimmed.toString() : undefined;
    const gap = cut === 1 || (upTo !== undefined && since !== undefined && compareIds(upTo, since) > 0);
    return { gap, messages: entries.map(decodeLogEntry) };
  }

  async #recursiveHistory(prefix: string, since: string | undefined, limit: number | undefined): Promise<HistoryResult> {
    await this.#expire();
    const k = this.#keys;
    const messages: Message[] = [];
    let cut = false;
    if (limit !== undefined) {
      // Newest first from the tail: a bounded replay never walks the whole log.
      let before = '+';
      const lower = since === undefined ? '-' : `(${since}`;
      outer: for (;;) {
        const page = (await this.#cmd.xrevrangeBuffer(k.log, before, lower, 'COUNT', PAGE)) as LogEntry[];
        for (const entry of page) {
          before = `(${entry[0].toString()}`;
          if (!fieldOf(entry[1], 't')!.toString().startsWith(prefix)) continue;
          if (messages.length === limit) {
            cut = true;
            break outer;
          }
          messages.push(decodeLogEntry(entry));
        }
        if (page.length < PAGE) break;
      }
      messages.reverse();
    } else {
      let after = since === undefined ? '-' : `(${since}`;
      for (;;) {
        const page = (await this.#cmd.xrangeBuffer(k.log, after, '+', 'COUNT', PAGE)) as LogEntry[];
        for (const entry of page) {
          after = `(${entry[0].toString()}`;
          if (fieldOf(entry[1], 't')!.toString().startsWith(prefix)) messages.push(decodeLogEntry(entry));
        }
        if (page.length < PAGE) break;
      }
    }
    // Read trim markers after the messages: anything trimmed during the scan shows up here.
    let gap = cut;
    if (!gap && since !== undefined) {
      let cursor = '0';
      do {
        const [next, flat] = await this.#cmd.hscan(k.trimmed, cursor, 'COUNT', 1000);
        cursor = next;
        for (let i = 0; i < flat.length; i += 2) {
          if (flat[i].startsWith(prefix) && compareIds(flat[i + 1], since) > 0) gap = true;
        }
      } while (cursor !== '0' && !gap);
    }
    return { gap, messages };
  }

  async historyTopics(): Promise<Array<{ topic: string; messages: number; bytes: number }>> {
    if (!this.#enabled) return [];
    this.#checkUsable();
    try {
      await this.#expire();
      const out: Array<{ topic: string; messages: number; bytes: number }> = [];
      let cursor = '0';
      // Bounded: the inspector shows at most this many topics.
      const MAX = 10_000;
      do {
        const [next, flat] = await this.#cmd.hscan(this.#keys.bytes, cursor, 'COUNT', 1000);
        cursor = next;
        const pipe = this.#cmd.pipeline();
        const batch: Array<{ topic: string; bytes: number }> = [];
        for (let i = 0; i < flat.length && out.length + batch.length < MAX; i += 2) {
          batch.push({ topic: flat[i], bytes: Number(flat[i + 1]) });
          pipe.xlen(this.#keys.topicPrefix + flat[i]);
        }
        const lens = (await pipe.exec()) ?? [];
        batch.forEach((b, i) => {
          const n = Number(lens[i]?.[1] ?? 0);
          if (n > 0) out.push({ topic: b.topic, messages: n, bytes: b.bytes });
        });
      } while (cursor !== '0' && out.length < MAX);
      return out;
    } catch (err) {
      throw this.#unavailable(err);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#cursorTimer) clearInterval(this.#cursorTimer);
    if (this.#expireTimer) clearInterval(this.#expireTimer);
    // A node leaving on purpose stops holding back the feed's trimming at once.
    if (this.#cmd.status === 'ready') await this.#cmd.hdel(this.#keys.cursors, this.#nodeId).catch(() => {});
    // The reader may sit in a blocking read: a QUIT would wait behind it.
    this.#reader.disconnect(false);
    await quit(this.#cmd);
    this.#attached = false;
    this.#updateReady();
  }
}

async function quit(conn: RedisConnection): Promise<void> {
  if (conn.status === 'ready') {
    try {
      await conn.quit();
      return;
    } catch {
      // fall through to a hard disconnect
    }
  }
  conn.disconnect(false);
}

export { checkRedisUrl };

function fieldOf(fields: Buffer[], name: string): Buffer | undefined {
  for (let i = 0; i < fields.length; i += 2) if (fields[i].toString() === name) return fields[i + 1];
  return undefined;
}

function decodeLogEntry([id, fields]: LogEntry): Message {
  const topic = fieldOf(fields, 't')!.toString();
  const headers = JSON.parse(fieldOf(fields, 'h')!.toString()) as Headers;
  const body = fieldOf(fields, 'b')!;
  const time = Number(fieldOf(fields, 'm')!.toString());
  return new Message(id.toString(), topic, headers, body, time);
}
