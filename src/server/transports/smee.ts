/**
 * smee.io's event-stream format, as smee-client (and so Probot's
 * WEBHOOK_PROXY_URL) reads it from `GET <channel>` with
 * `Accept: text/event-stream`:
 *
 *     retry: 2000
 *
 *     event: ready
 *     data: {}
 *
 *     id: <message id>
 *     data: {<lower-cased headers>,"body":…,"query":{…},"timestamp":<ms>}
 *
 * smee-client turns every top-level key other than `body` and `query` into a
 * request header at its target, so the object holds the original headers and
 * exactly those three keys, nothing of ours. `body` is the parsed JSON when
 * the body is JSON (smee-client re-serialises it, so compact JSON such as
 * GitHub's survives byte for byte), else the body as a string. `ping` and
 * `ready` are named events, which smee-client ignores; they carry no `id:`,
 * since an `id:` resets the id an EventSource resumes from.
 */
import { isUtf8 } from 'node:buffer';
import { CHANNEL_QUERY_HEADER } from '../../protocol/channels.js';
import type { Message } from '../../protocol/message.js';
import type { Encoder } from '../subscriber.js';
import { RETRY_MS } from './sse-events.js';

/** Keys the format itself uses: a header of the same name would collide with them. */
const OWN_KEYS = new Set(['body', 'query', 'timestamp', 'content-length', CHANNEL_QUERY_HEADER]);

/** The body as smee.io puts it in `body`: the parsed JSON value, else a string. */
export function smeeBody(body: Buffer): string {
  const text = body.toString('utf8');
  if (body.length > 0 && isUtf8(body)) {
    try {
      return JSON.stringify(JSON.parse(text));
    } catch {
      // Not JSON: a string, as below.
    }
  }
  return JSON.stringify(text);
}

/** A raw query string as an object: `a=1&b=2&b=3` → `{"a":"1","b":["2","3"]}` (repeated keys become arrays, as express gives them). */
export function smeeQuery(raw: string | undefined): string {
  if (!raw) return '{}';
  const grouped = new Map<string, string[]>();
  for (const [name, value] of new URLSearchParams(raw)) {
    const values = grouped.get(name);
    if (values) values.push(value);
    else grouped.set(name, [value]);
  }
  let out = '';
  for (const [name, values] of grouped) out += `${out ? ',' : ''}${JSON.stringify(name)}:${JSON.stringify(values.length === 1 ? values[0] : values)}`;
  return `{${out}}`;
}

/** The `data:` object of one message (one line: JSON escapes every line break). */
export function smeeData(m: Message): string {
  let out = '{';
  const headers = m.headers;
  for (const name in headers) if (!OWN_KEYS.has(name)) out += `${JSON.stringify(name)}:${JSON.stringify(headers[name])},`;
  return `${out}"content-length":"${m.body.length}","body":${smeeBody(m.body)},"query":${smeeQuery(headers[CHANNEL_QUERY_HEADER])},"timestamp":${m.time}}`;
}

/**
 * For streams that start live: an event of only `id: <now>-0` (nothing is
 * dispatched, but an EventSource takes the id), so a client that reconnects
 * before any message arrived resumes from when it first connected.
 */
export function startedAt(since: string | undefined): Buffer | undefined {
  return since === undefined ? Buffer.from(`id: ${Date.now()}-0\n\n`) : undefined;
}

export const smeeEncoder: Encoder = {
  key: 'sse:smee',
  message: (m) => Buffer.from(`id: ${m.id}\ndata: ${smeeData(m)}\n\n`),
  preamble: Buffer.from(`retry: ${RETRY_MS}\n\nevent: ready\ndata: {}\n\n`),
  start: startedAt,
  gap: (since) => Buffer.from(`event: gap\ndata: ${JSON.stringify({ since })}\n\n`),
  ping: Buffer.from('event: ping\ndata: {}\n\n'),
};
