/**
 * What `hookbot sub` and `hookbot forward` share: both are thin layers over
 * `subscribe()`, with the same connection options, logging, signal handling
 * and exit codes. What each adds is what a message is *for* (print it, run a
 * command, re-deliver it) and when it counts as processed: only after that
 * work succeeded or was given up on, so the state file never runs ahead of
 * what actually happened.
 */
import { readFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { ConfigError, parseDuration } from '../server/config.js';
import { subscribe, SubscribeError, type Message, type SubscribeOptions, type Subscription } from '../client/index.js';
import { createLogger, type Logger } from '../server/log.js';
import { backoffDelay } from '../util/backoff.js';

/** Exit status for bad input (URL, token, options): distinct from a crash (1). */
export const EXIT_USAGE = 2;

export interface CommonOptions {
  token?: string;
  stateFile?: string;
  since?: string;
  pingInterval: string;
  deadline: string;
  minBackoff: string;
  maxBackoff: string;
  unsafe?: boolean;
  logLevel?: string;
}

/** An option with its default shown as typed (commander would quote it). */
export function withDefault(flags: string, help: string, value: string): Option {
  return new Option(flags, help).default(value, value);
}

export function commonOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--token <token>', 'token, sent as Bearer (default: the URL user info)').env('HOOKBOT_TOKEN'))
    .option('--state-file <file>', 'keep the last processed message id here and resume from it on restart')
    .option('--since <id>', 'start after this message id (0 = all retained history); a state file wins')
    .addOption(withDefault('--ping-interval <duration>', 'how often to ping the server', '10s'))
    .addOption(withDefault('--deadline <duration>', 'reconnect when nothing (not even a pong) arrives for this long', '30s'))
    .addOption(withDefault('--min-backoff <duration>', 'first reconnect delay ceiling (exponential, full jitter)', '500ms'))
    .addOption(withDefault('--max-backoff <duration>', 'largest reconnect delay', '30s'))
    .option('--unsafe', 'send X-Hookbot-Unsafe-Is-Ok (needed for /unsafe/sub/ URLs)')
    .addOption(withDefault('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent', 'info').env('HOOKBOT_LOG_LEVEL'));
}

export type Handler = (m: Message, signal: AbortSignal, sub: Subscription) => Promise<void>;

/** Prints one line and exits: for errors that retrying will not fix. */
export function usageExit(message: string): never {
  process.stderr.write(`hookbot: ${message}\n`);
  process.exit(EXIT_USAGE);
}

export function readCa(file: string | undefined, option: string): Buffer | undefined {
  if (!file) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${option}: cannot read ${file}: ${(err as Error).message}`);
  }
}

export async function runClient(url: string, opts: CommonOptions & { ca?: string; insecure?: boolean }, makeHandler: (log: Logger) => Handler): Promise<void> {
  // stdout carries message bodies for `sub`, so logs go to stderr.
  const log = createLogger(opts.logLevel || 'info', process.stderr);
  let sub: Subscription;
  let handler: Handler;
  try {
    handler = makeHandler(log);
    const options: SubscribeOptions = {
      token: opts.token || undefined,
      stateFile: opts.stateFile,
      since: opts.since,
      pingIntervalMs: parseDuration(opts.pingInterval, '--ping-interval'),
      deadlineMs: parseDuration(opts.deadline, '--deadline'),
      minBackoffMs: parseDuration(opts.minBackoff, '--min-backoff'),
      maxBackoffMs: parseDuration(opts.maxBackoff, '--max-backoff'),
      unsafe: opts.unsafe,
      ca: readCa(opts.ca, '--ca'),
      insecure: opts.insecure,
      onMessage: (m, { signal }) => handler(m, signal, sub),
      onGap: (since) => log.warn({ since }, `gap: messages after ${since} were no longer retained by the server and were missed`),
    };
    sub = subscribe(url, options);
  } catch (err) {
    if (err instanceof SubscribeError || err instanceof ConfigError) usageExit(err.message);
    throw err;
  }

  sub.on('open', () => log.info({ url: sub.url }, 'connected'));
  sub.on('live', () => log.debug({ url: sub.url, lastId: sub.lastId }, 'live'));
  sub.on('disconnect', (d) => log.warn({ code: d.code, reason: d.reason }, 'disconnected'));
  sub.on('reconnect', (r) => log.info({ attempt: r.attempt, delayMs: r.delayMs, since: r.since }, 'reconnecting'));
  sub.on('warning', (w) => log.warn(w));

  onStopSignal((signal) => {
    log.info({ signal, lastId: sub.lastId }, 'stopping after the current message');
    void sub.close();
  });

  try {
    await sub.closed;
  } catch (err) {
    if (err instanceof SubscribeError) usageExit(err.message);
    process.stderr.write(`hookbot: ${(err as Error).message}\n`);
    process.exit(1);
  }
  log.flush();
  process.exit(0);
}

/**
 * SIGINT/SIGTERM: the first asks a long-running command to stop after what it
 * is doing; a second means the user will not wait, and exits 130 at once.
 */
export function onStopSignal(stop: (signal: string) => void): void {
  let stopping = false;
  const handle = (signal: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    stop(signal);
  };
  process.on('SIGINT', () => handle('SIGINT'));
  process.on('SIGTERM', () => handle('SIGTERM'));
}

export function eventOf(m: Message): string {
  return m.headers['x-github-event'] ?? m.headers['x-gitlab-event'] ?? '';
}

/** Retry delay: exponential, at least half its ceiling, so retries never bunch up at zero. */
export function retryDelay(attempt: number, baseMs: number): number {
  return backoffDelay(attempt, { minMs: baseMs, maxMs: 30_000, jitter: 0.5 });
}

/** Resolves after ms, or rejects with `stopped()` (default: Error('aborted')) as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal, stopped: () => Error = () => new Error('aborted')): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(stopped());
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(stopped());
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
