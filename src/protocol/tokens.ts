/**
 * Path-prefix HMAC tokens, exactly as the original hookbot makes and checks them.
 *
 * A token is hex(HMAC-SHA1(key, path)). A request for path P is allowed by the
 * token of any "subpath" of P (each prefix ending in `/`, and P itself), and by
 * the token of that subpath with a leading `/pub` and then `/sub` removed, so
 * `/foo/` tokens work for both publishing and subscribing.
 */
import { createHmac } from 'node:crypto';
import { includesSlot } from '../util/safe-equal.js';

export function makeToken(key: string, path: string): string {
  return createHmac('sha1', key).update(path).digest('hex');
}

/** Every `/`-ending prefix of `path`, and `path` itself (once). */
export function subpaths(path: string): string[] {
  const out: string[] = [];
  for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) out.push(path.slice(0, i + 1));
  if (!path.endsWith('/')) out.push(path);
  return out;
}

function withoutPrefix(path: string): string {
  if (path.startsWith('/pub')) path = path.slice(4);
  if (path.startsWith('/sub')) path = path.slice(4);
  return path;
}

/**
 * The token presented by an `Authorization` header, or undefined.
 * `Basic base64(token:anything)` or `Bearer token`; anything else is no token.
 */
export function presentedToken(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  // Exactly two whitespace-separated fields, as the original's strings.Fields check.
  // Parsed by hand: this runs on every publish.
  const text = authorization.trim();
  const space = text.search(/\s/);
  if (space === -1) return undefined;
  const scheme = text.slice(0, space);
  const value = text.slice(space + 1).trimStart();
  if (value === '' || /\s/.test(value)) return undefined;
  switch (scheme.toLowerCase()) {
    case 'bearer':
      return value;
    case 'basic': {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value)) return undefined;
      const decoded = Buffer.from(value, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      return colon === -1 ? undefined : decoded.slice(0, colon);
    }
    default:
      return undefined;
  }
}

const TOKEN_BYTES = 20;

/**
 * Checks tokens against the current key and any previous keys (rotation).
 *
 * A request for path P may present the token of any of up to 2 × depth
 * candidate paths. Two bounded caches keep that cheap:
 * - per request path, all its candidates' digests in one Buffer, so a path
 *   seen before costs one lookup (publishes repeat their paths);
 * - per `/`-ending candidate, its digests: those prefixes (`/`, `/pub/`,
 *   `/pub/org/`) are shared by every topic under them, so even a path never
 *   seen before costs only its own one or two HMACs.
 * Subscriptions (checked once per connection) stay out of the first cache so
 * they never push publish paths out.
 */
export class TokenVerifier {
  readonly #keys: string[];
  readonly #paths = new Map<string, Buffer>();
  readonly #prefixes = new Map<string, Buffer>();
  readonly #cacheLimit: number;

  constructor(keys: string[], cacheLimit = 50_000) {
    if (keys.length === 0 || keys.some((k) => k.length === 0)) throw new Error('TokenVerifier needs at least one non-empty key');
    this.#keys = keys;
    this.#cacheLimit = cacheLimit;
  }

  /** The current key's token for a path (what make-tokens prints). */
  token(path: string): string {
    return makeToken(this.#keys[0], path);
  }

  /** Writes the digests of one candidate under every key into `out` at `offset`. */
  #digestInto(candidate: string, out: Buffer, offset: number): void {
    const shared = candidate.endsWith('/');
    const cached = shared ? this.#prefixes.get(candidate) : undefined;
    if (cached) {
      cached.copy(out, offset);
      return;
    }
    const keys = this.#keys;
    for (let i = 0; i < keys.length; i++) createHmac('sha1', keys[i]).update(candidate).digest().copy(out, offset + i * TOKEN_BYTES);
    if (shared) remember(this.#prefixes, candidate, Buffer.from(out.subarray(offset, offset + keys.length * TOKEN_BYTES)), this.#cacheLimit);
  }

  #validTokens(path: string, cache: boolean): Buffer {
    const known = this.#paths.get(path);
    if (known) return known;
    const candidates = new Set<string>();
    for (const sub of subpaths(path)) {
      candidates.add(sub);
      candidates.add(withoutPrefix(sub));
    }
    const width = this.#keys.length * TOKEN_BYTES;
    const valid = Buffer.allocUnsafe(candidates.size * width);
    let offset = 0;
    for (const c of candidates) {
      this.#digestInto(c, valid, offset);
      offset += width;
    }
    if (cache) remember(this.#paths, path, valid, this.#cacheLimit);
    return valid;
  }

  /**
   * Whether `token` (40 lower-case hex chars) authorises a request for `path`.
   * `cache: false` for checks made once per connection rather than per message.
   */
  verify(path: string, token: string | undefined, cache = true): boolean {
    if (token === undefined || token.length !== TOKEN_BYTES * 2 || !/^[0-9a-f]+$/.test(token)) return false;
    // Constant time over every candidate digest, so timing says nothing about how close a guess came or which matched.
    return includesSlot(this.#validTokens(path, cache), Buffer.from(token, 'hex'));
  }

  /** verify() for an `Authorization` header value. */
  verifyAuthorization(path: string, authorization: string | undefined, cache = true): boolean {
    return this.verify(path, presentedToken(authorization), cache);
  }
}

/** Map.set with the oldest entry dropped at the bound. */
function remember(map: Map<string, Buffer>, key: string, value: Buffer, limit: number): void {
  if (map.size >= limit) map.delete(map.keys().next().value as string);
  map.set(key, value);
}
