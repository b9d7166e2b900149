/**
 * `hookbot sub` and `hookbot forward`: the subscriber side for people behind
 * firewalls. Both are thin layers over `subscribe()`; what they add is what a
 * message is *for* (print it, run a command, re-deliver it) and when it counts
 * as processed: only after that work succeeded or was given up on, so the
 * state file never runs ahead of what actually happened.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Command } from 'commander';
import { ConfigError, parseCount, parseDuration } from '../server/config.js';
import { subscribe, SubscribeError, type Message, type SubscribeOptions, type Subscription } from '../client/index.js';
import { createLogger, type Logger } from '../server/log.js';
import { backoffDelay } from '../util/backoff.js';

/** Exit status for bad input (URL, token, options): distinct from a crash (1). */
export const EXIT_USAGE = 2;

interface CommonOptions {
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

interface SubOptions extends CommonOptions {
  json?: boolean;
  exec?: string;
  retry: string;
  retryDelay: string;
  ca?: string;
  insecure?: boolean;
}

interface ForwardOptions extends CommonOptions {
  to: string;
  retries: string;
  retryDelay: string;
  timeout: string;
  ca?: string;
  insecure?: boolean;
  serverCa?: string;
  serverInsecure?: boolean;
}

function commonOptions(cmd: Command): Command {
  return cmd
    .option('--token <token>', 'token (sent as Bearer; env HOOKBOT_TOKEN); default: the URL user info')
    .option('--state-file <file>', 'keep the last processed message id here and resume from it on restart')
    .option('--since <id>', 'start after this message id (0 = all retained history); a state file wins')
    .option('--ping-interval <duration>', 'how often to ping the server', '10s')
    .option('--deadline <duration>', 'reconnect when nothing (not even a pong) arrives for this long', '30s')
    .option('--min-backoff <duration>', 'first reconnect delay ceiling (exponential, full jitter)', '500ms')
    .option('--max-backoff <duration>', 'largest reconnect delay', '30s')
    .option('--unsafe', 'send X-Hookbot-Unsafe-Is-Ok (needed for /unsafe/sub/ URLs)')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent (env HOOKBOT_LOG_LEVEL)');
}

export function registerClientCommands(program: Command): void {
  commonOptions(
    program
      .command('sub')
      .description('subscribe and print each message (or run --exec for each)')
      .argument('<url>', 'ws[s]://TOKEN@host/sub/<topic> (http[s]:// also accepted)'),
  )
    .option('--json', 'one JSON object per line: id, topic, time, headers, body (+ "encoding":"base64" when binary)')
    .option('--exec <command>', 'run this shell command per message, body on stdin, one at a time, in order')
    .option('--retry <n>', 'with --exec: retries after a non-zero exit', '0')
    .option('--retry-delay <duration>', 'first retry delay (doubles, with jitter, up to 30s)', '1s')
    .option('--ca <file>', 'trust this CA (PEM) for a wss:// server')
    .option('--insecure', 'do not verify the wss:// server certificate')
    .action((url: string, opts: SubOptions) => runClient(url, opts, (log) => subHandler(opts, log)));

  commonOptions(
    program
      .command('forward')
      .description('re-deliver each message as the original HTTP request to a local URL')
      .argument('<url>', 'ws[s]://TOKEN@host/sub/<topic> (http[s]:// also accepted)'),
  )
    .requiredOption('--to <url>', 'where to POST each message, e.g. http://localhost:3000/webhook')
    .option('--retries <n>', 'retries on connection errors, timeouts and 5xx before giving up on a message', '5')
    .option('--retry-delay <duration>', 'first retry delay (doubles, with jitter, up to 30s)', '1s')
    .option('--timeout <duration>', 'time limit for one delivery attempt', '10s')
    .option('--ca <file>', 'trust this CA (PEM) for an https --to target')
    .option('--insecure', 'do not verify the --to target certificate (self-signed local HTTPS)')
    .option('--server-ca <file>', 'trust this CA (PEM) for a wss:// hookbot server')
    .option('--server-insecure', 'do not verify the wss:// hookbot server certificate')
    .action((url: string, opts: ForwardOptions) =>
      runClient(url, { ...opts, ca: opts.serverCa, insecure: opts.serverInsecure }, (log) => forwardHandler(opts, log)),
    );
}

type Handler = (m: Message, signal: AbortSignal, sub: Subscription) => Promise<void>;

/** Prints one line and exits: for errors that retrying will not fix. */
function usageExit(message: string): never {
  process.stderr.write(`hookbot: ${message}\n`);
  process.exit(EXIT_USAGE);
}

function readCa(file: string | undefined, option: string): Buffer | undefined {
  if (!file) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${option}: cannot read ${file}: ${(err as Error).message}`);
  }
}

async function runClient(url: string, opts: CommonOptions & { ca?: string; insecure?: boolean }, makeHandler: (log: Logger) => Handler): Promise<void> {
  // stdout carries message bodies for `sub`, so logs go to stderr.
  const log = createLogger(opts.logLevel ?? process.env.HOOKBOT_LOG_LEVEL ?? 'info', process.stderr);
  let sub: Subscription;
  let handler: Handler;
  try {
    handler = makeHandler(log);
    const options: SubscribeOptions = {
      token: opts.token ?? (process.env.HOOKBOT_TOKEN || undefined),
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

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      // A second signal: the user does not want to wait for the in-flight message.
      process.exit(130);
    }
    stopping = true;
    log.info({ signal, lastId: sub.lastId }, 'stopping after the current message');
    void sub.close();
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

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

function eventOf(m: Message): string {
  return m.headers['x-github-event'] ?? m.headers['x-gitlab-event'] ?? '';
}

/** Retry delay: exponential, at least half its ceiling, so retries never bunch up at zero. */
function retryDelay(attempt: number, baseMs: number): number {
  return backoffDelay(attempt, { minMs: baseMs, maxMs: 30_000, jitter: 0.5 });
}

/** Resolves after ms, or rejects as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Error('aborted'));
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Error('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function subHandler(opts: SubOptions, log: Logger): Handler {
  const retries = parseCount(opts.retry, '--retry');
  const baseDelay = parseDuration(opts.retryDelay, '--retry-delay');
  const command = opts.exec;
  if (command !== undefined) {
    if (!command.trim()) throw new ConfigError('--exec needs a command');
    return async (m, signal) => {
      for (let attempt = 0; ; attempt++) {
        const started = Date.now();
        const result = await runCommand(command, m);
        const ms = Date.now() - started;
        if (result === 0) {
          log.info({ id: m.id, topic: m.topic, event: eventOf(m) || undefined, ms }, `exec ${m.id} ok in ${ms} ms`);
          return;
        }
        const failure = typeof result === 'number' ? `exit code ${result}` : result;
        if (attempt >= retries) {
          log.error({ id: m.id, topic: m.topic, failure, attempts: attempt + 1 }, `exec ${m.id} failed (${failure}); giving up on it`);
          return;
        }
        const delay = retryDelay(attempt, baseDelay);
        log.warn({ id: m.id, topic: m.topic, failure, attempt: attempt + 1, retryInMs: delay }, `exec ${m.id} failed (${failure}); retrying`);
        // Stopping mid-backoff leaves the message unprocessed: it runs again on restart.
        await sleep(delay, signal);
      }
    };
  }

  const out = process.stdout;
  let broken = false;
  out.on('error', (err: NodeJS.ErrnoException) => {
    // A closed pipe (`hookbot sub ... | head`) is a normal way to stop.
    broken = true;
    if (err.code !== 'EPIPE') log.error({ err: err.message }, 'stdout failed');
    process.exit(err.code === 'EPIPE' ? 0 : 1);
  });
  return async (m, _signal, sub) => {
    if (broken) return;
    let chunk: Buffer;
    if (opts.json) {
      chunk = Buffer.from(JSON.stringify(m.toJSON()) + '\n');
    } else {
      const body = m.body;
      const parts = sub.recursive ? [Buffer.from(`${m.topic}\t`), body] : [body];
      if (body.length === 0 || body[body.length - 1] !== 0x0a) parts.push(NEWLINE);
      chunk = Buffer.concat(parts);
    }
    // Waiting for drain keeps memory bounded and "processed" honest.
    if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', resolve));
  };
}

const NEWLINE = Buffer.from('\n');

/** Runs the command with the body on stdin; 0, another exit code, or a description of how it died. */
function runCommand(command: string, m: Message): Promise<number | string> {
  return new Promise((resolve) => {
    const child = spawn(command, {
      shell: true,
      stdio: ['pipe', 'inherit', 'inherit'],
      env: { ...process.env, HOOKBOT_TOPIC: m.topic, HOOKBOT_ID: m.id, HOOKBOT_EVENT: eventOf(m) },
    });
    // A command that does not read its stdin closes the pipe early; that is fine.
    child.stdin.on('error', () => {});
    child.stdin.end(m.body);
    child.on('error', (err) => resolve(`cannot run: ${err.message}`));
    child.on('close', (code, signal) => resolve(code ?? `killed by ${signal}`));
  });
}

/** Headers that describe one hop, not the message; the HTTP client sets its own. */
const HOP_HEADERS = new Set([
  'host',
  'content-length',
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'authorization',
]);

export function forwardHeaders(m: Message): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(m.headers)) if (!HOP_HEADERS.has(name.toLowerCase())) headers[name] = value;
  headers['content-length'] = String(m.body.length);
  headers['x-hookbot-message-id'] = m.id;
  return headers;
}

interface Attempt {
  status?: number;
  error?: string;
}

function forwardHandler(opts: ForwardOptions, log: Logger): Handler {
  let target: URL;
  try {
    target = new URL(opts.to);
  } catch {
    throw new ConfigError(`--to must be an http:// or https:// URL, got ${JSON.stringify(opts.to)}`);
  }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') {
    throw new ConfigError(`--to must be an http:// or https:// URL, got ${JSON.stringify(opts.to)}`);
  }
  const retries = parseCount(opts.retries, '--retries');
  const timeoutMs = parseDuration(opts.timeout, '--timeout');
  const baseDelay = parseDuration(opts.retryDelay, '--retry-delay');
  // A private Agent rather than global fetch, so --ca and --insecure apply to this target only.
  const agent =
    target.protocol === 'https:'
      ? new https.Agent({ keepAlive: true, ca: readCa(opts.ca, '--ca'), rejectUnauthorized: !opts.insecure })
      : new http.Agent({ keepAlive: true });
  const shown = target.origin + target.pathname;

  return async (m, signal) => {
    const event = eventOf(m) || undefined;
    for (let attempt = 0; ; attempt++) {
      const started = Date.now();
      const r = await post(target, agent, m, timeoutMs);
      const ms = Date.now() - started;
      const fields = { id: m.id, topic: m.topic, event, status: r.status, ms, attempt: attempt + 1 };
      if (r.status !== undefined && r.status < 300) {
        log.info(fields, `delivered ${m.id} ${event ?? '-'} → ${r.status} in ${ms} ms`);
        return;
      }
      const retryable = r.status === undefined || r.status >= 500;
      const what = r.status !== undefined ? `HTTP ${r.status}` : r.error;
      if (!retryable) {
        log.warn(fields, `delivery of ${m.id} to ${shown} refused (${what}); not retried`);
        return;
      }
      if (attempt >= retries) {
        log.error({ ...fields, error: r.error }, `delivery of ${m.id} to ${shown} failed (${what}) after ${attempt + 1} attempts; giving up on it`);
        return;
      }
      const delay = retryDelay(attempt, baseDelay);
      log.warn({ ...fields, error: r.error, retryInMs: delay }, `delivery of ${m.id} failed (${what}); retrying`);
      await sleep(delay, signal);
    }
  };
}

/** One delivery attempt; never rejects. */
function post(target: URL, agent: http.Agent, m: Message, timeoutMs: number): Promise<Attempt> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (a: Attempt) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(a);
    };
    let req: http.ClientRequest;
    try {
      const request = target.protocol === 'https:' ? https.request : http.request;
      req = request(target, { method: 'POST', agent, headers: forwardHeaders(m) });
    } catch (err) {
      // An invalid header value: sending it again will not help.
      return resolve({ status: 400, error: (err as Error).message });
    }
    const timer = setTimeout(() => {
      req.destroy(new Error(`no response within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      // Drain the body so the keep-alive connection can be reused.
      res.resume();
      res.on('end', () => done({ status }));
      res.on('error', () => done({ status }));
    });
    req.on('error', (err) => done({ error: err.message }));
    req.end(m.body);
  });
}
