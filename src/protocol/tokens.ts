/**
 * Path-prefix HMAC tokens, exactly as the original hookbot makes and checks them.
 *
 * A token is hex(HMAC-SHA1(key, path)). A request for path P is allowed by the
 * token of any "subpath" of P (each prefix ending in `/`, and P itself), and by
 * the token of that subpath with a leading `/pub` and then `/sub` removed, so
 * `/foo/` tokens work for both publishing and subscribing.
 */
import { createHash, createHmac, hash, type Hash } from 'node:crypto';
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

/** RFC 7235 `token68`, the shape of a Bearer credential. */
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;

/** RFC 7235 whitespace: space and tab only (never the Unicode spaces `\s` would take). */
const isSpace = (c: number) => c === 0x20 || c === 0x09;

/**
 * The token presented by an `Authorization` header, or undefined.
 * `Basic base64(token:anything)` or `Bearer token`; anything else is no token.
 */
export function presentedToken(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  // Exactly two fields separated by spaces or tabs, as the original's strings.Fields check.
  // Parsed by hand: this runs on every publish.
  let start = 0;
  let end = authorization.length;
  while (start < end && isSpace(authorization.charCodeAt(start))) start++;
  while (end > start && isSpace(authorization.charCodeAt(end - 1))) end--;
  let space = start;
  while (space < end && !isSpace(authorization.charCodeAt(space))) space++;
  if (space === end) return undefined;
  const scheme = authorization.slice(start, space);
  let valueStart = space;
  while (valueStart < end && isSpace(authorization.charCodeAt(valueStart))) valueStart++;
  const value = authorization.slice(valueStart, end);
  for (let i = 0; i < value.length; i++) if (isSpace(value.charCodeAt(i))) return undefined;
  switch (scheme.toLowerCase()) {
    case 'bearer':
      return TOKEN68.test(value) ? value : undefined;
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
const SHA1_BLOCK = 64;

/**
 * Below this many bytes hashed in all (each prefix plus its key block), a
 * chain's digests are one-shot hashes of scratch-buffer slices: no native
 * hash object is made, and each such object holds OpenSSL memory until V8
 * happens to collect it (about 1 KB of RSS per subscriber connection, which
 * checks some 15 digests). Longer chains pay for one incremental pass instead.
 */
const ONE_SHOT_BYTES = 4096;

/**
 * HMAC-SHA1 under one key, for many strings that are prefixes of one another:
 * HMAC(k, m) = H(k ^ opad ‖ H(k ^ ipad ‖ m)). Short chains hash each prefix
 * in one shot; a long one runs the inner hash once along the longest string
 * and copies it at each prefix, so the digests of all of a path's prefixes
 * cost time proportional to the path's length, never its length × depth.
 */
class PrefixHmac {
  readonly #ipad: Buffer;
  /** The outer hash's input: the key block, then the inner digest written in at SHA1_BLOCK. */
  readonly #outerInput = Buffer.alloc(SHA1_BLOCK + TOKEN_BYTES);

  constructor(key: string) {
    let k = Buffer.from(key, 'utf8');
    if (k.length > SHA1_BLOCK) k = createHash('sha1').update(k).digest();
    const block = Buffer.alloc(SHA1_BLOCK);
    k.copy(block);
    this.#ipad = Buffer.from(block.map((b) => b ^ 0x36));
    Buffer.from(block.map((b) => b ^ 0x5c)).copy(this.#outerInput);
  }

  /**
   * Writes the digest of each of `prefixes` (ordered by length, each a prefix
   * of the next, cut at `/` boundaries or the end so no UTF-8 sequence is cut
   * in two) into `out` at `offsets[i]`.
   */
  digestChain(prefixes: readonly string[], out: Buffer, offsets: readonly number[]): void {
    if (prefixes.length === 0) return;
    // Every prefix's inner-hash input is a prefix of this one: the key block, then the longest string.
    const ends = prefixes.map((p) => SHA1_BLOCK + Buffer.byteLength(p, 'utf8'));
    const input = Buffer.allocUnsafe(ends[ends.length - 1]);
    this.#ipad.copy(input);
    input.write(prefixes[prefixes.length - 1], SHA1_BLOCK, 'utf8');
    if (ends.reduce((sum, e) => sum + e, 0) <= ONE_SHOT_BYTES) {
      for (let i = 0; i < ends.length; i++) this.#outer(hash('sha1', input.subarray(0, ends[i]), 'binary'), out, offsets[i]);
      return;
    }
    const inner: Hash = createHash('sha1');
    let done = 0;
    for (let i = 0; i < ends.length; i++) {
      if (ends[i] > done) inner.update(input.subarray(done, ends[i]));
      done = ends[i];
      this.#outer(inner.copy().digest('binary'), out, offsets[i]);
    }
  }

  /**
   * The outer hash over an inner digest, written into `out` at `offset`.
   * Digests travel as one-byte strings ('binary' is latin1) written into the
   * buffers: a Buffer result would be a native allocation per digest, freed
   * only when V8 collects it.
   */
  #outer(innerDigest: string, out: Buffer, offset: number): void {
    this.#outerInput.write(innerDigest, SHA1_BLOCK, 'latin1');
    out.write(hash('sha1', this.#outerInput, 'binary'), offset, 'latin1');
  }
}

/**
 * Checks tokens against the current key and any previous keys (rotation).
 *
 * A request for path P may present the token of any of up to 2 × depth
 * candidate paths. The candidates fall into two chains of prefixes (of P, and
 * of P without its `/pub` or `/sub`), each digested in one pass (PrefixHmac),
 * so a check costs time proportional to the path's length. A bounded cache
 * keeps the candidates' digests of paths that verified (publishers repeat
 * their paths), so a repeat costs one lookup; paths that fail are never
 * cached, so guessing cannot fill it. Subscriptions (checked once per
 * connection) stay out of it too.
 */
export class TokenVerifier {
  readonly #keys: string[];
  readonly #hmacs: PrefixHmac[];
  readonly #paths = new Map<string, Buffer>();
  readonly #cacheLimit: number;

  constructor(keys: string[], cacheLimit = 10_000) {
    if (keys.length === 0 || keys.some((k) => k.length === 0)) throw new Error('TokenVerifier needs at least one non-empty key');
    this.#keys = keys;
    this.#hmacs = keys.map((k) => new PrefixHmac(k));
    this.#cacheLimit = cacheLimit;
  }

  /** The current key's token for a path (what make-tokens prints). */
  token(path: string): string {
    return makeToken(this.#keys[0], path);
  }

  /** Every candidate's digest under every key, in one Buffer of 20-byte slots. */
  #validTokens(path: string): Buffer {
    const candidates = new Set<string>();
    for (const sub of subpaths(path)) {
      candidates.add(sub);
      candidates.add(withoutPrefix(sub));
    }
    // Chains of prefixes; a candidate that is a prefix of neither (only quirks such as '' for `/pub`) is a chain of its own.
    const stripped = withoutPrefix(path);
    const chains = new Map<string, string[]>();
    for (const c of candidates) {
      const base = path.startsWith(c) ? path : stripped.startsWith(c) ? stripped : c;
      let chain = chains.get(base);
      if (!chain) chains.set(base, (chain = []));
      chain.push(c);
    }
    const width = this.#keys.length * TOKEN_BYTES;
    const valid = Buffer.allocUnsafe(candidates.size * width);
    let slot = 0;
    for (const chain of chains.values()) {
      chain.sort((a, b) => a.length - b.length);
      const first = slot;
      slot += chain.length;
      this.#hmacs.forEach((hmac, k) =>
        hmac.digestChain(
          chain,
          valid,
          chain.map((_, i) => (first + i) * width + k * TOKEN_BYTES),
        ),
      );
    }
    return valid;
  }

  /**
   * Whether `token` (40 lower-case hex chars) authorises a request for `path`.
   * `cache: false` for checks made once per connection rather than per message.
   */
  verify(path: string, token: string | undefined, cache = true): boolean {
    if (token === undefined || token.length !== TOKEN_BYTES * 2 || !/^[0-9a-f]+$/.test(token)) return false;
    const given = Buffer.from(token, 'hex');
    const known = this.#paths.get(path);
    // Constant time over every candidate digest, so timing says nothing about how close a guess came or which matched.
    if (known) return includesSlot(known, given);
    const valid = this.#validTokens(path);
    const ok = includesSlot(valid, given);
    if (ok && cache) remember(this.#paths, path, valid, this.#cacheLimit);
    return ok;
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
