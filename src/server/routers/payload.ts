/**
 * A webhook payload as a router finds it in a feed message: either the raw
 * body, or the base64 Payload string of an envelope, located but not yet
 * decoded.
 *
 * Anything reaching an unsafe feed may be forged, and may be as large as
 * --max-body. So a payload is only ever read in bounded chunks until its
 * signature has been checked: `chunks()` decodes 1 MiB at a time into the
 * same scratch buffer and yields to the event loop between chunks, so a
 * forged 18 MiB delivery costs one pass of HMAC over its bytes, about 2 MiB
 * of memory, and no turn of the event loop longer than about a millisecond.
 * Only a verified payload is decoded whole (`bytes()`) and parsed.
 */
import { createHmac } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';

/**
 * Base64 characters decoded at a time (node's decoder needs a string): a
 * multiple of 4, and just over node's threshold (about 1 000 000 bytes) for
 * making an external string, which lives outside the V8 heap. Smaller
 * strings fill the young generation, and the scavenges that follow promote
 * every request body then in flight to the old generation, where its memory
 * waits for a full GC; a few hundred KiB go to V8's large-object space, one
 * mmap each. About a millisecond of work, then a turn of the event loop.
 */
const CHUNK = 1024 * 1024;

/** The payload is not valid base64; found while streaming it. */
export class PayloadError extends Error {}

export const INVALID_BASE64 = 'envelope Payload is not valid base64';

export class Payload {
  readonly #source: Buffer;
  /** Set when #source is base64 text rather than the payload's bytes. */
  readonly #base64: boolean;

  private constructor(source: Buffer, base64: boolean) {
    this.#source = source;
    this.#base64 = base64;
  }

  /** A raw webhook body (published without ?extra-metadata). */
  static raw(body: Buffer): Payload {
    return new Payload(body, false);
  }

  /** The base64 text `body[start, end)` of an envelope's Payload (a view: nothing is copied). */
  static base64(body: Buffer, start: number, end: number): Payload {
    return new Payload(body.subarray(start, end), true);
  }

  /** The base64 text, when the payload came from an envelope (for re-wrapping it without decoding). */
  get encoded(): Buffer | undefined {
    return this.#base64 ? this.#source : undefined;
  }

  /**
   * False when the payload certainly is not standard base64, decided without
   * reading it: a length that is not a multiple of 4. Everything else (a
   * stray character, URL-safe characters, `=` before the end) is found while
   * decoding, one chunk at a time.
   */
  precheck(): boolean {
    return !this.#base64 || this.#source.length % 4 === 0;
  }

  /**
   * The payload's bytes, chunk by chunk, yielding to the event loop between
   * chunks. A chunk is valid only until the next is requested (the scratch
   * buffer is reused). Throws PayloadError on invalid base64.
   */
  async *chunks(): AsyncGenerator<Buffer, void, undefined> {
    const s = this.#source;
    if (!this.#base64) {
      for (let i = 0; i < s.length; i += CHUNK) {
        if (i > 0) await nextTurn();
        yield s.subarray(i, i + CHUNK);
      }
      return;
    }
    if (!this.precheck()) throw new PayloadError(INVALID_BASE64);
    const scratch = Buffer.allocUnsafe(Math.min(CHUNK, s.length) * 0.75);
    for (let i = 0; i < s.length; i += CHUNK) {
      if (i > 0) await nextTurn();
      const end = Math.min(i + CHUNK, s.length);
      const decoded = decodeInto(s, i, end, scratch);
      if (decoded === undefined) throw new PayloadError(INVALID_BASE64);
      yield scratch.subarray(0, decoded);
    }
  }

  /** The whole payload decoded (for a verified delivery), or undefined if it is not valid base64. */
  bytes(): Buffer | undefined {
    const s = this.#source;
    if (!this.#base64) return s;
    if (!this.precheck()) return undefined;
    const out = Buffer.allocUnsafe(s.length * 0.75);
    let size = 0;
    for (let i = 0; i < s.length; i += CHUNK) {
      const decoded = decodeInto(s, i, Math.min(i + CHUNK, s.length), out.subarray(size));
      if (decoded === undefined) return undefined;
      size += decoded;
    }
    return out.subarray(0, size);
  }
}

/**
 * Decodes base64 `text[start, end)` (a multiple of 4 characters) into
 * `into`: the byte count, or undefined when it is not standard base64.
 * Node's decoder skips characters that are not base64 (and stops at `=`), so
 * fewer bytes than the length promises means a stray character; it also
 * takes the URL-safe `-` and `_`, which standard base64 (Go's) does not.
 */
function decodeInto(text: Buffer, start: number, end: number, into: Buffer): number | undefined {
  const chunk = text.subarray(start, end);
  if (chunk.includes(0x2d) || chunk.includes(0x5f)) return undefined;
  const pad = end === text.length ? (text[end - 1] === 0x3d ? (text[end - 2] === 0x3d ? 2 : 1) : 0) : 0;
  const expected = ((end - start) / 4) * 3 - pad;
  const written = into.write(chunk.toString('latin1'), 0, expected, 'base64');
  return written === expected ? written : undefined;
}

/**
 * HMAC-`algo` of the payload in hex under each key, streaming it once
 * whatever the number of keys (one per secret during a rotation).
 */
export async function hmacHex(algo: 'sha256' | 'sha1', keys: readonly string[], payload: Payload): Promise<string[]> {
  const macs = keys.map((k) => createHmac(algo, k));
  for await (const chunk of payload.chunks()) for (const mac of macs) mac.update(chunk);
  return macs.map((m) => m.digest('hex'));
}
