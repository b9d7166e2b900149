/**
 * Idempotency keys remembered by a single-process backend: a publish that
 * repeats a key (per topic) within the window gets the original message's id
 * back instead of a second copy. Bounded like the routers' delivery ids:
 * entries expire after the window and, past `maxKeys`, the oldest go first;
 * every operation is O(1) amortised.
 */

export const DEFAULT_IDEMPOTENCY_WINDOW_MS = 60 * 60 * 1000;
export const DEFAULT_IDEMPOTENCY_MAX_KEYS = 100_000;

export interface IdempotencyOptions {
  windowMs?: number;
  maxKeys?: number;
}

/** The map key of an idempotency key: scoped to its topic, so two topics' keys never collide. */
export function idempotencyScope(topic: string, key: string): string {
  return `${topic}\n${key}`;
}

export class IdempotencyKeys {
  readonly #windowMs: number;
  readonly #maxKeys: number;
  // Insertion order is age order, so expiry and eviction only look at the front.
  readonly #ids = new Map<string, { id: string; at: number }>();

  constructor(options: IdempotencyOptions = {}) {
    this.#windowMs = options.windowMs ?? DEFAULT_IDEMPOTENCY_WINDOW_MS;
    this.#maxKeys = options.maxKeys ?? DEFAULT_IDEMPOTENCY_MAX_KEYS;
  }

  /** The id stored under `topic`/`key` within the window, if any. */
  get(topic: string, key: string, now: number): string | undefined {
    this.#expire(now);
    return this.#ids.get(idempotencyScope(topic, key))?.id;
  }

  set(topic: string, key: string, id: string, now: number): void {
    if (this.#windowMs <= 0 || this.#maxKeys <= 0) return;
    this.#ids.set(idempotencyScope(topic, key), { id, at: now });
    while (this.#ids.size > this.#maxKeys) this.#ids.delete(this.#ids.keys().next().value as string);
  }

  #expire(now: number): void {
    for (const [k, e] of this.#ids) {
      if (now - e.at < this.#windowMs) break;
      this.#ids.delete(k);
    }
  }
}
