/**
 * Which subscribers want a topic.
 *
 * A subscription ending in `/` is recursive: it wants every topic that starts
 * with it. Matching looks up the exact topic and then each `/`-ending prefix of
 * it, so it costs time proportional to the topic's depth, never to the number
 * of subscribed topics.
 */

export function isRecursive(topic: string): boolean {
  return topic.endsWith('/');
}

export class TopicIndex<S> {
  #exact = new Map<string, Set<S>>();
  #recursive = new Map<string, Set<S>>();
  #count = 0;

  add(topic: string, sub: S): void {
    const map = isRecursive(topic) ? this.#recursive : this.#exact;
    let set = map.get(topic);
    if (!set) map.set(topic, (set = new Set()));
    if (!set.has(sub)) {
      set.add(sub);
      this.#count++;
    }
  }

  delete(topic: string, sub: S): boolean {
    const map = isRecursive(topic) ? this.#recursive : this.#exact;
    const set = map.get(topic);
    if (!set || !set.delete(sub)) return false;
    if (set.size === 0) map.delete(topic);
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
    for (let i = topic.indexOf('/'); i !== -1; i = topic.indexOf('/', i + 1)) {
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

/** A request path mapped onto the protocol: what it does and on which topic. */
export interface Endpoint {
  /** `pub`/`sub` from `/pub/`, `/sub/` (and unsafe); `any` for a bare `/<topic>` (the method decides). */
  action: 'pub' | 'sub' | 'any';
  unsafe: boolean;
  topic: string;
  /** The percent-decoded path, which tokens are made for. */
  path: string;
}

export class PathError extends Error {
  readonly status = 400;
}

/**
 * Maps a request path (no query) to its endpoint. Topics are taken from the
 * percent-decoded path, as the original does; unsafe topics are prefixed with
 * `/unsafe/` so they can never reach a safe subscriber of the same name.
 */
export function parseEndpoint(rawPath: string): Endpoint {
  if (!rawPath.startsWith('/')) throw new PathError('path must start with /');
  let path: string;
  try {
    path = rawPath.includes('%') ? decodeURIComponent(rawPath) : rawPath;
  } catch {
    throw new PathError('malformed percent-encoding in path');
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(path)) throw new PathError('control character in path');

  let action: Endpoint['action'];
  let unsafe = false;
  let topic: string;
  if (path.startsWith('/pub/') || path.startsWith('/sub/')) {
    action = path[1] === 'p' ? 'pub' : 'sub';
    topic = path.slice(5);
  } else if (path.startsWith('/unsafe/pub/') || path.startsWith('/unsafe/sub/')) {
    action = path[8] === 'p' ? 'pub' : 'sub';
    unsafe = true;
    topic = '/unsafe/' + path.slice(12);
  } else {
    action = 'any';
    topic = path.slice(1);
  }
  if (topic === '') throw new PathError('topic is empty');
  return { action, unsafe, topic, path };
}
