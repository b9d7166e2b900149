/**
 * The embedded default: ids from this process, history in this process's memory.
 *
 * Every retained message sits in one global list in id order (ids only grow)
 * and in its topic's list. Age and total-size eviction pop the global head,
 * which is always the oldest message anywhere; per-topic count and size limits
 * pop the topic's head and leave a hole in the global list that is skipped
 * later. So every publish costs O(1) amortised, whatever the number of topics.
 *
 * Memory is bounded whatever the mix of topics, headers and bodies: every
 * message counts as its storedSize (topic, kept headers, body, overhead), the
 * number of topics with history is capped (the least recently published one
 * loses its history first), and so is the number of topics remembered as
 * trimmed (tombstones).
 */
import { BackendUnavailableError, DEFAULT_RETENTION, historyEnabled, storedSize, type Backend, type HistoryResult, type PublishOptions, type Retention } from './backend.js';
import { IdempotencyKeys, type IdempotencyOptions } from './idempotency.js';
import { compareIds, IdGenerator, idTime, Message, type Headers } from '../../protocol/message.js';

interface Entry {
  /** The message's id, kept after removal: the lists stay sorted by it for binary search. */
  readonly id: string;
  /** Dropped (undefined) once removed, so a removed entry waiting for compaction pins no body or headers. */
  message: Message | undefined;
  /** storedSize of the message: what it counts against the byte limits. */
  readonly size: number;
}

/** Lists are compacted once this many removed entries lead them (and they are at least half the list). */
const COMPACT_AFTER = 64;

interface TopicHistory {
  entries: Entry[];
  head: number;
  bytes: number;
  /** Id of the newest message trimmed from this topic, for gap detection. */
  trimmedUpTo: string | undefined;
}

export class MemoryBackend implements Backend {
  readonly name = 'memory';
  #ids: IdGenerator;
  #retention: Retention;
  #enabled: boolean;
  #listener: (m: Message) => void = () => {};
  #topics = new Map<string, TopicHistory>();
  #global: Entry[] = [];
  #globalHead = 0;
  #totalBytes = 0;
  #tombstones = new Map<string, string>();
  /** Newest id trimmed from a topic whose tombstone was itself forgotten. */
  #forgottenUpTo: string | undefined;
  #closed = false;
  #now: () => number;
  /** Ids at or before this millisecond were given out by an earlier process, whose history is gone. */
  readonly #startedAt: number;
  #lastId: string | undefined;
  readonly #idempotency: IdempotencyKeys;
  readonly #maxTopics: number;

  constructor(retention: Retention, now: () => number = Date.now, idempotency: IdempotencyOptions = {}) {
    this.#idempotency = new IdempotencyKeys(idempotency);
    this.#retention = retention;
    this.#maxTopics = retention.topics ?? DEFAULT_RETENTION.topics!;
    // With none, a publish would evict its own topic before trimming it (the CLI already refuses 0).
    if (!(this.#maxTopics >= 1)) throw new RangeError(`retention.topics (--history-topics) must be at least 1, got ${this.#maxTopics}`);
    this.#enabled = historyEnabled(retention);
    this.#now = now;
    this.#startedAt = now();
    this.#ids = new IdGenerator(this.#startedAt);
  }

  setListener(listener: (m: Message) => void): void {
    this.#listener = listener;
  }

  ready(): boolean {
    return !this.#closed;
  }

  async publish(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Promise<Message> {
    return this.publishSync(topic, headers, body, options);
  }

  /** publish() without the promise, for the hot path. */
  publishSync(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Message {
    if (this.#closed) throw new BackendUnavailableError('server is shutting down');
    const now = this.#now();
    const key = options?.idempotencyKey;
    if (key !== undefined) {
      const original = this.#idempotency.get(topic, key, now);
      // Already stored: the original id, and nothing stored or dispatched again.
      if (original !== undefined) return new Message(original, topic, headers, body);
    }
    const message = new Message(this.#ids.next(now), topic, headers, body, now);
    if (key !== undefined) this.#idempotency.set(topic, key, message.id, now);
    this.#lastId = message.id;
    if (this.#enabled) this.#retain(message, now);
    this.#listener(message);
    return message;
  }

  #retain(message: Message, now: number): void {
    const entry: Entry = { id: message.id, message, size: storedSize(message.topic, message.headers, message.body) };
    let t = this.#topics.get(message.topic);
    if (t) {
      // Re-inserted, so the map's first topic is always the least recently published.
      this.#topics.delete(message.topic);
    } else {
      t = { entries: [], head: 0, bytes: 0, trimmedUpTo: this.#tombstones.get(message.topic) };
      this.#tombstones.delete(message.topic);
    }
    this.#topics.set(message.topic, t);
    t.entries.push(entry);
    t.bytes += entry.size;
    this.#global.push(entry);
    this.#totalBytes += entry.size;
    if (this.#topics.size > this.#maxTopics) {
      const [oldest, history] = this.#topics.entries().next().value as [string, TopicHistory];
      this.#evict(oldest, history);
    }

    const r = this.#retention;
    while (t.entries.length - t.head > r.count || (t.bytes > r.bytes && t.entries.length - t.head > 0)) {
      this.#removeFromTopic(t, t.entries[t.head]);
    }
    this.#expire(now);
  }

  /** Drops a whole topic's history (past --history-topics); it is remembered as trimmed. */
  #evict(topic: string, t: TopicHistory): void {
    let last: string | undefined;
    for (let i = t.head; i < t.entries.length; i++) {
      const e = t.entries[i];
      e.message = undefined;
      this.#totalBytes -= e.size;
      last = e.id;
    }
    this.#topics.delete(topic);
    if (last !== undefined) this.#tombstone(topic, last);
  }

  #removeFromTopic(t: TopicHistory, entry: Entry): void {
    // Only ever called for the topic's head.
    const topic = entry.message!.topic;
    entry.message = undefined;
    t.head++;
    t.bytes -= entry.size;
    this.#totalBytes -= entry.size;
    t.trimmedUpTo = entry.id;
    if (t.head > COMPACT_AFTER && t.head * 2 > t.entries.length) {
      t.entries = t.entries.slice(t.head);
      t.head = 0;
    }
    if (t.entries.length === t.head) {
      this.#topics.delete(topic);
      this.#tombstone(topic, entry.id);
    }
  }

  #tombstone(topic: string, id: string): void {
    if (this.#tombstones.size >= this.#maxTopics) {
      const [oldTopic, oldId] = this.#tombstones.entries().next().value as [string, string];
      this.#tombstones.delete(oldTopic);
      if (!this.#forgottenUpTo || compareIds(oldId, this.#forgottenUpTo) > 0) this.#forgottenUpTo = oldId;
    }
    this.#tombstones.set(topic, id);
  }

  /** Drops what is too old, and the oldest anywhere while over the total size. */
  #expire(now: number): void {
    const cutoff = now - this.#retention.ageMs;
    while (this.#globalHead < this.#global.length) {
      const entry = this.#global[this.#globalHead];
      const message = entry.message;
      if (message) {
        if (message.time > cutoff && this.#totalBytes <= this.#retention.totalBytes) break;
        const t = this.#topics.get(message.topic)!;
        this.#removeFromTopic(t, entry);
      }
      this.#globalHead++;
    }
    if (this.#globalHead > COMPACT_AFTER && this.#globalHead * 2 > this.#global.length) {
      this.#global = this.#global.slice(this.#globalHead);
      this.#globalHead = 0;
    }
  }

  async history(topic: string, since?: string, limit?: number): Promise<HistoryResult> {
    this.#expire(this.#now());
    const recursive = topic.endsWith('/');
    let messages: Message[] = [];
    let gap = false;
    const trimmedAfter = (upTo: string | undefined) => upTo !== undefined && since !== undefined && compareIds(upTo, since) > 0;

    if (!recursive) {
      const t = this.#topics.get(topic);
      if (t) {
        gap = trimmedAfter(t.trimmedUpTo);
        messages = after(t.entries, t.head, since);
      } else {
        gap = trimmedAfter(this.#tombstones.get(topic));
      }
    } else {
      messages = after(this.#global, this.#globalHead, since).filter((m) => m.topic.startsWith(topic));
      for (const [name, t] of this.#topics) if (name.startsWith(topic) && trimmedAfter(t.trimmedUpTo)) gap = true;
      for (const [name, id] of this.#tombstones) if (name.startsWith(topic) && trimmedAfter(id)) gap = true;
    }
    if (!gap && trimmedAfter(this.#forgottenUpTo)) gap = true;
    // Never silent: a resume from before this process started, or while nothing is kept, may have missed messages.
    if (!gap && since !== undefined && since !== '0-0') {
      if (idTime(since) <= this.#startedAt) gap = true;
      else if (!this.#enabled && this.#lastId !== undefined && compareIds(this.#lastId, since) > 0) gap = true;
    }
    if (limit !== undefined && messages.length > limit) {
      messages = messages.slice(messages.length - limit);
      gap = true;
    }
    return { gap, messages };
  }

  async historyTopics(): Promise<Array<{ topic: string; messages: number; bytes: number }>> {
    this.#expire(this.#now());
    return [...this.#topics].map(([topic, t]) => ({ topic, messages: t.entries.length - t.head, bytes: t.bytes }));
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}

/** Live (not removed) messages of entries[head..] with id > since, by binary search. */
function after(entries: Entry[], head: number, since: string | undefined): Message[] {
  let lo = head;
  if (since !== undefined) {
    let hi = entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareIds(entries[mid].id, since) <= 0) lo = mid + 1;
      else hi = mid;
    }
  }
  const out: Message[] = [];
  for (let i = lo; i < entries.length; i++) {
    const m = entries[i].message;
    if (m) out.push(m);
  }
  return out;
}
