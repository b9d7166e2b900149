/**
 * Which subscribers want a topic.
 *
 * A subscription ending in `/` is recursive: it wants every topic that starts
 * with it. Matching looks up the exact topic and then each `/`-ending prefix of
 * it, so it costs time proportional to the topic's depth, never to the number
 * of subscribed topics.
 */
import { isRecursive } from '../protocol/topics.js';

export class TopicIndex<S> {
  #exact = new Map<string, Set<S>>();
  #recursive = new Map<string, Set<S>>();
  /** The longest recursive subscription: no prefix of a published topic beyond it can match, so none is looked up. */
  #longestRecursive = 0;
  #count = 0;

  add(topic: string, sub: S): void {
    const map = isRecursive(topic) ? this.#recursive : this.#exact;
    let set = map.get(topic);
    if (!set) map.set(topic, (set = new Set()));
    if (map === this.#recursive && topic.length > this.#longestRecursive) this.#longestRecursive = topic.length;
    if (!set.has(sub)) {
      set.add(sub);
      this.#count++;
    }
  }

  delete(topic: string, sub: S): boolean {
    const map = isRecursive(topic) ? this.#recursive : this.#exact;
    const set = map.get(topic);
    if (!set || !set.delete(sub)) return false;
    if (set.size === 0) {
      map.delete(topic);
      if (map === this.#recursive && topic.length === this.#longestRecursive) {
        this.#longestRecursive = 0;
        for (const t of map.keys()) if (t.length > this.#longestRecursive) this.#longestRecursive = t.length;
      }
    }
    this.#count--;
    return true;
  }

  /** Calls `each` for every subscriber matching a published topic; returns how many. */
  match(topic: string, each: (sub: S, recursive: boolean) => void): number {
    let n = 0;
    const exact = this.#exact.get(topic);
    if (exact) {
      for (const sub of exact) each(sub, false);
      n += exact.size;
    }
    if (this.#recursive.size === 0) return n;
    const longest = this.#longestRecursive;
    for (let i = topic.indexOf('/'); i !== -1 && i < longest; i = topic.indexOf('/', i + 1)) {
      const set = this.#recursive.get(topic.slice(0, i + 1));
      if (set) {
        for (const sub of set) each(sub, true);
        n += set.size;
      }
    }
    return n;
  }

  /** Number of subscriptions. */
  get size(): number {
    return this.#count;
  }

  /** Every subscribed topic with its subscribers. */
  *entries(): IterableIterator<[topic: string, subscribers: ReadonlySet<S>]> {
    yield* this.#exact;
    yield* this.#recursive;
  }

  /** Subscribed topics with their subscriber counts. */
  *topics(): IterableIterator<[topic: string, subscribers: number]> {
    for (const [t, s] of this.#exact) yield [t, s.size];
    for (const [t, s] of this.#recursive) yield [t, s.size];
  }
}
