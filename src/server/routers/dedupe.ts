/**
 * A bounded "seen recently" set of delivery ids.
 *
 * GitHub and GitLab retry deliveries and users press "Redeliver", both with the
 * same id; re-publishing those would make deploy agents deploy twice. Memory
 * stays bounded however many ids arrive: entries expire after the window and,
 * past maxEntries, the oldest go first. Every operation is O(1) amortised.
 */
import type { SeenStore } from './router.js';

export const DEFAULT_DEDUPE_WINDOW_MS = 60 * 60 * 1000;
export const DEFAULT_DEDUPE_MAX_IDS = 100_000;

export interface RecentIdsOptions {
  windowMs?: number;
  maxEntries?: number;
  /** Clock in ms; injectable for tests. */
  now?: () => number;
}

export class RecentIds implements SeenStore {
  readonly windowMs: number;
  readonly maxEntries: number;
  readonly #now: () => number;
  // A Map iterates in insertion order and claim() re-inserts, so the first
  // entry is always the oldest: expiry and eviction only ever look at the front.
  readonly #seen = new Map<string, number>();

  constructor(options: RecentIdsOptions = {}) {
    this.windowMs = options.windowMs ?? DEFAULT_DEDUPE_WINDOW_MS;
    this.maxEntries = options.maxEntries ?? DEFAULT_DEDUPE_MAX_IDS;
    this.#now = options.now ?? Date.now;
    if (!(this.windowMs >= 0) || !Number.isInteger(this.maxEntries) || this.maxEntries < 0) {
      throw new RangeError('RecentIds: windowMs must be >= 0 and maxEntries a non-negative integer');
    }
  }

  get size(): number {
    return this.#seen.size;
  }

  /** True if `id` was seen within the window (without recording it). */
  has(id: string): boolean {
    const now = this.#now();
    this.#expire(now);
    const at = this.#seen.get(id);
    return at !== undefined && now - at < this.windowMs;
  }

  /** True if `id` was already seen within the window; otherwise records it and returns false. */
  claim(id: string): boolean {
    if (this.windowMs === 0 || this.maxEntries === 0) return false;
    const now = this.#now();
    this.#expire(now);
    const at = this.#seen.get(id);
    if (at !== undefined && now - at < this.windowMs) return true;
    this.#seen.delete(id);
    this.#seen.set(id, now);
    while (this.#seen.size > this.maxEntries) this.#seen.delete(this.#seen.keys().next().value as string);
    return false;
  }

  release(id: string): void {
    this.#seen.delete(id);
  }

  #expire(now: number): void {
    for (const [id, at] of this.#seen) {
      // A clock stepping backwards leaves `now - at` negative; such entries just live a little longer.
      if (now - at < this.windowMs) break;
      this.#seen.delete(id);
    }
  }
}

/** The two Redis commands RedisSeenStore needs; an ioredis client has them. */
export interface RedisCommands {
  set(key: string, value: string, px: 'PX', ms: number, nx: 'NX'): Promise<string | null>;
  del(key: string): Promise<number>;
}

/**
 * Delivery ids shared by every node of a Redis cluster. Each node's router
 * sees every feed message (the backend fans out to all nodes), so with
 * per-process memory each node would re-publish the same delivery; one atomic
 * `SET NX` decides which node does. Redis expiry bounds the memory.
 */
export class RedisSeenStore implements SeenStore {
  readonly #redis: RedisCommands;
  readonly #windowMs: number;
  readonly #prefix: string;

  constructor(redis: RedisCommands, windowMs = DEFAULT_DEDUPE_WINDOW_MS, prefix = 'hookbot:router-seen:') {
    this.#redis = redis;
    this.#windowMs = Math.max(1, Math.round(windowMs));
    this.#prefix = prefix;
  }

  async claim(key: string): Promise<boolean> {
    return (await this.#redis.set(this.#prefix + key, '1', 'PX', this.#windowMs, 'NX')) === null;
  }

  async release(key: string): Promise<void> {
    await this.#redis.del(this.#prefix + key);
  }
}
