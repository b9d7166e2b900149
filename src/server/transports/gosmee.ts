/**
 * gosmee's event-stream format, as its client reads it from
 * `GET <channel>?stream=<id>` (v0.22, with a `gosmee` User-Agent) or
 * `GET <base>/events/<id>` (current clients):
 *
 *     id: <when the stream started>    (only on a stream that starts live)
 *     data: ready
 *
 *     id: <message id>
 *     data: {<lower-cased headers>,"bodyB":"<base64 of the raw body>","timestamp":"<ms>"}
 *
 * Keys sorted, as gosmee's own server (Go maps) writes them; `timestamp` is a
 * string. The client decodes `bodyB` and forwards exactly the posted bytes,
 * so signatures verify at the target whatever the body is. History missed by
 * a resume is announced as `event: gosmee-gap`, the newer gosmee servers'
 * event (older clients find no header in it and forward nothing); keepalives
 * are comments, which every client skips.
 */
import { CHANNEL_QUERY_HEADER } from '../../protocol/channels.js';
import type { Message } from '../../protocol/message.js';
import type { Encoder } from '../subscriber.js';
import { readyEvent } from './smee.js';

/**
 * Keys the format uses, and `body`/`bodyb`, which gosmee's decoder (Go's
 * case-insensitive field match) would take for the body.
 */
const OWN_KEYS = new Set(['body', 'bodyb', 'timestamp', 'content-length', CHANNEL_QUERY_HEADER]);

const byKey = (a: [string, string], b: [string, string]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** The `data:` object of one message. */
export function gosmeeData(m: Message): string {
  const fields: Array<[string, string]> = [];
  const headers = m.headers;
  for (const name in headers) if (!OWN_KEYS.has(name)) fields.push([name, headers[name]]);
  // content-length also keeps a message with no other header from looking empty, which current clients treat as fatal.
  fields.push(['bodyB', m.body.toString('base64')], ['content-length', String(m.body.length)], ['timestamp', String(m.time)]);
  fields.sort(byKey);
  let out = '';
  for (const [name, value] of fields) out += `${out ? ',' : ''}${JSON.stringify(name)}:${JSON.stringify(value)}`;
  return `{${out}}`;
}

export const gosmeeEncoder: Encoder = {
  key: 'sse:gosmee',
  message: (m) => Buffer.from(`id: ${m.id}\ndata: ${gosmeeData(m)}\n\n`),
  start: readyEvent('data: ready\n\n'),
  gap: (since) => Buffer.from(`event: gosmee-gap\ndata: ${JSON.stringify({ error: 'missed_history', requested_id: since })}\n\n`),
  ping: Buffer.from(': ping\n\n'),
};
