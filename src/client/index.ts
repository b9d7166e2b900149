/**
 * `hookbot/client`: the subscribing library, for programs behind firewalls.
 * It imports nothing of the server, so it loads only `ws`.
 *
 * ```ts
 * import { subscribe } from 'hookbot/client';
 * for await (const m of subscribe('wss://TOKEN@hookbot.example.com/sub/deploys/')) console.log(m.topic, m.body.toString());
 * ```
 */
export { Message, compareIds, isMessageId, type Headers, type MessageJSON } from '../protocol/message.js';
export { backoffDelay, type Backoff } from '../util/backoff.js';
export { readStateFile, writeStateFile } from './state-file.js';
export {
  subscribe,
  Subscription,
  SUBPROTOCOL,
  type DisconnectInfo,
  type SubscribeOptions,
  type SubscriptionEvents,
} from './subscription.js';
export { parseSubscribeUrl, redactUrl, SubscribeError, type ParsedSubscribeUrl } from './url.js';
