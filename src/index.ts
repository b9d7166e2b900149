/** The public API: run a server in-process, or subscribe as a client. */
export { startServer, type HookbotServer } from './server.js';
export { resolveServeConfig, ConfigError, type Config } from './config.js';
export { Broker, type Subscriber } from './broker.js';
export { MemoryBackend } from './backends/memory.js';
export type { Backend, Retention, HistoryResult } from './backends/backend.js';
export { Message, compareIds, isMessageId, type Headers, type MessageJSON } from './message.js';
export { makeToken, TokenVerifier } from './tokens.js';
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
} from './client.js';
