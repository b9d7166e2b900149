/** The public API: run a server in-process, or subscribe as a client. */
export { startServer, type HookbotServer } from './server/server.js';
export { resolveServeConfig, ConfigError, type Config } from './server/config.js';
export { Broker, type Subscriber } from './server/broker.js';
export { MemoryBackend } from './server/backends/memory.js';
export type { Backend, Retention, HistoryResult } from './server/backends/backend.js';
export { Message, compareIds, isMessageId, type Headers, type MessageJSON } from './protocol/message.js';
export { makeToken, TokenVerifier } from './protocol/tokens.js';
export {
  subscribe,
  Subscription,
  SubscribeError,
  parseSubscribeUrl,
  readStateFile,
  writeStateFile,
  type SubscribeOptions,
  type SubscriptionEvents,
  type DisconnectInfo,
} from './client/index.js';
