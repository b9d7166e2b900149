/**
 * `hookbot`: everything, the server included. A program that only
 * subscribes should import `hookbot/client`, which loads none of the server's
 * dependencies (express, ioredis, pino, prom-client, the database driver).
 */
export { startServer, type HookbotServer } from './server/server.js';
export { resolveServeConfig, ConfigError, type Config } from './server/config.js';
export { Broker, type Subscriber } from './server/broker.js';
export { MemoryBackend } from './server/backends/memory.js';
export type { Backend, Retention, HistoryResult, PublishOptions } from './server/backends/backend.js';
export { HttpError, Status, CloseCode } from './protocol/errors.js';
export { makeToken, TokenVerifier } from './protocol/tokens.js';
export * from './client/index.js';
