/**
 * The original hookbot's WebSocket format: one binary message of exactly the
 * published bytes, or `topic NUL body` on a recursive subscription (one ending
 * in `/`), which receives many topics. It carries no ids and no control
 * events: a gap cannot be announced, so a live loss closes the connection
 * instead (see Session.lost).
 */
import type { Encoder } from '../subscriber.js';
import { frame } from './ws-frame.js';

export const rawEncoder: Encoder = {
  key: 'ws:raw',
  message: (m) => frame(m.body),
};

export const framedEncoder: Encoder = {
  key: 'ws:framed',
  message: (m) => frame(m.framed()),
};
