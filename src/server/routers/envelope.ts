/**
 * The `?extra-metadata=<provider>` envelope: a flat JSON object of strings,
 * `{"Delivery","Event","Payload",...}`, whose Payload is the standard base64
 * of the webhook body. The github form is byte-identical to the original's Go
 * `json.Marshal(map[string]interface{}{...})`: keys sorted, `<>&` escaped.
 *
 * Neither direction does per-byte JavaScript work on the payload, which is
 * most of an envelope's bytes (up to --max-body, and attacker-chosen on an
 * unsafe feed): building writes the base64 straight into the output buffer;
 * locating reads the small fields from both ends and leaves the Payload
 * where it is, unscanned and encoded, so nothing is decoded or parsed before
 * a router has checked the delivery's signature.
 */
import { goString } from './router.js';

/** Request headers as node gives them (lower-case names). */
export type RequestHeaders = Readonly<Record<string, string | string[] | undefined>>;

/** Gets the request's own headers: gitlab's Delivery is Idempotency-Key, which is not a kept header. */
export type EnvelopeBuilder = (headers: RequestHeaders, body: Buffer) => Buffer;

export const PAYLOAD_FIELD = 'Payload';

// A multiple of 3, so every chunk but the last encodes to whole base64 quads,
// and large enough that its 1 MiB of base64 is an external string, outside
// the V8 heap (see payload.ts: small strings fill the young generation and
// get request bodies in flight promoted).
const ENCODE_CHUNK = 768 * 1024;

/**
 * Go-style JSON of `fields` plus `"Payload"`: keys sorted. `payload` is the
 * body to encode, or (`encoded`) base64 bytes to copy as they are, which is
 * how a router re-wraps a located Payload without decoding it.
 */
export function goEnvelope(fields: Readonly<Record<string, string>>, payload: Buffer, encoded = false): Buffer {
  const keys = [...Object.keys(fields).filter((k) => k !== PAYLOAD_FIELD), PAYLOAD_FIELD].sort();
  const at = keys.indexOf(PAYLOAD_FIELD);
  const pair = (k: string) => `${goString(k)}:${goString(fields[k])}`;
  const head = Buffer.from(`{${[...keys.slice(0, at).map(pair), `${goString(PAYLOAD_FIELD)}:"`].join(',')}`, 'utf8');
  const tail = Buffer.from(`"${keys.slice(at + 1).map((k) => `,${pair(k)}`).join('')}}`, 'utf8');
  const size = encoded ? payload.length : 4 * Math.ceil(payload.length / 3);
  const out = Buffer.allocUnsafe(head.length + size + tail.length);
  let offset = head.copy(out, 0);
  if (encoded) {
    offset += payload.copy(out, offset);
  } else {
    // Chunked, so no string as large as the body is ever made.
    for (let i = 0; i < payload.length; i += ENCODE_CHUNK) {
      offset += out.write(payload.toString('base64', i, Math.min(i + ENCODE_CHUNK, payload.length)), offset, 'latin1');
    }
  }
  tail.copy(out, offset);
  return out;
}

/** An envelope as located in a feed message: its small fields decoded, its Payload only found. */
export interface LocatedEnvelope {
  /** Every field but Payload, decoded (duplicate keys: the last wins, as JSON.parse). */
  fields: ReadonlyMap<string, string>;
  /**
   * Where the Payload string's contents lie in the body; undefined without
   * one. Not checked here: Payload.base64 rejects anything in it that is not
   * base64 (a quote, a backslash) while decoding, chunk by chunk.
   */
  payload?: { start: number; end: number };
}

/**
 * Longest key or non-Payload field an envelope may have: they come from
 * request headers, which node bounds at 16 KiB. Also bounds every scan made
 * here, so locating costs O(fields) whatever the body's size.
 */
const MAX_FIELD = 64 * 1024;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * Locates the envelope in `body` if it is one: a JSON object whose values are
 * all strings. Returns undefined for anything else (a raw webhook payload, an
 * array, invalid JSON). The small fields before the Payload are read from the
 * start and those after it from the end, so the Payload, which is most of the
 * bytes, is not even scanned: each step looks at most MAX_FIELD bytes ahead.
 */
export function locateEnvelope(body: Buffer): LocatedEnvelope | undefined {
  const fields = new Map<string, string>();
  let i = skipSpace(body, 0);
  if (body[i] !== 0x7b) return undefined;
  i = skipSpace(body, i + 1);
  if (body[i] === 0x7d) return skipSpace(body, i + 1) === body.length ? { fields } : undefined;
  for (;;) {
    const name = readString(body, i);
    if (name === undefined) return undefined;
    i = skipSpace(body, name.end + 1);
    if (body[i] !== 0x3a) return undefined;
    i = skipSpace(body, i + 1);
    if (name.value === PAYLOAD_FIELD) return locateTail(body, i, fields);
    const value = readString(body, i);
    if (value === undefined) return undefined;
    fields.set(name.value, value.value);
    i = skipSpace(body, value.end + 1);
    if (body[i] === 0x2c) {
      i = skipSpace(body, i + 1);
      continue;
    }
    if (body[i] !== 0x7d) return undefined;
    return skipSpace(body, i + 1) === body.length ? { fields } : undefined;
  }
}

/**
 * The rest of an envelope whose Payload value opens at `open`: the fields
 * after it, read backwards from the closing brace, until the pair whose value
 * is the Payload's.
 */
function locateTail(body: Buffer, open: number, fields: Map<string, string>): LocatedEnvelope | undefined {
  if (body[open] !== QUOTE) return undefined;
  const tail: Array<[string, string]> = [];
  let j = skipSpaceBack(body, body.length - 1);
  if (body[j] !== 0x7d) return undefined;
  j = skipSpaceBack(body, j - 1);
  for (;;) {
    if (j <= open || body[j] !== QUOTE) return undefined;
    const valueOpen = openingQuote(body, j);
    // Not within MAX_FIELD, or the opening quote itself: this is the Payload's value.
    if (valueOpen === undefined || valueOpen <= open) break;
    let k = skipSpaceBack(body, valueOpen - 1);
    if (body[k] !== 0x3a) return undefined;
    k = skipSpaceBack(body, k - 1);
    const keyOpen = body[k] === QUOTE ? openingQuote(body, k) : undefined;
    if (keyOpen === undefined || keyOpen <= open) return undefined;
    const name = decodeString(body, keyOpen, k);
    const value = decodeString(body, valueOpen, j);
    if (name === undefined || value === undefined) return undefined;
    // A second Payload: not an envelope hookbot (or the original) would write.
    if (name === PAYLOAD_FIELD) return undefined;
    tail.push([name, value]);
    j = skipSpaceBack(body, keyOpen - 1);
    if (body[j] !== 0x2c) return undefined;
    j = skipSpaceBack(body, j - 1);
  }
  // Applied in document order, so that (as with JSON.parse) a later duplicate wins.
  for (let t = tail.length - 1; t >= 0; t--) fields.set(tail[t][0], tail[t][1]);
  return { fields, payload: { start: open + 1, end: j } };
}

/** Whether `body` starts (after JSON white space) with `{`: the shape of a raw webhook payload. */
export function looksLikeObject(body: Buffer): boolean {
  return body[skipSpace(body, 0)] === 0x7b;
}

function isSpace(c: number | undefined): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

// White space runs are bounded too: past MAX_FIELD of it the body is no envelope.
function skipSpace(body: Buffer, i: number): number {
  const limit = Math.min(body.length, i + MAX_FIELD);
  while (i < limit && isSpace(body[i])) i++;
  return i;
}

function skipSpaceBack(body: Buffer, i: number): number {
  const limit = Math.max(-1, i - MAX_FIELD);
  while (i > limit && isSpace(body[i])) i--;
  return i;
}

/** Whether the quote at `q` ends (or starts) a string: an even number of backslashes precede it. */
function unescaped(body: Buffer, q: number, from: number): boolean {
  let k = q - 1;
  while (k >= from && body[k] === BACKSLASH) k--;
  return (q - 1 - k) % 2 === 0;
}

/** The JSON string opening at `open`, decoded, and its closing quote; undefined past MAX_FIELD. */
function readString(body: Buffer, open: number): { value: string; end: number } | undefined {
  if (body[open] !== QUOTE) return undefined;
  // A view, so that a string with no end in sight costs MAX_FIELD, not the body.
  const window = body.subarray(open, open + 1 + MAX_FIELD);
  for (let q = 0; ; ) {
    q = window.indexOf(QUOTE, q + 1);
    if (q === -1) return undefined;
    if (unescaped(body, open + q, open + 1)) {
      const value = decodeString(body, open, open + q);
      return value === undefined ? undefined : { value, end: open + q };
    }
  }
}

/**
 * The opening quote of the JSON string whose closing quote is at `close`:
 * the nearest quote before it that no backslash escapes (inside a string
 * every quote is escaped). Undefined if there is none within MAX_FIELD.
 */
function openingQuote(body: Buffer, close: number): number | undefined {
  const limit = Math.max(0, close - 1 - MAX_FIELD);
  // A view: Buffer#lastIndexOf would otherwise scan back to the start of the body.
  const window = body.subarray(limit, close);
  for (let q = window.length; ; ) {
    q = q === 0 ? -1 : window.lastIndexOf(QUOTE, q - 1);
    if (q === -1) return undefined;
    if (unescaped(body, limit + q, limit)) return limit + q;
  }
}

/** The JSON string `body[open..close]` (quotes included), decoded; undefined if it is not valid JSON. */
function decodeString(body: Buffer, open: number, close: number): string | undefined {
  try {
    const value: unknown = JSON.parse(body.toString('utf8', open, close + 1));
    return typeof value === 'string' ? value : undefined;
  } catch {
    return undefined;
  }
}
