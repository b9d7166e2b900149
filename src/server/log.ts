/**
 * Logs are for operators: JSON lines by default (for collectors), pretty when
 * a person watches a terminal. Credentials never reach a log line: the redact
 * list covers the places they could be attached, and callers log paths and
 * topics, never headers wholesale.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export const REDACT_PATHS = [
  'authorization',
  'token',
  'secret',
  'key',
  '*.authorization',
  '*.token',
  '*.secret',
  '*.key',
  'headers.authorization',
  'req.headers.authorization',
  'headers["x-hub-signature"]',
  'headers["x-hub-signature-256"]',
  'headers["x-gitlab-token"]',
];

export function createLogger(level = 'info', destination?: NodeJS.WritableStream & { isTTY?: boolean }): Logger {
  const out = destination ?? process.stdout;
  const options = { level, base: { pid: process.pid }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } };
  if (out.isTTY && !process.env.HOOKBOT_LOG_JSON) {
    return pino(options, pretty({ colorize: true, sync: true, destination: out as NodeJS.WritableStream & { fd?: number } }));
  }
  return pino(options, destination ?? pino.destination({ sync: false }));
}
