/**
 * hookbot's Server-Sent Events format. Each message is one event:
 *
 *     id: <message id>
 *     event: <topic>              (base64:<topic> when data is base64)
 *     data: <body line 1>
 *     data: <body line 2>
 *
 * SSE cannot carry a CR inside `data:` (a parser treats CR, LF and CRLF alike
 * as line ends) nor bytes that are not UTF-8, so a body that is not UTF-8 text
 * or that contains a CR is sent as one base64 `data:` line under
 * `event: base64:<topic>`. Everything else is split on LF; a client joins the
 * `data:` lines with LF and gets the body back byte for byte. An incomplete
 * replay is `event: gap` with `data: {"since":"<id>"}`.
 */
import { isUtf8Text, type Message } from '../../protocol/message.js';
import type { Encoder } from '../subscriber.js';

const CR = 0x0d;

/** How long an EventSource waits before reconnecting; sent once at the start of every stream. */
export const RETRY_MS = 2000;

/** One complete SSE event for a message. */
export function sseEvent(m: Message): Buffer {
  const body = m.body;
  if (isUtf8Text(body) && !body.includes(CR)) {
    const text = body.toString('utf8');
    // A `data: ` line per LF-separated line; an empty body is one empty data line.
    return Buffer.from(`id: ${m.id}\nevent: ${m.topic}\ndata: ${text.replaceAll('\n', '\ndata: ')}\n\n`);
  }
  return Buffer.from(`id: ${m.id}\nevent: base64:${m.topic}\ndata: ${body.toString('base64')}\n\n`);
}

export const sseEncoder: Encoder = {
  key: 'sse',
  message: sseEvent,
  preamble: Buffer.from(`retry: ${RETRY_MS}\n\n`),
  gap: (since) => Buffer.from(`event: gap\ndata: ${JSON.stringify({ since })}\n\n`),
  ping: Buffer.from(': ping\n\n'),
};
