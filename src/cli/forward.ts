/**
 * `hookbot forward`: re-deliver each message as the original HTTP request
 * (headers and body bytes) to a local URL, with retries. A smee channel's
 * URL works as it is (the server takes hookbot.v1 on it, no token); its
 * messages' query strings are forwarded as smee-client forwards them.
 */
import http from 'node:http';
import https from 'node:https';
import type { Command } from 'commander';
import { ConfigError, parseCount, parseDuration } from '../server/config.js';
import type { Message } from '../client/index.js';
import { CHANNEL_QUERY_HEADER, HOP_HEADERS } from '../protocol/channels.js';
import type { Logger } from '../server/log.js';
import { commonOptions, eventOf, readCa, retryDelay, runClient, sleep, withDefault, type CommonOptions, type Handler } from './subscriber.js';

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

export function registerForward(program: Command): void {
  commonOptions(
    program
      .command('forward')
      .description('re-deliver each message as the original HTTP request to a local URL')
      .argument('<url>', 'ws[s]://TOKEN@host/sub/<topic>, or a smee channel URL (http[s]:// also accepted)'),
  )
    .requiredOption('--to <url>', 'where to POST each message, e.g. http://localhost:3000/webhook')
    .addOption(withDefault('--retries <n>', 'retries on connection errors, timeouts and 5xx before giving up on a message', '5'))
    .addOption(withDefault('--retry-delay <duration>', 'first retry delay (doubles, with jitter, up to 30s)', '1s'))
    .addOption(withDefault('--timeout <duration>', 'time limit for one delivery attempt', '10s'))
    .option('--ca <file>', 'trust this CA (PEM) for an https --to target')
    .option('--insecure', 'do not verify the --to target certificate (self-signed local HTTPS)')
    .option('--server-ca <file>', 'trust this CA (PEM) for a wss:// hookbot server')
    .option('--server-insecure', 'do not verify the wss:// hookbot server certificate')
    .action((url: string, opts: ForwardOptions) =>
      runClient(url, { ...opts, ca: opts.serverCa, insecure: opts.serverInsecure }, (log) => forwardHandler(opts, log)),
    );
}

/** What a replayed message does not carry: the HTTP client sets its own hop headers. */
const NOT_FORWARDED = new Set([...HOP_HEADERS, 'proxy-authenticate']);

export function forwardHeaders(m: Message): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(m.headers)) if (!NOT_FORWARDED.has(name.toLowerCase())) headers[name] = value;
  headers['content-length'] = String(m.body.length);
  headers['x-hookbot-message-id'] = m.id;
  return headers;
}

/**
 * Where one message goes: `--to`, plus the query string a smee channel
 * message was posted with (its parameters replace the target's of the same
 * name). With no query of its own the target gets it byte for byte.
 */
export function forwardTarget(target: URL, m: Message): URL {
  const query = m.headers[CHANNEL_QUERY_HEADER];
  if (!query) return target;
  const url = new URL(target);
  if (url.search === '') {
    url.search = '?' + query;
    return url;
  }
  const params = new URLSearchParams(query);
  for (const name of new Set(params.keys())) url.searchParams.delete(name);
  for (const [name, value] of params) url.searchParams.append(name, value);
  return url;
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
      req = request(forwardTarget(target, m), { method: 'POST', agent, headers: forwardHeaders(m) });
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
