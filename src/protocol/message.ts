/**
 * A published message and its ids.
 *
 * Ids look like Redis stream ids, `<ms>-<seq>`: time-based so that they keep
 * increasing across restarts (a client's saved id never hides newer messages),
 * and totally ordered across topics so a recursive subscription can resume.
 */

import { isUtf8 } from 'node:buffer';
import { HttpError, Status } from './errors.js';

export type Headers = Record<string, string>;

/** The WebSocket subprotocol whose frames are Message.toJSON() envelopes (and gap/live events). */
export const SUBPROTOCOL = 'hookbot.v1';

export class Message {
  readonly id: string;
  /** As published: `foo/bar`, or `/unsafe/foo/bar` for unsafe ones. */
  readonly topic: string;
  /** Kept request headers, lower-case names. */
  readonly headers: Headers;
  readonly body: Buffer;
  /** Milliseconds since the epoch when the message was accepted. */
  readonly time: number;
  // Encodings are made once per message and shared by every subscriber: a
  // publish to 1000 subscribers must not serialise 1000 times. A message
  // rarely needs more than one or two, so a flat key/value list beats a Map.
  #encoded: unknown[] | undefined;

  constructor(id: string, topic: string, headers: Headers, body: Buffer, time = idTime(id)) {
    this.id = id;
    this.topic = topic;
    this.headers = headers;
    this.body = body;
    this.time = time;
  }

  /** Memoise one encoding of this message under `key` (e.g. a WebSocket frame). */
  encoded<T>(key: string, make: (m: Message) => T): T {
    const cache = (this.#encoded ??= []);
    for (let i = 0; i < cache.length; i += 2) if (cache[i] === key) return cache[i + 1] as T;
    const value = make(this);
    cache.push(key, value);
    return value;
  }

  /** `topic NUL body`, what a recursive subscriber receives. */
  framed(): Buffer {
    return this.encoded('framed', (m) => {
      const topicLength = Buffer.byteLength(m.topic);
      const out = Buffer.allocUnsafe(topicLength + 1 + m.body.length);
      out.write(m.topic, 0);
      out[topicLength] = 0;
      m.body.copy(out, topicLength + 1);
      return out;
    });
  }

  /** The JSON envelope of the `hookbot.v1` protocol and `--json` output. */
  toJSON(): MessageJSON {
    const text = isUtf8Text(this.body);
    return {
      type: 'message',
      id: this.id,
      topic: this.topic,
      time: this.time,
      headers: this.headers,
      ...(text ? { body: this.body.toString('utf8') } : { body: this.body.toString('base64'), encoding: 'base64' as const }),
    };
  }

  static fromJSON(json: MessageJSON): Message {
    const body = json.encoding === 'base64' ? Buffer.from(json.body, 'base64') : Buffer.from(json.body, 'utf8');
    return new Message(json.id, json.topic, json.headers ?? {}, body, json.time);
  }
}

export interface MessageJSON {
  type: 'message';
  id: string;
  topic: string;
  time: number;
  headers: Headers;
  body: string;
  encoding?: 'base64';
}

const ID_RE = /^(\d{1,16})-(\d{1,16})$/;

export function isMessageId(id: string): boolean {
  return ID_RE.test(id);
}

/**
 * A resume point as a client gives it (`?since=`, `Last-Event-ID`, ...):
 * undefined when absent or empty, `0-0` for `0` (everything retained), else
 * the id. A malformed one is a 400 naming where it came from.
 */
export function parseSince(value: string | null | undefined, source = 'since'): string | undefined {
  if (value === null || value === undefined || value === '') return undefined;
  if (value === '0') return '0-0';
  if (!isMessageId(value)) {
    throw new HttpError(Status.BAD_REQUEST, `${source} must be a message id such as 1700000000000-0 (or 0 for all history), got ${JSON.stringify(value.slice(0, 64))}`);
  }
  return value;
}

/** Orders ids; both must satisfy isMessageId. */
export function compareIds(a: string, b: string): number {
  const da = a.indexOf('-');
  const db = b.indexOf('-');
  const ma = Number(a.slice(0, da));
  const mb = Number(b.slice(0, db));
  if (ma !== mb) return ma < mb ? -1 : 1;
  const sa = Number(a.slice(da + 1));
  const sb = Number(b.slice(db + 1));
  return sa === sb ? 0 : sa < sb ? -1 : 1;
}

export function idTime(id: string): number {
  return Number(id.slice(0, id.indexOf('-')));
}

/** Hands out strictly increasing ids for one process. */
export class IdGenerator {
  #ms = 0;
  #seq = 0;

  /**
   * With `afterMs`, every id is in a later millisecond: ids at or before it
   * were given out by someone else (an earlier process), and ours exceed them
   * even if we started within the same millisecond.
   */
  constructor(afterMs?: number) {
    if (afterMs !== undefined) {
      this.#ms = afterMs + 1;
      this.#seq = -1;
    }
  }

  next(now = Date.now()): string {
    if (now > this.#ms) {
      this.#ms = now;
      this.#seq = 0;
    } else {
      this.#seq++;
    }
    return `${this.#ms}-${this.#seq}`;
  }
}

/** True when `buf` is valid UTF-8 with no NUL or other C0 control except tab/newline/CR. */
export function isUtf8Text(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return false;
  }
  return isUtf8(buf);
}
