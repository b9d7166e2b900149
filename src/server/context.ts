/**
 * What every transport (HTTP, WebSocket, SSE) shares, built once by the server.
 * Kept in its own module so transports depend on it and not on the server.
 */
import type { ChannelIds } from '../protocol/channels.js';
import type { TokenVerifier } from '../protocol/tokens.js';
import type { Broker } from './broker.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import type { Limits } from './ops/limits.js';
import type { Metrics } from './ops/metrics.js';

export interface Context {
  readonly config: Config;
  readonly broker: Broker;
  readonly tokens: TokenVerifier;
  /** With serve --smee: mints and verifies channel ids (the channel URL is the credential). */
  readonly channels?: ChannelIds;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly limits: Limits;
  /** Set when shutdown starts: new publishes and subscriptions are refused. */
  shuttingDown: boolean;
}
