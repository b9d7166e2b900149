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
   * decoding it: a length that is not a multiple of 4, with no JSON escape
   * (a `\n` line break is two characters) to account for it. Everything else
   * (a stray character, URL-safe characters, `=` before the end) is found
   * while decoding, one chunk at a time.
   */
  precheck(): boolean {
    return !this.#base64 || this.#source.length % 4 === 0 || this.#source.includes(BACKSLASH);
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
    const scratch = Buffer.allocUnsafe(Math.ceil((Math.min(CHUNK, s.length) + PIECE_SLACK) / 4) * 3);
    const pieces = decodePieces(s, () => scratch);
    for (let first = true; ; first = false) {
      if (!first) await nextTurn();
      const next = pieces.next();
      if (next.done) return;
      if (next.value === undefined) throw new PayloadError(INVALID_BASE64);
      yield next.value;
    }
  }

  /** The whole payload decoded (for a verified delivery), or undefined if it is not valid base64. */
  bytes(): Buffer | undefined {
    const s = this.#source;
    if (!this.#base64) return s;
    if (!this.precheck()) return undefined;
    const out = Buffer.allocUnsafe(Math.ceil(s.length / 4) * 3);
    let size = 0;
    for (const piece of decodePieces(s, () => out.subarray(size))) {
      if (piece === undefined) return undefined;
      size += piece.length;
    }
    return out.subarray(0, size);
  }
}

const BACKSLASH = 0x5c;
const SLASH = 0x2f;
/** Characters a piece may hold beyond CHUNK: an escape kept whole, and up to 3 carried over. */
const PIECE_SLACK = 4;

/**
 * Decodes base64 `text` (the raw contents of a JSON string) about CHUNK
 * characters at a time, each piece written into `into()` and yielded as the
 * bytes it made; undefined, and the end, when it is not standard base64.
 *
 * What a JSON string can hold of such text is undone first, as the original
 * (Go's encoding/json into a []byte) would: `\n` and `\r` are line breaks,
 * which Go's decoder skips (encoders that wrap lines at 76 characters emit
 * them), and `\/` is `/`. Any other escape decodes to a character base64
 * cannot hold. A GitHub envelope has none, and its chunks are decoded where
 * they lie; with escapes, a piece is a copy and what is left over of a quad
 * is carried into the next.
 */
function* decodePieces(text: Buffer, into: () => Buffer): Generator<Buffer | undefined, void, undefined> {
  let carry = Buffer.alloc(0);
  for (let pos = 0; pos < text.length; ) {
    let end = Math.min(pos + CHUNK, text.length);
    // An escape is two characters: keep it in one piece.
    if (end < text.length && text[end - 1] === BACKSLASH) end++;
    let piece: Buffer | undefined = text.subarray(pos, end);
    pos = end;
    if (piece.includes(BACKSLASH)) piece = unescapeJson(piece);
    if (piece !== undefined && carry.length > 0) piece = Buffer.concat([carry, piece]);
    const last = pos === text.length;
    const whole = piece === undefined ? 0 : piece.length - (piece.length % 4);
    if (piece === undefined || (last && whole !== piece.length)) {
      yield undefined;
      return;
    }
    carry = Buffer.from(piece.subarray(whole));
    const target = into();
    const decoded = decodeQuads(piece.subarray(0, whole), last, target);
    yield decoded === undefined ? undefined : target.subarray(0, decoded);
    if (decoded === undefined) return;
  }
}

/** `piece` with `\n`, `\r` dropped and `\/` made `/`; undefined for any other escape. */
function unescapeJson(piece: Buffer): Buffer | undefined {
  const out = Buffer.allocUnsafe(piece.length);
  let size = 0;
  let from = 0;
  for (let at = piece.indexOf(BACKSLASH); at !== -1; at = piece.indexOf(BACKSLASH, from)) {
    size += piece.copy(out, size, from, at);
    const escaped = piece[at + 1];
    if (escaped === SLASH) out[size++] = SLASH;
    else if (escaped !== 0x6e && escaped !== 0x72) return undefined;
    from = at + 2;
  }
  size += piece.copy(out, size, from);
  return out.subarray(0, size);
}

/**
 * Decodes base64 quads into `into`: the byte count, or undefined when they
 * are not standard base64. Only the `last` may end in `=` padding. Node's
 * decoder skips characters that are not base64 (and stops at `=`), so fewer
 * bytes than the length promises means a stray character; it also takes the
 * URL-safe `-` and `_`, which standard base64 (Go's) does not.
 */
function decodeQuads(quads: Buffer, last: boolean, into: Buffer): number | undefined {
  if (quads.includes(0x2d) || quads.includes(0x5f)) return undefined;
  const n = quads.length;
  const pad = last && n > 0 && quads[n - 1] === 0x3d ? (quads[n - 2] === 0x3d ? 2 : 1) : 0;
  const expected = (n / 4) * 3 - pad;
  const written = into.write(quads.toString('latin1'), 0, expected, 'base64');
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
