/**
 * What every transport (HTTP, WebSocket, SSE) shares, built once by the server.
 * Kept in its own module so transports depend on it and not on the server.
 */
import type { Broker } from './broker.js';
import type { Config } from './config.js';
import type { Limits } from './ops/limits.js';
import type { Logger } from './log.js';
import type { Metrics } from './ops/metrics.js';
import type { TokenVerifier } from '../protocol/tokens.js';

export interface Context {
  readonly config: Config;
  readonly broker: Broker;
  readonly tokens: TokenVerifier;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly limits: Limits;
  /** Set when shutdown starts: new publishes and subscriptions are refused. */
  shuttingDown: boolean;
}

export const UNSAFE_HEADER = 'x-hookbot-unsafe-is-ok';
export const UNSAFE_HEADER_VALUE = 'I understand the security implications';
export const UNSAFE_HEADER_ERROR = '400 Bad Request. X-Hookbot-Unsafe-Is-Ok header required.';

/** Headers kept with every message so a client can re-deliver it as the original request. */
export function keptHeaders(raw: Record<string, string | string[] | undefined>, extra: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name in raw) {
    const value = raw[name];
    if (value === undefined) continue;
    if (
      name === 'content-type' ||
      name === 'user-agent' ||
      name.startsWith('x-github-') ||
      name.startsWith('x-hub-signature') ||
      name.startsWith('x-gitlab-') ||
      extra.includes(name)
    ) {
      out[name] = Array.isArray(value) ? value.join(', ') : value;
    }
  }
  return out;
}

/** `since` as given on a subscribe URL, validated; `0` means everything retained. */
export function parseSince(value: string | null | undefined, isId: (s: string) => boolean): string | undefined | Error {
  if (value === null || value === undefined || value === '') return undefined;
  if (value === '0') return '0-0';
  if (!isId(value)) return new Error(`since must be a message id such as 1700000000000-0 (or 0 for all history), got ${JSON.stringify(value.slice(0, 64))}`);
  return value;
}
