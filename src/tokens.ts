/**
 * Path-prefix HMAC tokens, exactly as the original hookbot makes and checks them.
 *
 * A token is hex(HMAC-SHA1(key, path)). A request for path P is allowed by the
 * token of any "subpath" of P (each prefix ending in `/`, and P itself), and by
 * the token of that subpath with a leading `/pub` and then `/sub` removed, so
 * `/foo/` tokens work for both publishing and subscribing.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

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
 * The valid tokens of a path are computed once and cached (bounded), because
 * every publish would otherwise cost up to 2 × depth × keys HMACs.
 */
export class TokenVerifier {
  readonly #keys: string[];
  readonly #cache = new Map<string, Buffer[]>();
  readonly #cacheLimit: number;

  constructor(keys: string[], cacheLimit = 10_000) {
    if (keys.length === 0 || keys.some((k) => k.length === 0)) throw new Error('TokenVerifier needs at least one non-empty key');
    this.#keys = keys;
    this.#cacheLimit = cacheLimit;
  }

  /** The current key's token for a path (what make-tokens prints). */
  token(path: string): string {
    return makeToken(this.#keys[0], path);
  }

  #validTokens(path: string): Buffer[] {
    let valid = this.#cache.get(path);
    if (valid) return valid;
    const paths = new Set<string>();
    for (const sub of subpaths(path)) {
      paths.add(sub);
      paths.add(withoutPrefix(sub));
    }
    valid = [];
    for (const key of this.#keys) {
      for (const p of paths) valid.push(createHmac('sha1', key).update(p).digest());
    }
    if (this.#cache.size >= this.#cacheLimit) this.#cache.delete(this.#cache.keys().next().value as string);
    this.#cache.set(path, valid);
    return valid;
  }

  /** Whether `token` (40 lower-case hex chars) authorises a request for `path`. */
  verify(path: string, token: string | undefined): boolean {
    if (token === undefined || token.length !== TOKEN_BYTES * 2 || !/^[0-9a-f]+$/.test(token)) return false;
    const given = Buffer.from(token, 'hex');
    let ok = false;
    // Compare against every candidate, no early exit, so timing says nothing about which matched.
    for (const expected of this.#validTokens(path)) {
      if (timingSafeEqual(given, expected)) ok = true;
    }
    return ok;
  }

  /** verify() for an `Authorization` header value. */
  verifyAuthorization(path: string, authorization: string | undefined): boolean {
    return this.verify(path, presentedToken(authorization));
  }
}
