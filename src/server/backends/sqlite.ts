/**
 * The durable default: ids, history, idempotency keys and the routers'
 * delivery claims in one SQLite file (WAL mode) in the data directory, so a
 * publish answered 200 survives the process being killed at any instant.
 *
 * Group commit: publishes arriving in one event-loop turn are written in one
 * transaction at the end of the turn (setImmediate). Each message is handed
 * to the listener (and so to subscribers) and its publish resolved only after
 * that commit, so nothing a subscriber saw can vanish in a crash, and ids are
 * never reused. With fsync 'always' they also wait for an fsync of the log,
 * done in libuv's thread pool; commits made while one runs share the next.
 * The event loop never waits on an fsync: the main connection writes with
 * synchronous=OFF (its commits are write()s to the OS), and checkpoints run in
 * a worker thread (sqlite-checkpointer.ts). Once the log outgrows its bound,
 * commits are held back (queued, never blocking the loop) while the worker
 * empties it, so the directory stays bounded under sustained publishing.
 *
 * An id `<ms>-<seq>` is stored as the integer k = (ms - EPOCH) * 4096 + seq,
 * the messages' rowid, so id order is key order and every range query is an
 * index seek. At most 4096 ids fit in one millisecond; the next ones take the
 * following millisecond (k = max(clock key, last k + 1)), so ids stay strictly
 * increasing, across restarts too (the last k is kept in meta).
 *
 * Retention (count, bytes, age, total) is enforced inside the same
 * transaction, counting storedSize() of each message, and follows memory.ts:
 * per-topic trimming leaves a "trimmed up to" mark, emptied topics leave a
 * bounded tombstone, and a resume from before a mark is told about the gap.
 * A failed commit (disk full, I/O error) rejects the whole batch with
 * BackendUnavailableError (HTTP 503) and rolls back; the next batch tries
 * again, so publishing recovers by itself when space returns.
 */
import { closeSync, fsync, fsyncSync, openSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import {
  BackendUnavailableError,
  DEFAULT_RETENTION,
  historyEnabled,
  storedSize,
  type Backend,
  type ClaimStore,
  type HistoryResult,
  type PublishOptions,
  type Retention,
} from './backend.js';
import { DEFAULT_IDEMPOTENCY_MAX_KEYS, DEFAULT_IDEMPOTENCY_WINDOW_MS, idempotencyScope } from './idempotency.js';
import { Checkpointer, type CheckpointResult } from './sqlite-checkpointer.js';
import { describe, ensureDataDir, lockDataDir, openStoreFile, type Db } from './sqlite-file.js';
import { idTime, Message, type Headers } from '../../protocol/message.js';

export type FsyncMode = 'normal' | 'always';
export const FSYNC_MODES: readonly FsyncMode[] = ['normal', 'always'];

/** Where `hookbot serve` keeps its store unless told otherwise (relative to the working directory). */
export const DEFAULT_DATA_DIR = './hookbot-data';

/** The parts of a pino logger this file uses. */
export interface StoreLog {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface SqliteBackendOptions {
  /** 'normal' (default): a commit survives the process dying; 'always': also power loss. */
  fsync?: FsyncMode;
  log?: StoreLog;
  /** How long idempotency keys and router delivery claims are remembered. */
  dedupeWindowMs?: number;
  /** At most this many of each are kept (the oldest go first). */
  maxKeys?: number;
  now?: () => number;
  /** SQLite's max_page_count for the store: a stand-in for a full disk in tests. */
  maxPageCount?: number;
}

const EPOCH_MS = 1_700_000_000_000;
/** The body stored for a message that is trimmed in the transaction that adds it. */
const NOT_KEPT = Buffer.alloc(0);
const SEQ_PER_MS = 4096;
const MAX_KEY = Number.MAX_SAFE_INTEGER;

/** The key of the newest id in millisecond `ms` (and, for ids from elsewhere, of `seq` clamped to it). */
function keyOf(ms: number, seq: number): number {
  if (ms < EPOCH_MS) return -1;
  const k = (ms - EPOCH_MS) * SEQ_PER_MS + Math.min(seq, SEQ_PER_MS - 1);
  return k > MAX_KEY ? MAX_KEY : k;
}

/** A lock held by another connection (the checkpointer's); the store never waits on one. */
function isBusy(err: unknown): boolean {
  return (err as { code?: string }).code === 'SQLITE_BUSY';
}

function idOf(k: number): string {
  const ms = Math.floor(k / SEQ_PER_MS);
  return `${EPOCH_MS + ms}-${k - ms * SEQ_PER_MS}`;
}

/** The key below which every message precedes `since`: messages with k > it come after it. */
function sinceKey(since: string): number {
  const dash = since.indexOf('-');
  const ms = Number(since.slice(0, dash));
  const seq = Number(since.slice(dash + 1));
  return Number.isFinite(ms) && Number.isFinite(seq) ? keyOf(ms, seq) : -1;
}

/** [lo, hi): every topic starting with a `/`-ending prefix, in SQLite's byte order. */
function prefixRange(prefix: string): [string, string] {
  return [prefix, prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)];
}

/** How often expired idempotency keys and claims are deleted. */
const HOUSEKEEPING_MS = 1000;
/**
 * A checkpoint follows this long after a commit, or sooner once half the log
 * bound is written. Rarer checkpoints copy less (a page rewritten by many
 * commits is copied once), and in the default fsync mode this is also about
 * how much a power loss can take: the checkpoint syncs the log first.
 */
const CHECKPOINT_DELAY_MS = 1000;
/**
 * The bound on the write-ahead log, between these, scaled to
 * --history-total-bytes: past it the log is emptied, so the directory stays
 * near the size of what is retained.
 */
const MIN_WAL_BYTES = 1024 * 1024;
const MAX_WAL_BYTES = 16 * 1024 * 1024;
/** One frame of the log: a page and its header. */
const FRAME_BYTES = 4096 + 24;
/** What a commit writes besides its messages: index, topic and meta pages. */
const COMMIT_PAGES_BYTES = 4 * 4096;
/** How long a batch may keep meeting a locked database (a checkpoint's lock) before it is refused. */
const BUSY_GIVE_UP_MS = 10_000;
const BUSY_RETRY_MS = 2;
/** Trim and expiry read this many rows at a time. */
const TRIM_CHUNK = 64;

interface Pending {
  message: Message;
  k: number;
  size: number;
  headers: string;
  /** Idempotency scope, and whether no row (even an expired one) holds it yet. */
  scope: string | undefined;
  resolve(m: Message): void;
  reject(err: Error): void;
  /** Publishes repeating this one's idempotency key before it was committed. */
  duplicates?: Array<{ message: Message; resolve(m: Message): void; reject(err: Error): void }>;
}

interface Batch {
  messages: Pending[];
  claims: string[];
  releases: string[];
}

type Row = { k: number; topic: string; time: number; headers: string; body: Buffer };

export class SqliteBackend implements Backend {
  readonly name = 'sqlite';
  readonly dataDir: string;
  readonly file: string;
  readonly #retention: Retention;
  readonly #enabled: boolean;
  /**
   * --history-topics, as memory.ts: topics with history at most (past it the
   * least recently published loses its history), and tombstones at most
   * (past it the oldest are forgotten into one watermark).
   */
  readonly #maxTopics: number;
  /** Every topic with a row, least recently published first (re-added on each publish). */
  #recent = new Set<string>();
  readonly #fsync: FsyncMode;
  readonly #log: StoreLog | undefined;
  readonly #now: () => number;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #lock: Db;
  readonly #db: Db;
  readonly #checkpointer: Checkpointer;
  readonly #s: ReturnType<typeof prepare>;
  /** The batch's transaction (BEGIN IMMEDIATE … COMMIT), made once. */
  readonly #commit: (batch: Batch, now: number) => void;
  readonly #expireNow: (now: number) => void;

  #listener: (m: Message) => void = () => {};
  #readyListeners: Array<(ready: boolean) => void> = [];
  #closed = false;
  #closing: Promise<void> | undefined;
  /** The file is closed: nothing may touch it any more. */
  #shut = false;
  /** Why the last commit failed, while it keeps failing. */
  #failing: string | undefined;

  /** Ids at or before this millisecond were given out before this store existed. */
  readonly #createdMs: number;
  #lastKey: number;
  /** The newest key handed to the listener: history shows nothing newer, so nothing is seen before it is acknowledged. */
  #visibleKey: number;
  /** Newest key trimmed from a topic whose tombstone was itself forgotten. */
  #forgottenKey: number;
  #totalBytes = 0;
  #tombstones = 0;
  #idempotencyKeys = 0;
  #claimKeys = 0;
  /** When the oldest retained message is due for age expiry (0: look at the next chance). */
  #expireDue = 0;
  #housekeptAt = 0;

  #batch: Batch = { messages: [], claims: [], releases: [] };
  #flushScheduled = false;
  /** Messages in the last batch committed: more than one means publishes are arriving together. */
  #lastBatch = 0;
  /** A publish was committed on its own in this event-loop turn. */
  #committedThisTurn = false;
  readonly #newTurn = (): void => {
    this.#committedThisTurn = false;
  };
  #busySince = 0;
  /** Idempotency scopes and claims not yet acknowledged, so repeats within a batch are caught too. */
  readonly #pendingScopes = new Map<string, Pending>();
  readonly #pendingClaims = new Set<string>();

  // fsync 'always': batches committed and waiting for the log's fsync.
  #walFd: number | undefined;
  #unsynced: Batch[] = [];
  #syncing = false;
  #syncIdle: Array<() => void> = [];

  #checkpointTimer: NodeJS.Timeout | undefined;
  /** Roughly what was written to the log since the last checkpoint began. */
  #walBytes = 0;
  readonly #walLimit: number;
  /** The worker is emptying the log: commits wait (queued) until it is done. */
  #paused = false;
  #resumeWaiters: Array<() => void> = [];
  readonly #expiryTimer: NodeJS.Timeout | undefined;

  constructor(dataDir: string, retention: Retention, options: SqliteBackendOptions = {}) {
    this.dataDir = resolvePath(dataDir);
    this.#retention = retention;
    this.#enabled = historyEnabled(retention);
    this.#maxTopics = retention.topics ?? DEFAULT_RETENTION.topics!;
    this.#fsync = options.fsync ?? 'normal';
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#windowMs = options.dedupeWindowMs ?? DEFAULT_IDEMPOTENCY_WINDOW_MS;
    this.#maxKeys = options.maxKeys ?? DEFAULT_IDEMPOTENCY_MAX_KEYS;
    this.#walLimit = Math.min(MAX_WAL_BYTES, Math.max(MIN_WAL_BYTES, Math.floor(retention.totalBytes / 16)));

    ensureDataDir(this.dataDir);
    this.#lock = lockDataDir(this.dataDir);
    let opened: ReturnType<typeof openStoreFile>;
    try {
      opened = openStoreFile(this.dataDir);
    } catch (err) {
      this.#lock.close();
      throw err;
    }
    const db = (this.#db = opened.db);
    this.file = opened.file;
    try {
      // Commits are write()s only; durability against power loss comes from the
      // checkpointer's syncs and, with fsync 'always', our own fsync of the log.
      db.pragma('synchronous = OFF');
      db.pragma('wal_autocheckpoint = 0');
      db.pragma(`journal_size_limit = ${this.#walLimit}`);
      db.pragma('temp_store = MEMORY');
      if (options.maxPageCount !== undefined) this.setMaxPageCount(options.maxPageCount);
      this.#s = prepare(db);
      // BEGIN IMMEDIATE: take the write lock at the start, never halfway through.
      const commit = db.transaction((batch: Batch, now: number) => this.#write(batch, now));
      const expire = db.transaction((now: number) => this.#expire(now));
      this.#commit = (batch, now) => commit.immediate(batch, now);
      this.#expireNow = (now) => expire.immediate(now);
      const now = this.#now();
      if (opened.created) this.#s.setMeta.run('created', now);
      this.#createdMs = this.#meta('created') ?? now;
      // Every id handed out is a retained message, a trim mark, or (history off) meta's last_key.
      const maxK = (this.#s.maxKey.get() as { k: number | null }).k ?? -1;
      this.#forgottenKey = this.#meta('forgotten') ?? -1;
      this.#lastKey = Math.max(this.#meta('last_key') ?? -1, maxK, this.#forgottenKey, keyOf(this.#createdMs, SEQ_PER_MS));
      this.#visibleKey = this.#lastKey;
      this.#recount();
      // Retention flags may have changed since the last run.
      db.transaction(() => this.#enforceAll(now)).immediate();
      if (this.#fsync === 'always') syncDirectory(this.dataDir);
    } catch (err) {
      db.close();
      this.#lock.close();
      throw err;
    }
    this.#checkpointer = new Checkpointer(
      this.file,
      (r) => this.#checkpointed(r),
      (err) => {
        this.#log?.error({ err: err.message }, 'store checkpointer failed; the log file grows until restart');
        this.#resume();
      },
    );
    // Age expiry also happens when nobody publishes.
    if (this.#enabled) {
      this.#expiryTimer = setInterval(() => {
        if (this.#now() >= this.#expireDue) this.#scheduleFlush();
      }, Math.max(50, Math.min(HOUSEKEEPING_MS, this.#retention.ageMs))).unref();
    }
    const stats = this.#s.stats.get() as { topics: number; messages: number | null };
    this.#log?.info(
      { dataDir: this.dataDir, fsync: this.#fsync, created: opened.created, topics: stats.topics, messages: stats.messages ?? 0, lastId: idOf(this.#lastKey) },
      `store ${opened.created ? 'created' : 'opened'}: ${this.file}`,
    );
  }

  setListener(listener: (m: Message) => void): void {
    this.#listener = listener;
  }

  onReadyChange(listener: (ready: boolean) => void): void {
    this.#readyListeners.push(listener);
  }

  ready(): boolean {
    return !this.#closed && this.#failing === undefined;
  }

  /** For tests: SQLite's page limit for the store file, to simulate a full disk and its recovery. */
  setMaxPageCount(pages: number): void {
    this.#db.pragma(`max_page_count = ${Math.floor(pages)}`);
  }

  /** Pages the store file holds now (for tests sizing setMaxPageCount). */
  pageCount(): number {
    return this.#db.pragma('page_count', { simple: true }) as number;
  }

  publish(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Promise<Message> {
    if (this.#closed) return Promise.reject(new BackendUnavailableError('server is shutting down'));
    const now = this.#now();
    const key = options?.idempotencyKey;
    let scope: string | undefined;
    let scopeIsNew = false;
    if (key !== undefined && this.#windowMs > 0 && this.#maxKeys > 0) {
      scope = idempotencyScope(topic, key);
      const pending = this.#pendingScopes.get(scope);
      if (pending) {
        // Answered with the original once (and if) the original is.
        return new Promise((resolve, reject) => {
          (pending.duplicates ??= []).push({ message: new Message(pending.message.id, topic, headers, body), resolve, reject });
        });
      }
      const row = this.#s.getIdempotency.get(scope) as { k: number; at: number } | undefined;
      if (row && now - row.at < this.#windowMs) return Promise.resolve(new Message(idOf(row.k), topic, headers, body));
      scopeIsNew = row === undefined;
    }
    const ms = Math.max(now, EPOCH_MS);
    const k = Math.max(keyOf(ms, 0), this.#lastKey + 1);
    this.#lastKey = k;
    const message = new Message(idOf(k), topic, headers, body, now);
    return new Promise((resolve, reject) => {
      const p: Pending = { message, k, size: storedSize(topic, headers, body), headers: JSON.stringify(headers), scope, resolve, reject };
      if (scope !== undefined) {
        this.#pendingScopes.set(scope, p);
        if (scopeIsNew) this.#idempotencyKeys++;
      }
      this.#batch.messages.push(p);
      // While publishes come one at a time, the first of a turn is committed (and answered)
      // at once: waiting for the end of the turn would only add latency. Any other publish
      // in that turn goes into the turn's batch, and once batches hold several, all wait.
      if (this.#fsync === 'normal' && this.#lastBatch <= 1 && !this.#committedThisTurn && !this.#flushScheduled && !this.#paused && this.#batch.messages.length === 1) {
        this.#committedThisTurn = true;
        setImmediate(this.#newTurn);
        this.#flush();
      } else {
        this.#scheduleFlush();
      }
    });
  }

  /** The routers' delivery-id store, in the same file: claims commit with the turn's publishes, so they survive restarts too. */
  seenStore(windowMs: number): ClaimStore {
    return {
      claim: (key: string): boolean => {
        if (windowMs <= 0 || this.#maxKeys <= 0) return false;
        if (this.#closed) throw new BackendUnavailableError('server is shutting down');
        if (this.#pendingClaims.has(key)) return true;
        const released = this.#batch.releases.indexOf(key);
        if (released !== -1) {
          // Released but not yet written: its row is as good as gone, and the new claim replaces it.
          this.#batch.releases.splice(released, 1);
        } else {
          const row = this.#s.getClaim.get(key) as { at: number } | undefined;
          if (row && this.#now() - row.at < windowMs) return true;
        }
        this.#pendingClaims.add(key);
        this.#batch.claims.push(key);
        this.#scheduleFlush();
        return false;
      },
      release: (key: string): void => {
        this.#pendingClaims.delete(key);
        const i = this.#batch.claims.indexOf(key);
        if (i !== -1) this.#batch.claims.splice(i, 1);
        else if (!this.#closed) {
          this.#batch.releases.push(key);
          this.#scheduleFlush();
        }
      },
    };
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(this.#flush);
  }

  readonly #flush = (): void => {
    // Held back while the log is emptied; #resume flushes (flushScheduled stays set).
    if (this.#paused) return;
    this.#flushScheduled = false;
    if (this.#shut) return;
    const batch = this.#batch;
    this.#batch = { messages: [], claims: [], releases: [] };
    this.#lastBatch = batch.messages.length;
    const now = this.#now();
    try {
      this.#commit(batch, now);
    } catch (err) {
      if (isBusy(err) && !this.#closed) {
        // A lock held by a checkpoint: try again shortly rather than wait (the event loop must not) or refuse.
        // It is met at BEGIN IMMEDIATE, before #write ran, so no tally needs putting back.
        this.#busySince ||= now;
        if (now - this.#busySince < BUSY_GIVE_UP_MS) {
          this.#batch = mergeBatches(batch, this.#batch);
          this.#flushScheduled = true;
          setTimeout(this.#flush, BUSY_RETRY_MS);
          return;
        }
      }
      this.#busySince = 0;
      return this.#failed(batch, err);
    }
    this.#busySince = 0;
    for (const key of batch.claims) this.#pendingClaims.delete(key);
    if (this.#failing !== undefined) {
      this.#log?.info({ dataDir: this.dataDir }, 'store writable again; publishes are accepted');
      this.#failing = undefined;
      for (const l of this.#readyListeners) l(true);
    }
    this.#wrote(batch);
    if (batch.messages.length === 0) return;
    if (this.#fsync === 'always') {
      this.#unsynced.push(batch);
      this.#sync();
    } else {
      this.#acknowledge(batch, undefined);
    }
  };

  /**
   * One batch's writes, inside its transaction. Each topic's counters are
   * updated, and the topic trimmed, once per batch rather than per message:
   * under load a batch holds many messages to the same few topics.
   */
  #write(batch: Batch, now: number): void {
    const s = this.#s;
    const r = this.#retention;
    const touched = new Map<string, { messages: number; bytes: number }>();
    for (const p of batch.messages) {
      const m = p.message;
      if (this.#enabled) {
        // A message larger than a topic's (or the whole) history is trimmed below in this
        // same transaction, whatever else it holds: its row carries the size and leaves
        // the mark, but writing its body would only cost the event loop ~1-3 ms per MiB.
        const kept = p.size <= r.bytes && p.size <= r.totalBytes;
        s.insertMessage.run(p.k, m.topic, m.time, p.size, p.headers, kept ? m.body : NOT_KEPT);
        const t = touched.get(m.topic);
        if (t) {
          t.messages++;
          t.bytes += p.size;
        } else {
          touched.set(m.topic, { messages: 1, bytes: p.size });
        }
        this.#totalBytes += p.size;
        if (m.time + r.ageMs < this.#expireDue) this.#expireDue = m.time + r.ageMs;
      }
      if (p.scope !== undefined) s.putIdempotency.run(p.scope, p.k, now);
    }
    for (const [topic, added] of touched) {
      this.#recent.delete(topic);
      this.#recent.add(topic);
      const [messages, bytes] = s.addToTopic.get(topic, added.messages, added.bytes) as [number, number];
      if (messages === added.messages) {
        // A new row: a topic that emptied before keeps its mark, so resumes from before it still see the gap.
        const tomb = s.takeTombstone.get(topic) as [number] | undefined;
        if (tomb) {
          this.#tombstones--;
          s.setTopicTrimmed.run(tomb[0], topic);
        }
      }
      if (messages > r.count || bytes > r.bytes) this.#trimTopic(topic, messages, bytes, r.count, r.bytes);
    }
    if (this.#recent.size > this.#maxTopics) this.#evictTopics();
    // The count follows the rows, so housekeeping never evicts claims still in their window.
    for (const key of batch.releases) this.#claimKeys -= s.deleteClaim.run(key).changes;
    for (const key of batch.claims) {
      if (s.getClaim.get(key) === undefined) this.#claimKeys++;
      s.putClaim.run(key, now);
    }
    if (this.#enabled) this.#expire(now);
    if (now - this.#housekeptAt >= HOUSEKEEPING_MS) this.#housekeep(now);
    // With history on, the newest id is a retained message or a trim mark; only with it off must it be written down.
    if (!this.#enabled && batch.messages.length > 0) s.setMeta.run('last_key', batch.messages[batch.messages.length - 1].k);
  }

  /** Trims a topic's oldest messages until it is within `count` and `bytes`: one range delete. */
  #trimTopic(topic: string, messages: number, bytes: number, count: number, maxBytes: number): void {
    const s = this.#s;
    let n = messages;
    let b = bytes;
    let last = -1;
    scan: while (n > 0 && (n > count || b > maxBytes)) {
      const rows = s.topicOldest.all(topic, last, Math.min(TRIM_CHUNK, Math.max(1, n - count))) as Array<[number, number]>;
      if (rows.length === 0) break;
      for (const [k, size] of rows) {
        if (n <= count && b <= maxBytes) break scan;
        n--;
        b -= size;
        last = k;
      }
    }
    if (last === -1) return;
    s.deleteTopicUpTo.run(topic, last);
    this.#totalBytes -= bytes - b;
    if (n === 0) {
      this.#emptied(topic, last);
    } else {
      s.setTopic.run(n, b, last, topic);
    }
  }

  /**
   * Past --history-topics, the least recently published topics lose their
   * history: a range delete each, its bytes from the topic's row.
   */
  #evictTopics(): void {
    const s = this.#s;
    for (const topic of this.#recent) {
      if (this.#recent.size <= this.#maxTopics) break;
      const [bytes, newest] = (s.topicExtent.get(topic) as [number, number | null] | undefined) ?? [0, null];
      if (newest === null) {
        this.#recent.delete(topic);
        continue;
      }
      s.deleteTopicUpTo.run(topic, newest);
      this.#totalBytes -= bytes;
      this.#emptied(topic, newest);
    }
  }

  /** A topic with no message left: its row goes, and a tombstone keeps its trim mark. */
  #emptied(topic: string, trimmed: number): void {
    this.#s.deleteTopic.run(topic);
    this.#recent.delete(topic);
    this.#s.putTombstone.run(topic, trimmed);
    this.#tombstones++;
  }

  /**
   * Drops what is too old, and the oldest anywhere while over the total size:
   * always a prefix of the messages in id order, so one range delete, then
   * each affected topic's counters once.
   */
  #expire(now: number): void {
    const r = this.#retention;
    if (now < this.#expireDue && this.#totalBytes <= r.totalBytes) return;
    const s = this.#s;
    const cutoff = now - r.ageMs;
    const topics = new Map<string, { messages: number; bytes: number; last: number }>();
    let upTo = -1;
    scan: for (;;) {
      const rows = s.oldest.all(upTo, TRIM_CHUNK) as Array<[number, string, number, number]>;
      for (const [k, topic, time, size] of rows) {
        if (time > cutoff && this.#totalBytes <= r.totalBytes) {
          this.#expireDue = time + r.ageMs;
          break scan;
        }
        this.#totalBytes -= size;
        upTo = k;
        const t = topics.get(topic);
        if (t) {
          t.messages++;
          t.bytes += size;
          t.last = k;
        } else {
          topics.set(topic, { messages: 1, bytes: size, last: k });
        }
      }
      if (rows.length < TRIM_CHUNK) {
        this.#expireDue = Infinity;
        break;
      }
    }
    if (upTo === -1) return;
    s.deleteUpTo.run(upTo);
    for (const [topic, t] of topics) {
      const [left] = s.takeFromTopic.get(t.messages, t.bytes, t.last, topic) as [number];
      if (left <= 0) this.#emptied(topic, t.last);
    }
  }

  /** Expired keys out, and every bounded table back under its bound. */
  #housekeep(now: number): void {
    const s = this.#s;
    this.#housekeptAt = now;
    const cutoff = now - this.#windowMs;
    this.#idempotencyKeys -= s.expireIdempotency.run(cutoff).changes;
    this.#claimKeys -= s.expireClaims.run(cutoff).changes;
    if (this.#idempotencyKeys > this.#maxKeys) this.#idempotencyKeys -= s.evictIdempotency.run(this.#idempotencyKeys - this.#maxKeys).changes;
    if (this.#claimKeys > this.#maxKeys) this.#claimKeys -= s.evictClaims.run(this.#claimKeys - this.#maxKeys).changes;
    if (this.#tombstones > this.#maxTopics) {
      const forgotten = s.evictTombstones.all(this.#tombstones - this.#maxTopics) as Array<{ trimmed: number }>;
      this.#tombstones -= forgotten.length;
      for (const f of forgotten) if (f.trimmed > this.#forgottenKey) this.#forgottenKey = f.trimmed;
      s.setMeta.run('forgotten', this.#forgottenKey);
    }
  }

  /** Retention applied to everything stored (at open: the flags may be new). */
  #enforceAll(now: number): void {
    const r = this.#retention;
    const count = this.#enabled ? r.count : 0;
    const bytes = this.#enabled ? r.bytes : 0;
    for (const t of this.#s.topicsOver.all(count, bytes) as Array<{ topic: string; messages: number; bytes: number }>) {
      this.#trimTopic(t.topic, t.messages, t.bytes, count, bytes);
    }
    if (this.#recent.size > this.#maxTopics) this.#evictTopics();
    if (this.#enabled) this.#expire(now);
    this.#housekeep(now);
  }

  /** The in-memory tallies, read back from the file (at open, and after a rolled-back commit). */
  #recount(): void {
    const s = this.#s;
    this.#totalBytes = (s.totalBytes.get() as { n: number }).n;
    this.#tombstones = (s.countTombstones.get() as { n: number }).n;
    this.#idempotencyKeys = (s.countIdempotency.get() as { n: number }).n;
    this.#claimKeys = (s.countClaims.get() as { n: number }).n;
    this.#recent = new Set((s.topicsByRecency.all() as Array<[string]>).map(([topic]) => topic));
    this.#expireDue = 0;
  }

  #failed(batch: Batch, err: unknown): void {
    const reason = storageFailure(err);
    try {
      this.#recount();
    } catch {
      // Unreadable too: the next commit finds out again.
    }
    for (const key of batch.claims) this.#pendingClaims.delete(key);
    if (this.#failing === undefined) {
      this.#log?.error({ dataDir: this.dataDir, err: describe(err) }, `store write failed; publishes answer 503 until it succeeds again`);
      for (const l of this.#readyListeners) l(false);
    }
    this.#failing = reason;
    const error = new BackendUnavailableError(`${reason}; the message was not stored`);
    for (const p of batch.messages) {
      if (p.scope !== undefined) this.#pendingScopes.delete(p.scope);
      p.reject(error);
      for (const d of p.duplicates ?? []) d.reject(error);
    }
  }

  /** Committed (and synced, if asked): subscribers get the messages, publishers their answers, in id order. */
  #acknowledge(batch: Batch, syncError: Error | undefined): void {
    const error = syncError && new BackendUnavailableError(`stored, but the fsync failed (${syncError.message}); it may not survive a power loss`);
    for (const p of batch.messages) {
      this.#visibleKey = p.k;
      if (p.scope !== undefined) this.#pendingScopes.delete(p.scope);
      this.#listener(p.message);
      if (error) p.reject(error);
      else p.resolve(p.message);
      for (const d of p.duplicates ?? []) {
        if (error) d.reject(error);
        else d.resolve(d.message);
      }
    }
  }

  /** fsync 'always': one fsync of the log at a time, covering every batch committed before it began. */
  #sync(): void {
    if (this.#syncing) return;
    if (this.#unsynced.length === 0) {
      for (const w of this.#syncIdle.splice(0)) w();
      return;
    }
    const batches = this.#unsynced;
    this.#unsynced = [];
    this.#syncing = true;
    const done = (err: Error | null) => {
      this.#syncing = false;
      if (err) this.#log?.error({ dataDir: this.dataDir, err: err.message }, 'fsync of the store log failed');
      for (const b of batches) this.#acknowledge(b, err ?? undefined);
      this.#sync();
    };
    try {
      this.#walFd ??= openSync(`${this.file}-wal`, 'r');
    } catch (err) {
      return done(err as Error);
    }
    fsync(this.#walFd, done);
  }

  #wrote(batch: Batch): void {
    for (const p of batch.messages) this.#walBytes += p.size;
    this.#walBytes += COMMIT_PAGES_BYTES;
    if (this.#checkpointer.busy || this.#closed) return;
    if (this.#walBytes >= this.#walLimit / 2) this.#startCheckpoint();
    else this.#checkpointTimer ??= setTimeout(() => this.#startCheckpoint(), CHECKPOINT_DELAY_MS).unref();
  }

  #startCheckpoint(): void {
    clearTimeout(this.#checkpointTimer);
    this.#checkpointTimer = undefined;
    if (this.#checkpointer.checkpoint('passive')) this.#walBytes = 0;
  }

  #checkpointed(r: CheckpointResult): void {
    if (r.mode === 'truncate') this.#resume();
    if (r.error) this.#log?.warn({ mode: r.mode, err: r.error }, 'store checkpoint failed; retrying later');
    if (this.#closed) return;
    if (r.mode === 'passive' && r.error === undefined && (r.log ?? 0) * FRAME_BYTES > this.#walLimit) {
      // The log is past its bound: hold commits back while the worker empties it.
      if (this.#checkpointer.checkpoint('truncate')) this.#paused = true;
      return;
    }
    // Commits made while it ran need another.
    if (this.#walBytes > 0 || r.error !== undefined) this.#checkpointTimer ??= setTimeout(() => this.#startCheckpoint(), r.error ? 1000 : CHECKPOINT_DELAY_MS).unref();
  }

  /** The log is empty again (or emptying failed): held commits go ahead. */
  #resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (this.#flushScheduled) setImmediate(this.#flush);
    for (const w of this.#resumeWaiters.splice(0)) w();
  }

  /** Age expiry before a read, so a read never returns (or hides the gap of) what is already too old. */
  #expireForRead(): void {
    if (!this.#enabled || this.#closed || this.#now() < this.#expireDue) return;
    try {
      const now = this.#now();
      this.#expireNow(now);
    } catch (err) {
      // A full disk can refuse even deletes; the messages stay until the next commit expires them.
      // SQLITE_BUSY (a checkpoint's lock) comes from BEGIN, before anything was counted.
      if (!isBusy(err)) this.#recount();
    }
  }

  async history(topic: string, since?: string, limit?: number): Promise<HistoryResult> {
    if (this.#closed) throw new BackendUnavailableError('server is shutting down');
    this.#expireForRead();
    const s = this.#s;
    const after = since === undefined ? -1 : sinceKey(since);
    const upTo = this.#visibleKey;
    const recursive = topic.endsWith('/');
    const [lo, hi] = recursive ? prefixRange(topic) : [topic, topic];
    let rows: Row[];
    if (limit === undefined) {
      rows = (recursive ? s.prefixAfter.all(after, upTo, lo, hi) : s.topicAfter.all(topic, after, upTo)) as Row[];
    } else {
      rows = (recursive ? s.prefixNewest.all(after, upTo, lo, hi, limit + 1) : s.topicNewest.all(topic, after, upTo, limit + 1)) as Row[];
      rows.reverse();
    }
    let gap = false;
    if (since !== undefined) {
      if (recursive) gap = s.prefixTrimmedAfter.get(lo, hi, after) !== undefined || s.prefixTombstoneAfter.get(lo, hi, after) !== undefined;
      else {
        const t = (s.topicTrimmed.get(topic) ?? s.tombstone.get(topic)) as { trimmed: number } | undefined;
        gap = t !== undefined && t.trimmed > after;
      }
      if (this.#forgottenKey > after) gap = true;
      if (since !== '0-0') {
        // A resume from before this store existed, or while nothing is kept, may have missed messages.
        if (idTime(since) <= this.#createdMs) gap = true;
        else if (!this.#enabled && upTo > after) gap = true;
      }
    }
    if (limit !== undefined && rows.length > limit) {
      rows = rows.slice(rows.length - limit);
      gap = true;
    }
    return { gap, messages: rows.map((r) => new Message(idOf(r.k), r.topic, JSON.parse(r.headers) as Headers, r.body, r.time)) };
  }

  async historyTopics(): Promise<Array<{ topic: string; messages: number; bytes: number }>> {
    if (this.#closed) throw new BackendUnavailableError('server is shutting down');
    this.#expireForRead();
    return this.#s.allTopics.all() as Array<{ topic: string; messages: number; bytes: number }>;
  }

  /** Commits what was accepted, waits for its fsync, checkpoints and closes the file and the lock. */
  close(): Promise<void> {
    return (this.#closing ??= this.#close());
  }

  async #close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#expiryTimer);
    clearTimeout(this.#checkpointTimer);
    if (this.#paused) await new Promise<void>((resolve) => this.#resumeWaiters.push(resolve));
    // Publishes already accepted are committed and answered, not dropped.
    if (this.#flushScheduled || this.#batch.messages.length > 0) this.#flush();
    if (this.#syncing || this.#unsynced.length > 0) await new Promise<void>((resolve) => this.#syncIdle.push(resolve));
    for (const l of this.#readyListeners) l(false);
    await this.#checkpointer.close();
    if (this.#walFd !== undefined) closeSync(this.#walFd);
    // Whoever closes last checkpoints what is left: synced, so a power loss right after shutdown cannot tear it.
    try {
      this.#db.pragma('synchronous = FULL');
    } finally {
      this.#shut = true;
      this.#db.close();
      this.#lock.close();
    }
  }

  #meta(name: string): number | undefined {
    return (this.#s.getMeta.get(name) as { value: number } | undefined)?.value;
  }
}

function prepare(db: Db) {
  const p = (sql: string) => db.prepare(sql);
  const cols = 'k, topic, time, headers, body';
  return {
    getMeta: p('SELECT value FROM meta WHERE name = ?'),
    setMeta: p('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value'),
    // (The many-argument max() is NULL if any argument is.)
    maxKey: p(
      'SELECT max(coalesce((SELECT max(k) FROM messages), -1), coalesce((SELECT max(trimmed) FROM topics), -1), coalesce((SELECT max(trimmed) FROM tombstones), -1)) AS k',
    ),
    stats: p('SELECT count(*) AS topics, sum(messages) AS messages FROM topics'),
    totalBytes: p('SELECT total(bytes) AS n FROM topics'),
    countTombstones: p('SELECT count(*) AS n FROM tombstones'),
    countIdempotency: p('SELECT count(*) AS n FROM idempotency'),
    countClaims: p('SELECT count(*) AS n FROM claims'),

    insertMessage: p('INSERT INTO messages (k, topic, time, size, headers, body) VALUES (?, ?, ?, ?, ?, ?)'),
    addToTopic: p(
      'INSERT INTO topics (topic, messages, bytes, trimmed) VALUES (?, ?, ?, -1) ON CONFLICT (topic) DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes RETURNING messages, bytes',
    ).raw(),
    setTopic: p('UPDATE topics SET messages = ?, bytes = ?, trimmed = max(trimmed, ?) WHERE topic = ?'),
    setTopicTrimmed: p('UPDATE topics SET trimmed = ? WHERE topic = ?'),
    takeFromTopic: p('UPDATE topics SET messages = messages - ?, bytes = bytes - ?, trimmed = max(trimmed, ?) WHERE topic = ? RETURNING messages').raw(),
    deleteTopic: p('DELETE FROM topics WHERE topic = ?'),
    topicExtent: p('SELECT t.bytes, (SELECT max(k) FROM messages m WHERE m.topic = t.topic) FROM topics t WHERE t.topic = ?').raw(),
    topicsByRecency: p('SELECT t.topic FROM topics t ORDER BY (SELECT max(k) FROM messages m WHERE m.topic = t.topic)').raw(),
    topicOldest: p('SELECT k, size FROM messages WHERE topic = ? AND k > ? ORDER BY k LIMIT ?').raw(),
    deleteTopicUpTo: p('DELETE FROM messages WHERE topic = ? AND k <= ?'),
    oldest: p('SELECT k, topic, time, size FROM messages WHERE k > ? ORDER BY k LIMIT ?').raw(),
    deleteUpTo: p('DELETE FROM messages WHERE k <= ?'),
    topicsOver: p('SELECT topic, messages, bytes FROM topics WHERE messages > ? OR bytes > ?'),
    allTopics: p('SELECT topic, messages, bytes FROM topics'),

    putTombstone: p('INSERT OR REPLACE INTO tombstones (topic, trimmed) VALUES (?, ?)'),
    takeTombstone: p('DELETE FROM tombstones WHERE topic = ? RETURNING trimmed').raw(),
    tombstone: p('SELECT trimmed FROM tombstones WHERE topic = ?'),
    evictTombstones: p('DELETE FROM tombstones WHERE topic IN (SELECT topic FROM tombstones ORDER BY trimmed LIMIT ?) RETURNING trimmed'),

    getIdempotency: p('SELECT k, at FROM idempotency WHERE scope = ?'),
    putIdempotency: p('INSERT OR REPLACE INTO idempotency (scope, k, at) VALUES (?, ?, ?)'),
    expireIdempotency: p('DELETE FROM idempotency WHERE at <= ?'),
    evictIdempotency: p('DELETE FROM idempotency WHERE scope IN (SELECT scope FROM idempotency ORDER BY at LIMIT ?)'),
    getClaim: p('SELECT at FROM claims WHERE key = ?'),
    putClaim: p('INSERT OR REPLACE INTO claims (key, at) VALUES (?, ?)'),
    deleteClaim: p('DELETE FROM claims WHERE key = ?'),
    expireClaims: p('DELETE FROM claims WHERE at <= ?'),
    evictClaims: p('DELETE FROM claims WHERE key IN (SELECT key FROM claims ORDER BY at LIMIT ?)'),

    // History never shows a message newer than the last one acknowledged (the k <= ? bound).
    topicAfter: p(`SELECT ${cols} FROM messages WHERE topic = ? AND k > ? AND k <= ? ORDER BY k`),
    topicNewest: p(`SELECT ${cols} FROM messages WHERE topic = ? AND k > ? AND k <= ? ORDER BY k DESC LIMIT ?`),
    // One index seek per topic under the prefix (CROSS JOIN keeps topics as the outer loop), then a sort of the result.
    prefixAfter: p(
      `SELECT m.k, m.topic, m.time, m.headers, m.body FROM topics t CROSS JOIN messages m ON m.topic = t.topic AND m.k > ? AND m.k <= ? WHERE t.topic >= ? AND t.topic < ? ORDER BY m.k`,
    ),
    prefixNewest: p(
      `SELECT m.k, m.topic, m.time, m.headers, m.body FROM topics t CROSS JOIN messages m ON m.topic = t.topic AND m.k > ? AND m.k <= ? WHERE t.topic >= ? AND t.topic < ? ORDER BY m.k DESC LIMIT ?`,
    ),
    topicTrimmed: p('SELECT trimmed FROM topics WHERE topic = ?'),
    prefixTrimmedAfter: p('SELECT 1 FROM topics WHERE topic >= ? AND topic < ? AND trimmed > ? LIMIT 1'),
    prefixTombstoneAfter: p('SELECT 1 FROM tombstones WHERE topic >= ? AND topic < ? AND trimmed > ? LIMIT 1'),
  };
}

function mergeBatches(a: Batch, b: Batch): Batch {
  return { messages: a.messages.concat(b.messages), claims: a.claims.concat(b.claims), releases: a.releases.concat(b.releases) };
}

/** What a publisher is told when a commit fails. */
function storageFailure(err: unknown): string {
  const code = (err as { code?: string }).code ?? '';
  if (code === 'SQLITE_FULL') return 'storage full (the disk or the store file is full)';
  if (code === 'SQLITE_BUSY') return 'storage busy (the store file stayed locked)';
  if (code.startsWith('SQLITE_IOERR')) return `storage write failed (${code})`;
  if (code.startsWith('SQLITE_READONLY')) return `storage is read-only (${code})`;
  if (code.startsWith('SQLITE_CORRUPT')) return `storage is corrupt (${code})`;
  return `storage error (${code || (err as Error).message})`;
}

/** fsync of the directory, so files created in it survive a power loss too. */
function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
