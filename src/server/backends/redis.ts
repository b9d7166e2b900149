/**
 * The cluster backend: ids, history and fan-out live in Redis so that every
 * node behind a load balancer sees the same messages in the same order.
 *
 * Layout (all keys share the hash tag `{<ns>}` so the Lua scripts touch one
 * slot and also work on Redis Cluster; keys built inside the scripts, such as
 * a topic's index, carry the same leading tag):
 *   {ns}:lastid        the last id handed out, for every topic and node
 *   {ns}:log           stream of every retained message (topic, headers, body, time);
 *                      the one copy of each body, read for recursive replay and catch-up
 *   {ns}:t:<topic>     per-topic stream holding only ids and body lengths (the topic's
 *                      index), trimmed by the per-topic count and byte limits
 *   {ns}:bytes         hash topic -> retained body bytes
 *   {ns}:trimmed       hash topic -> newest id trimmed from it, for gap detection
 *   {ns}:total         retained body bytes over all topics
 *   {ns}:expire-at     when the log's head is due for age expiry (saves reading it per publish)
 *   channel <ns>:fanout  one pub/sub channel carrying every message
 *
 * Topic names go into key names verbatim: Redis keys are binary-safe, nothing
 * here uses them as SCAN/KEYS glob patterns, and the hash tag is always the
 * leading `{ns}`, so no topic (not even `/unsafe/{x}*`) can change the slot or
 * collide with another key.
 *
 * Publishing is one Lua script: it takes the id from Redis TIME and the global
 * last id, appends to the log and the topic index, trims, and PUBLISHes — all
 * atomically, so pub/sub order is id order on every node.
 *
 * Limits worth knowing:
 * - Byte limits count body bytes exactly, but Redis memory is higher: headers,
 *   stream overhead, and entries deleted from the middle of a stream node
 *   (per-topic trimming) are only freed once their whole node (≤ 4 KiB or 100
 *   entries by default) is gone.
 * - A node that lost its pub/sub link catches up from the log, so it can only
 *   catch up on what history still retains (with history off, the newest
 *   catchUpCount messages up to catchUpAgeMs old).
 * - {ns}:trimmed keeps one small field per topic that ever lost a message, so
 *   resumes on long-gone topics still learn about gaps; it is not bounded.
 * - All nodes must run with the same retention settings.
 */
import type { EventEmitter } from 'node:events';
import type { Redis, RedisOptions } from 'ioredis';
import { checkRedisUrl, connectRedis, type RedisConnection } from './redis-connect.js';
import { BackendUnavailableError, historyEnabled, type Backend, type HistoryResult, type Retention } from './backend.js';
import { compareIds, Message, type Headers } from '../../protocol/message.js';
import { backoffDelay } from '../../util/backoff.js';

/** The parts of a pino logger this file uses. */
export interface LogLike {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface RedisBackendOptions {
  /** Key and channel namespace, so several hookbot clusters can share one Redis. */
  namespace?: string;
  /** Reject a command Redis has not answered within this long (a hung Redis). */
  commandTimeoutMs?: number;
  /** First and longest pause between reconnect attempts (exponential backoff with jitter between them). */
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /**
   * With history disabled the log still keeps about this many of the newest
   * messages, none older than catchUpAgeMs, so a node whose pub/sub link
   * blinked can catch up.
   */
  catchUpCount?: number;
  catchUpAgeMs?: number;
}

const silent: LogLike = { debug() {}, info() {}, warn() {}, error() {} };

// Shared by the scripts below. KEYS[1..5] are always log, bytes, trimmed, total,
// expire-at; ARGV[1] is the prefix of per-topic index keys.
const LUA_COMMON = `
local LOG, BYTES, TRIMMED, TOTAL, EXPAT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local TPREFIX = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- Removes one retained message from the log and its topic index, and
-- remembers it as trimmed so a resume from before it learns about the gap.
local function drop(topic, id, len)
  redis.call('XDEL', LOG, id)
  local tkey = TPREFIX .. topic
  redis.call('XDEL', tkey, id)
  redis.call('HSET', TRIMMED, topic, id)
  redis.call('DECRBY', TOTAL, len)
  if redis.call('XLEN', tkey) == 0 then
    redis.call('DEL', tkey)
    redis.call('HDEL', BYTES, topic)
  else
    redis.call('HINCRBY', BYTES, topic, -len)
  end
end

-- The log's head is always the oldest retained message anywhere (per-topic
-- trimming deletes from the log too), so age and total-size eviction only
-- ever look at the head. It remembers when the head it kept will be due
-- (EXPAT), so a publish need not read the head (and its body) every time.
local function expire(now, age_ms, total_bytes)
  local cutoff = now - age_ms
  local total = tonumber(redis.call('GET', TOTAL) or '0')
  while true do
    local head = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
    if not head then
      redis.call('DEL', EXPAT)
      break
    end
    local fields = head[2]
    local time = tonumber(field(fields, 'm'))
    if time > cutoff and total <= total_bytes then
      redis.call('SET', EXPAT, string.format('%.0f', time + age_ms))
      break
    end
    local len = string.len(field(fields, 'b'))
    drop(field(fields, 't'), head[1], len)
    total = total - len
  end
end

-- Per-topic trimming only removes entries newer than the head it looked at, so
-- EXPAT can only be early, never late; being early just costs one look.
local function maybe_expire(now, age_ms, total_bytes)
  local due = tonumber(redis.call('GET', EXPAT) or '0')
  if now >= due or tonumber(redis.call('GET', TOTAL) or '0') > total_bytes then
    expire(now, age_ms, total_bytes)
  end
end
`;

// KEYS: log, bytes, trimmed, total, expire-at, lastid, topic index
// ARGV: tprefix, topic, headers JSON, body, channel, enabled, count, bytes, ageMs, totalBytes, catchUpCount, catchUpAgeMs
const LUA_PUBLISH = `${LUA_COMMON}
local LASTID, TKEY = KEYS[6], KEYS[7]
local topic, headers, body, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local ms, seq = now, 0
local last = redis.call('GET', LASTID)
if last then
  local dash = string.find(last, '-', 1, true)
  local last_ms = tonumber(string.sub(last, 1, dash - 1))
  -- Never go backwards, even if the Redis clock does.
  if last_ms >= now then
    ms = last_ms
    seq = tonumber(string.sub(last, dash + 1)) + 1
  end
end
local id = string.format('%.0f-%.0f', ms, seq)
local time = string.format('%.0f', now)
redis.call('SET', LASTID, id)
local len = string.len(body)
if ARGV[6] == '1' then
  redis.call('XADD', LOG, id, 't', topic, 'h', headers, 'b', body, 'm', time)
  redis.call('XADD', TKEY, id, 'n', len)
  local tbytes = redis.call('HINCRBY', BYTES, topic, len)
  redis.call('INCRBY', TOTAL, len)
  local count, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
  local n = redis.call('XLEN', TKEY)
  while n > count or (tbytes > max_bytes and n > 0) do
    local head = redis.call('XRANGE', TKEY, '-', '+', 'COUNT', 1)[1]
    local hlen = tonumber(head[2][2])
    drop(topic, head[1], hlen)
    n = n - 1
    tbytes = tbytes - hlen
  end
  maybe_expire(now, tonumber(ARGV[9]), tonumber(ARGV[10]))
else
  redis.call('XADD', LOG, 'MAXLEN', '~', ARGV[11], id, 't', topic, 'h', headers, 'b', body, 'm', time)
  redis.call('XTRIM', LOG, 'MINID', '~', string.format('%.0f', now - tonumber(ARGV[12])))
end
redis.call('PUBLISH', channel,
  string.format('%s\\n%s\\n%d\\n%d\\n', id, time, string.len(topic), string.len(headers)) .. topic .. headers .. body)
return {id, time}
`;

// KEYS: log, bytes, trimmed, total, expire-at   ARGV: tprefix, ageMs, totalBytes
const LUA_EXPIRE = `${LUA_COMMON}
maybe_expire(now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
`;

// KEYS: log, bytes, trimmed, total, expire-at, topic index
// ARGV: tprefix, ageMs, totalBytes, topic, start ('-' or '(<id>'), limit (0 = all)
// Returns {trimmed-up-to or '', 1 if limit cut some, {log entries}}.
const LUA_HISTORY = `${LUA_COMMON}
maybe_expire(now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3]))
local TKEY, topic, start, limit = KEYS[6], ARGV[4], ARGV[5], tonumber(ARGV[6])
local ids
local cut = 0
if limit > 0 then
  local rev = redis.call('XREVRANGE', TKEY, '+', start, 'COUNT', limit + 1)
  if #rev > limit then
    cut = 1
    rev[#rev] = nil
  end
  ids = {}
  for i = #rev, 1, -1 do ids[#ids + 1] = rev[i] end
else
  ids = redis.call('XRANGE', TKEY, start, '+')
end
local out = {}
for _, e in ipairs(ids) do
  local m = redis.call('XRANGE', LOG, e[1], e[1])[1]
  if m then out[#out + 1] = m end
end
return {redis.call('HGET', TRIMMED, topic) or '', cut, out}
`;

type Arg = string | Buffer | number;
type ScriptedRedis = RedisConnection & {
  hookbotPublish(...args: Arg[]): Promise<[string, string]>;
  hookbotExpire(...args: Arg[]): Promise<number>;
  hookbotHistoryBuffer(...args: Arg[]): Promise<[Buffer, number, LogEntry[]]>;
};
type LogEntry = [Buffer, Buffer[]];

const PAGE = 500;

export class RedisBackend implements Backend {
  readonly name = 'redis';
  #retention: Retention;
  #enabled: boolean;
  #log: LogLike;
  #catchUpCount: number;
  #catchUpAgeMs: number;
  #cmd: ScriptedRedis;
  #sub: Redis;
  #keys: { log: string; bytes: string; trimmed: string; total: string; expat: string; lastid: string; topicPrefix: string; channel: string };
  #listener: (m: Message) => void = () => {};
  #readyListeners: Array<(ready: boolean) => void> = [];
  #lastReady = false;
  /** Id of the last message handed to the listener: the catch-up point after a lost link. */
  #lastDelivered: string | undefined;
  /** True while pub/sub messages go straight to the listener; false while (re)subscribing and catching up. */
  #live = false;
  #pending: Message[] = [];
  /** Bumped on every (re)subscribe so a stale catch-up stops. */
  #generation = 0;
  #expireTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #stats = { caughtUp: 0, resubscribes: 0, duplicatesDropped: 0 };

  constructor(url: string, retention: Retention, log: LogLike = silent, options: RedisBackendOptions = {}) {
    checkRedisUrl(url);
    this.#retention = retention;
    this.#enabled = historyEnabled(retention);
    this.#log = log;
    this.#catchUpCount = options.catchUpCount ?? 1000;
    this.#catchUpAgeMs = options.catchUpAgeMs ?? 60_000;
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
      lastid: `${tag}:lastid`,
      topicPrefix: `${tag}:t:`,
      channel: `${ns}:fanout`,
    };
    const minDelay = options.minReconnectDelayMs ?? 50;
    const maxDelay = Math.max(options.maxReconnectDelayMs ?? 2000, minDelay);
    const common: RedisOptions = {
      // Fail fast while Redis is away: a publisher must get a 503 now, not a
      // 200 minutes later (or never), so nothing is queued offline and a
      // command in flight when the link drops is rejected, not resent.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout: 5000,
      retryStrategy: (times) => backoffDelay(times - 1, { minMs: minDelay, maxMs: maxDelay, jitter: 0.5 }),
      lazyConnect: false,
    };
    this.#cmd = connectRedis(url, { ...common, commandTimeout: options.commandTimeoutMs ?? 3000, connectionName: `${ns}-cmd` }) as ScriptedRedis;
    this.#sub = connectRedis(url, { ...common, autoResubscribe: false, connectionName: `${ns}-sub` }, 'subscriber', this.#cmd);
    this.#cmd.defineCommand('hookbotPublish', { numberOfKeys: 7, lua: LUA_PUBLISH });
    this.#cmd.defineCommand('hookbotExpire', { numberOfKeys: 5, lua: LUA_EXPIRE });
    this.#cmd.defineCommand('hookbotHistory', { numberOfKeys: 6, lua: LUA_HISTORY });

    this.#sub.on('close', () => {
      this.#live = false;
      this.#generation++;
    });
    // Both are EventEmitters; TypeScript cannot call `on` on the Redis | Cluster union directly.
    for (const [role, conn] of [['command', this.#cmd], ['subscriber', this.#sub]] as Array<[string, EventEmitter]>) {
      // ioredis emits 'error' on every failed reconnect; log it without the URL (it may hold a password).
      conn.on('error', (err: Error) => this.#log.debug({ role, err: err.message }, 'redis connection error'));
      conn.on('close', () => this.#updateReady());
      conn.on('end', () => this.#updateReady());
    }
    (this.#cmd as EventEmitter).on('ready', () => this.#updateReady());
    this.#sub.on('ready', () => void this.#resubscribe());
    this.#sub.on('messageBuffer', (channel: Buffer, payload: Buffer) => this.#onPubSub(channel, payload));

    if (this.#enabled) {
      const every = Math.min(Math.max(Math.floor(retention.ageMs / 10), 1000), 60_000);
      this.#expireTimer = setInterval(() => void this.#expire().catch(() => {}), every);
      this.#expireTimer.unref();
    }
  }

  /** Counters for metrics and tests. */
  get stats(): Readonly<{ caughtUp: number; resubscribes: number; duplicatesDropped: number }> {
    return { ...this.#stats };
  }

  setListener(listener: (m: Message) => void): void {
    this.#listener = listener;
  }

  /** True when this node can both accept publishes and receive the fan-out. */
  ready(): boolean {
    return !this.#closed && this.#cmd.status === 'ready' && this.#live;
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
    else if (!this.#closed) this.#log.warn({ ready: now, command: this.#cmd.status, subscriber: this.#sub.status }, 'redis backend not ready; publishes answer 503 until it is back');
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
  }

  async publish(topic: string, headers: Headers, body: Buffer): Promise<Message> {
    this.#checkUsable();
    const k = this.#keys;
    const r = this.#retention;
    let reply: [string, string];
    try {
      reply = await this.#cmd.hookbotPublish(
        k.log, k.bytes, k.trimmed, k.total, k.expat, k.lastid, k.topicPrefix + topic,
        k.topicPrefix, topic, JSON.stringify(headers), body, k.channel,
        this.#enabled ? '1' : '0', r.count, r.bytes, r.ageMs, r.totalBytes, this.#catchUpCount, this.#catchUpAgeMs,
      );
    } catch (err) {
      throw this.#unavailable(err);
    }
    // time is Redis's clock at acceptance, the same on every node.
    return new Message(reply[0], topic, headers, body, Number(reply[1]));
  }

  async #expire(): Promise<void> {
    if (!this.#enabled || this.#closed || this.#cmd.status !== 'ready') return;
    const k = this.#keys;
    await this.#cmd.hookbotExpire(k.log, k.bytes, k.trimmed, k.total, k.expat, k.topicPrefix, this.#retention.ageMs, this.#retention.totalBytes);
  }

  // ---- fan-out ----

  #onPubSub(channel: Buffer, payload: Buffer): void {
    if (channel.toString() !== this.#keys.channel) return;
    let message: Message;
    try {
      message = decodeFanout(payload);
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'undecodable fan-out message from redis');
      return;
    }
    if (this.#live) this.#deliver(message);
    else this.#pending.push(message);
  }

  #deliver(message: Message): void {
    if (this.#lastDelivered !== undefined && compareIds(message.id, this.#lastDelivered) <= 0) {
      this.#stats.duplicatesDropped++;
      return;
    }
    this.#lastDelivered = message.id;
    try {
      this.#listener(message);
    } catch (err) {
      this.#log.error({ err: (err as Error).message, id: message.id }, 'listener failed');
    }
  }

  /**
   * (Re)subscribes, then reads from the log everything published since the
   * last message this node delivered, then releases what pub/sub buffered
   * meanwhile; ids drop the overlap. Subscribing first means nothing falls
   * between the log read and live delivery.
   */
  async #resubscribe(): Promise<void> {
    const generation = ++this.#generation;
    this.#live = false;
    this.#pending = [];
    try {
      if (this.#lastDelivered === undefined) {
        // Before subscribing, so anything newer is in the log or in pub/sub.
        this.#lastDelivered = (await this.#cmd.get(this.#keys.lastid)) ?? '0-0';
      }
      await this.#sub.subscribe(this.#keys.channel);
      if (generation !== this.#generation) return;
      let after = this.#lastDelivered;
      for (;;) {
        const page = (await this.#cmd.xrangeBuffer(this.#keys.log, `(${after}`, '+', 'COUNT', PAGE)) as LogEntry[];
        if (generation !== this.#generation) return;
        for (const entry of page) {
          const m = decodeLogEntry(entry);
          after = m.id;
          if (this.#lastDelivered === undefined || compareIds(m.id, this.#lastDelivered) > 0) this.#stats.caughtUp++;
          this.#deliver(m);
        }
        if (page.length < PAGE) break;
      }
      const pending = this.#pending;
      this.#pending = [];
      for (const m of pending) this.#deliver(m);
      this.#live = true;
      this.#stats.resubscribes++;
      this.#updateReady();
    } catch (err) {
      if (this.#closed || generation !== this.#generation) return;
      // Subscribing again is harmless and the catch-up restarts from the last delivered id.
      const retry = () => {
        if (!this.#closed && generation === this.#generation && this.#sub.status === 'ready') void this.#resubscribe();
      };
      if (this.#cmd.status !== 'ready') {
        // The usual case: the command connection is still (re)connecting.
        this.#log.debug({ err: (err as Error).message }, 'redis resubscribe waits for the command connection');
        this.#cmd.once('ready', retry);
      } else {
        this.#log.warn({ err: (err as Error).message }, 'redis resubscribe failed; retrying');
        setTimeout(retry, 200).unref();
      }
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
      k.log, k.bytes, k.trimmed, k.total, k.expat, k.topicPrefix + topic,
      k.topicPrefix, this.#retention.ageMs, this.#retention.totalBytes, topic,
      since === undefined ? '-' : `(${since}`, limit ?? 0,
    );
    const upTo = trimmed.length > 0 ? trimmed.toString() : undefined;
    const gap = cut === 1 || (upTo !== undefined && since !== undefined && compareIds(upTo, since) > 0);
    return { gap, messages: entries.map(decodeLogEntry) };
  }

  async #recursiveHistory(prefix: string, since: string | undefined, limit: number | undefined): Promise<HistoryResult> {
    await this.#expire();
    const k = this.#keys;
    let messages: Message[] = [];
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
    this.#generation++;
    if (this.#expireTimer) clearInterval(this.#expireTimer);
    await Promise.all([quit(this.#cmd), quit(this.#sub)]);
    this.#live = false;
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

/** `id \n time \n topicLength \n headersLength \n topic headers body`, as the publish script writes it. */
function decodeFanout(payload: Buffer): Message {
  let pos = 0;
  const line = (): string => {
    const nl = payload.indexOf(10, pos);
    if (nl < 0) throw new Error('truncated header');
    const s = payload.toString('latin1', pos, nl);
    pos = nl + 1;
    return s;
  };
  const id = line();
  const time = Number(line());
  const topicLength = Number(line());
  const headersLength = Number(line());
  const topic = payload.toString('utf8', pos, pos + topicLength);
  pos += topicLength;
  const headers = JSON.parse(payload.toString('utf8', pos, pos + headersLength)) as Headers;
  pos += headersLength;
  // A copy, so the message does not pin the socket's read buffer.
  const body = Buffer.from(payload.subarray(pos));
  return new Message(id, topic, headers, body, time);
}
