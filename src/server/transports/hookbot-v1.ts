/**
 * The `hookbot.v1` WebSocket subprotocol: text frames of one JSON object each,
 * `{"type":"message","id","topic","time","headers","body"[,"encoding":"base64"]}`,
 * `{"type":"gap","since"}` before an incomplete replay (or when live delivery
 * missed messages) and `{"type":"live"}` once the replay is done.
 */
import { SUBPROTOCOL } from '../../protocol/message.js';
import type { Encoder } from '../subscriber.js';
import { frame, OPCODE_TEXT } from './ws-frame.js';

export { SUBPROTOCOL };

const json = (value: unknown) => frame(Buffer.from(JSON.stringify(value)), OPCODE_TEXT);

export const hookbotV1Encoder: Encoder = {
  key: 'ws:v1',
  message: (m) => json(m.toJSON()),
  gap: (since) => json({ type: 'gap', since }),
  live: json({ type: 'live' }),
};
