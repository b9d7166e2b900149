/**
 * The `?extra-metadata=<provider>` envelope: a flat JSON object of strings,
 * `{"Delivery","Event","Payload",...}`, whose Payload is the standard base64
 * of the webhook body. The github form is byte-identical to the original's Go
 * `json.Marshal(map[string]interface{}{...})`: keys sorted, `<>&` escaped.
 *
 * Both directions are linear and do no per-byte JavaScript work on the
 * payload, which is most of an envelope's bytes (up to --max-body and
 * attacker-chosen on an unsafe feed): building writes the base64 straight
 * into the output buffer; locating finds the Payload string with native
 * `indexOf` and leaves it encoded, so nothing is decoded or parsed before a
 * router has checked the delivery's signature.
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
   * Where the Payload string's contents lie in the body, or 'escaped' when
   * it holds a JSON escape (which base64 never needs); undefined without one.
   */
  payload?: { start: number; end: number } | 'escaped';
}

/** Longest key or non-Payload field an envelope may have: they come from request headers, which node bounds at 16 KiB. */
const MAX_FIELD = 64 * 1024;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * Locates the envelope in `body` if it is one: a JSON object whose values are
 * all strings. Returns undefined for anything else (a raw webhook payload, an
 * array, invalid JSON). Costs O(body) in native scans plus O(fields) of
 * JavaScript; the Payload string is neither copied nor decoded.
 */
export function locateEnvelope(body: Buffer): LocatedEnvelope | undefined {
  const fields = new Map<string, string>();
  let payload: LocatedEnvelope['payload'];
  let i = skipSpace(body, 0);
  if (body[i] !== 0x7b) return undefined;
  i = skipSpace(body, i + 1);
  if (body[i] === 0x7d) return skipSpace(body, i + 1) === body.length ? { fields } : undefined;
  for (;;) {
    const key = readString(body, i);
    if (key === undefined || key.end - i > MAX_FIELD) return undefined;
    const name = decodeString(body, i, key.end);
    if (name === undefined) return undefined;
    i = skipSpace(body, key.end + 1);
    if (body[i] !== 0x3a) return undefined;
    i = skipSpace(body, i + 1);
    const value = readString(body, i);
    if (value === undefined) return undefined;
    if (name === PAYLOAD_FIELD) {
      payload = value.escaped ? 'escaped' : { start: i + 1, end: value.end };
    } else {
      if (value.end - i > MAX_FIELD) return undefined;
      const text = decodeString(body, i, value.end);
      if (text === undefined) return undefined;
      fields.set(name, text);
    }
    i = skipSpace(body, value.end + 1);
    if (body[i] === 0x2c) {
      i = skipSpace(body, i + 1);
      continue;
    }
    if (body[i] !== 0x7d) return undefined;
    return skipSpace(body, i + 1) === body.length ? { fields, ...(payload !== undefined ? { payload } : {}) } : undefined;
  }
}

/** Whether `body` starts (after JSON white space) with `{`: the shape of a raw webhook payload. */
export function looksLikeObject(body: Buffer): boolean {
  return body[skipSpace(body, 0)] === 0x7b;
}

function skipSpace(body: Buffer, i: number): number {
  while (i < body.length) {
    const c = body[i];
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
    i++;
  }
  return i;
}

/**
 * The closing quote of the JSON string opening at `open`, found with native
 * scans; `escaped` when the string holds a backslash. Each quote is looked at
 * once and each backslash run before it counted once, so this is linear.
 */
function readString(body: Buffer, open: number): { end: number; escaped: boolean } | undefined {
  if (body[open] !== QUOTE) return undefined;
  const from = open + 1;
  let firstQuote = body.indexOf(QUOTE, from);
  if (firstQuote === -1) return undefined;
  const slash = body.indexOf(BACKSLASH, from);
  if (slash === -1 || slash > firstQuote) return { end: firstQuote, escaped: false };
  for (;;) {
    let k = firstQuote - 1;
    while (k >= from && body[k] === BACKSLASH) k--;
    if ((firstQuote - 1 - k) % 2 === 0) return { end: firstQuote, escaped: true };
    firstQuote = body.indexOf(QUOTE, firstQuote + 1);
    if (firstQuote === -1) return undefined;
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
