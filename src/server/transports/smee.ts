/**
 * smee.io's event-stream format, as smee-client (and so Probot's
 * WEBHOOK_PROXY_URL) reads it from `GET <channel>` with
 * `Accept: text/event-stream`:
 *
 *     retry: 2000
 *
 *     id: <when the stream started>    (only on a stream that starts live)
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
 * `ready` are named events, which smee-client ignores; `ping` and `gap`
 * carry no `id:`, which would reset the id an EventSource resumes from.
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
 * The `ready` event, as the session starts. On a stream that starts live it
 * carries `id: <now>-0`, so a client that reconnects before any message
 * arrived resumes from when it first connected instead of going live again
 * and missing what was published in between (EventSource, and smee-client
 * with it, records the id of an event it dispatches, even one it ignores).
 * A resuming stream gives no id: the client's own is its resume point.
 */
export function readyEvent(ready: string): (since: string | undefined) => Buffer {
  const resumed = Buffer.from(ready);
  return (since) => (since === undefined ? Buffer.from(`id: ${Date.now()}-0\n${ready}`) : resumed);
}

export const smeeEncoder: Encoder = {
  key: 'sse:smee',
  message: (m) => Buffer.from(`id: ${m.id}\ndata: ${smeeData(m)}\n\n`),
  preamble: Buffer.from(`retry: ${RETRY_MS}\n\n`),
  start: readyEvent('event: ready\ndata: {}\n\n'),
  gap: (since) => Buffer.from(`event: gap\ndata: ${JSON.stringify({ since })}\n\n`),
  ping: Buffer.from('event: ping\ndata: {}\n\n'),
};
