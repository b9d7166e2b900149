/**
 * Constant-time comparisons of secrets (tokens, signatures, the metrics
 * token): timing must say nothing about how close a guess came, how long the
 * secret is, or which of several accepted values matched.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

/** Whether two strings are equal, in time independent of where they differ and of `expected`'s length. */
export function safeEqual(presented: string | Buffer, expected: string | Buffer): boolean {
  // Hashing first gives timingSafeEqual equal-length inputs whatever was presented.
  return timingSafeEqual(createHash('sha256').update(presented).digest(), createHash('sha256').update(expected).digest());
}

/** Whether `presented` equals any of `expected`; every value is compared (no early exit on a match). */
export function matchesAny(presented: string | Buffer, expected: readonly (string | Buffer)[]): boolean {
  let ok = false;
  for (const e of expected) ok = safeEqual(presented, e) || ok;
  return ok;
}

/**
 * Whether `needle` equals one of the `needle.length`-byte slots of
 * `haystack`. Every byte of every slot is compared with no branch on the data
 * and nothing is allocated, so it can sit on the publish hot path (a token
 * checked against each of its path's candidate digests).
 */
export function includesSlot(haystack: Buffer, needle: Buffer): boolean {
  const width = needle.length;
  if (width === 0) return false;
  let matched = 0;
  for (let offset = 0; offset + width <= haystack.length; offset += width) {
    let diff = 0;
    for (let i = 0; i < width; i++) diff |= haystack[offset + i] ^ needle[i];
    matched |= ((diff - 1) >>> 31) & 1;
  }
  return matched === 1;
}
