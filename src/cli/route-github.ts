/**
 * `hookbot route-github`: the original's out-of-process router. It subscribes
 * to a hookbot's unsafe GitHub feed, verifies each delivery's signature and
 * republishes the per-repository summaries and event envelopes to `/pub/...`
 * on the same host, with tokens made from the key.
 *
 * It runs the server's own route pipeline (src/server/routers/pipeline.ts with
 * the github adapter), so what it verifies, drops and publishes is exactly
 * what `serve --router github` would. What it adds is a host that publishes
 * over HTTP and survives restarts:
 * - the subscription is `subscribe()` (hookbot.v1): reconnects with backoff and
 *   resumes by id; with --state-file a restart resumes after the last
 *   delivery routed, so nothing the server retained is missed;
 * - a delivery counts as routed only once all its republishes were accepted:
 *   an unreachable server is retried until it answers, and a stop in the
 *   middle leaves the delivery to be routed again;
 * - every republish of a delivery carries the same Idempotency-Key, so a
 *   delivery routed again after a crash (or redelivered by GitHub after a
 *   restart forgot its id) is stored once.
 */
import http from 'node:http';
import https from 'node:https';
import type { Command } from 'commander';
import { subscribe, SubscribeError, type Subscription } from '../client/index.js';
import { makeToken } from '../protocol/tokens.js';
import type { Headers } from '../protocol/message.js';
import { ConfigError, parseDuration, SERVE_OPTIONS } from '../server/config.js';
import { collect, githubSecretsFrom, typedOptions } from './options.js';
import { onStopSignal, retryDelay, sleep } from './subscriber.js';
import { createLogger, type Logger } from '../server/log.js';
import { githubAdapter } from '../server/routers/github.js';
import { createRouter } from '../server/routers/pipeline.js';
import type { RouterHost } from '../server/routers/router.js';

interface RouteGithubOptions {
  monitorUrl?: string;
  origin?: string;
  header?: string[];
  key?: string;
  githubSecret?: string[];
  stateFile?: string;
  dedupeWindow: string;
  logLevel?: string;
}


/** Same-host Origin, as the original sends it: `//<host>`. */
const SAMEHOST = 'samehost';
/** How long one republish may take before it is retried. */
const PUBLISH_TIMEOUT_MS = 30_000;
/**
 * Feed messages the subscription may hold before it steps away and resumes
 * by id: envelopes can be as large as the server's --max-body, and the
 * pipeline takes one at a time anyway.
 */
const MAX_BUFFERED = 16;
const TOKEN_CHARS = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

export function registerRouteGithub(program: Command): void {
  program
    .command('route-github')
    // --key and --github-secret are global options: shown with this command's own.
    .configureHelp({ showGlobalOptions: true })
    .description(
      "route GitHub webhooks outside the server: subscribe to the unsafe github.com feed, verify each delivery's signature and republish the summaries and events to /pub/github.com/repo/... on the same host",
    )
    .option('-u, --monitor-url <url>', 'the feed to subscribe to, with its token: wss://TOKEN@host/unsafe/sub/github.com/ (env HOOKBOT_MONITOR_URL; without a token in the URL one is made from --key)')
    .option('--origin <origin>', "Origin header for the subscription; 'samehost' sends //<monitor host> (env HOOKBOT_ORIGIN; default: samehost)")
    .option('-H, --header <header>', "extra 'Name: value' header for the subscription and the republishes (repeatable; env HOOKBOT_HEADER, several separated by commas; default: none)", collect)
    .option('--state-file <file>', 'keep the last routed feed message id here and resume after it on restart (default: none, start with live deliveries)')
    .option('--dedupe-window <duration>', 'how long a delivery id is remembered, so a redelivery is republished once', '1h')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent (env HOOKBOT_LOG_LEVEL; default: info)')
    // --key and --github-secret are the program's global options (before or after the command, as the original).
    .action((opts: RouteGithubOptions, cmd: Command) => {
      const typed = typedOptions(cmd);
      return runRouteGithub({ ...opts, key: typed.key as string | undefined, githubSecret: typed.githubSecret as string[] | undefined }, process.env);
    });
}

/** What the options and environment say, validated; errors name the option. */
export interface RouteGithubConfig {
  /** The subscribe URL as given (may hold a token: never log it). */
  monitorUrl: string;
  /** Sent as Bearer when the URL carries no token. */
  token?: string;
  headers: Record<string, string>;
  /** Where republishes go: http(s)://host. */
  publishBase: URL;
  key: string;
  secrets: string[];
  stateFile?: string;
  dedupeWindowMs: number;
  logLevel: string;
}

export function resolveRouteGithub(opts: RouteGithubOptions, env: NodeJS.ProcessEnv): RouteGithubConfig {
  const monitorUrl = opts.monitorUrl ?? env.HOOKBOT_MONITOR_URL;
  if (!monitorUrl) throw new ConfigError('route-github needs --monitor-url (or HOOKBOT_MONITOR_URL), e.g. wss://TOKEN@host/unsafe/sub/github.com/');
  let url: URL;
  try {
    url = new URL(monitorUrl);
  } catch {
    throw new ConfigError('--monitor-url is not a URL (expected wss://TOKEN@host/unsafe/sub/github.com/)');
  }
  // Unlike the original (always https), the republish scheme follows the feed's.
  const scheme = ({ 'ws:': 'http:', 'http:': 'http:', 'wss:': 'https:', 'https:': 'https:' } as Record<string, string>)[url.protocol];
  if (!scheme) throw new ConfigError(`--monitor-url must be ws://, wss://, http:// or https://, got ${url.protocol}`);

  const key = opts.key ?? env.HOOKBOT_KEY;
  if (!key) throw new ConfigError('HOOKBOT_KEY not set (set the HOOKBOT_KEY environment variable or pass --key): route-github makes its /pub/ tokens with it');
  const secrets = githubSecretsFrom(opts.githubSecret, env);
  if (secrets.length === 0) {
    throw new ConfigError('route-github needs the GitHub webhook secret: set HOOKBOT_GITHUB_SECRET or pass --github-secret (comma-separate several to rotate)');
  }

  const headers: Record<string, string> = {};
  const given = opts.header?.length ? opts.header : splitHeaders(env.HOOKBOT_HEADER);
  for (const h of given) {
    const colon = h.indexOf(':');
    const name = colon === -1 ? '' : h.slice(0, colon).trim();
    if (!TOKEN_CHARS.test(name)) throw new ConfigError(`--header ${JSON.stringify(h)} is not "Name: value"`);
    headers[name] = h.slice(colon + 1).trim();
  }
  const origin = opts.origin ?? env.HOOKBOT_ORIGIN ?? SAMEHOST;
  if (origin !== '') headers.Origin = origin === SAMEHOST ? `//${url.host}` : origin;

  // The table's parser, not readOption: that would add "(from HOOKBOT_LOG_LEVEL)" to the error.
  const logLevel = SERVE_OPTIONS.logLevel.parse(opts.logLevel ?? env.HOOKBOT_LOG_LEVEL ?? SERVE_OPTIONS.logLevel.default, '--log-level');
  let token: string | undefined;
  if (!url.username) {
    // The server checks a token against the percent-decoded path.
    try {
      token = makeToken(key, decodeURIComponent(url.pathname));
    } catch {
      throw new ConfigError('--monitor-url has malformed percent-encoding in its path');
    }
  }
  return {
    monitorUrl,
    token,
    headers,
    publishBase: new URL(`${scheme}//${url.host}`),
    key,
    secrets,
    stateFile: opts.stateFile,
    dedupeWindowMs: parseDuration(opts.dedupeWindow, '--dedupe-window'),
    logLevel,
  };
}

/** HOOKBOT_HEADER: one header, or several separated by commas (a comma inside a value stays when no `Name:` follows it). */
function splitHeaders(value: string | undefined): string[] {
  if (!value) return [];
  return value
    .split(/,(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*:)/)
    .map((h) => h.trim())
    .filter((h) => h !== '');
}

class Stopped extends Error {}

async function runRouteGithub(opts: RouteGithubOptions, env: NodeJS.ProcessEnv): Promise<void> {
  const config = resolveRouteGithub(opts, env);
  const log = createLogger(config.logLevel);
  const stopping = new AbortController();
  const publisher = new Republisher(config, log, stopping.signal);
  const host: RouterHost = {
    log,
    count: () => {},
    publish: (topic, headers, body, { idempotencyKey }) => publisher.publish(topic, headers, body, idempotencyKey),
  };
  const router = createRouter(githubAdapter, { secrets: config.secrets, dedupeWindowMs: config.dedupeWindowMs }, host);

  let sub: Subscription;
  try {
    sub = subscribe(config.monitorUrl, {
      token: config.token,
      unsafe: true,
      headers: config.headers,
      stateFile: config.stateFile,
      maxBuffered: MAX_BUFFERED,
      // Marked routed (and the state file advanced) only when its republishes are all done.
      onMessage: async (message, { signal }) => {
        await router.handle(message);
        if (publisher.refused) {
          // Left unmarked: a restart with the right key routes this delivery again.
          stopping.abort();
          void sub.close();
          throw publisher.refused;
        }
        if (signal.aborted || stopping.signal.aborted) throw new Stopped('stopping');
      },
      onGap: (since) => log.warn({ since }, `gap: feed messages after ${since} were no longer retained by the server and were not routed`),
    });
  } catch (err) {
    if (err instanceof SubscribeError) throw new ConfigError(`--monitor-url: ${err.message}`);
    throw err;
  }
  log.info({ feed: sub.url, publishTo: `${config.publishBase.origin}/pub/`, stateFile: config.stateFile }, 'route-github starting');
  if (!config.stateFile) log.warn({}, 'no --state-file: deliveries published while route-github is not running will not be routed');
  sub.on('open', () => log.info({ feed: sub.url }, 'connected'));
  sub.on('live', () => log.info({ feed: sub.url, lastId: sub.lastId }, 'live'));
  sub.on('disconnect', (d) => log.warn({ code: d.code, reason: d.reason }, 'disconnected'));
  sub.on('reconnect', (r) => log.info({ attempt: r.attempt, delayMs: r.delayMs, since: r.since }, 'reconnecting'));
  sub.on('warning', (w) => log.warn({}, w));

  onStopSignal((signal) => {
    log.info({ signal, lastId: sub.lastId }, 'stopping; a delivery being routed is left for the next start');
    stopping.abort();
    void sub.close();
  });

  try {
    await sub.closed;
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'route-github stopped');
    log.flush();
    process.exitCode = 1;
    setImmediate(() => process.exit(1));
    return;
  }
  publisher.close();
  if (publisher.refused) {
    log.fatal({ err: publisher.refused.message, lastId: sub.lastId }, 'route-github stopped; the delivery it was routing is routed again at the next start');
    log.flush();
    process.exitCode = 1;
    setImmediate(() => process.exit(1));
    return;
  }
  log.flush();
  setImmediate(() => process.exit(0));
}

/** Refusals of our credentials (a wrong --key): every later republish would be refused too. */
const UNAUTHORIZED = new Set([401, 403]);

/**
 * Republishes onto `/pub/<topic>` of the feed's host. Retries what the
 * server may yet accept (no answer, 5xx, 408, 429) with backoff until it
 * does or route-github stops. Any other 4xx refuses that one republish (its
 * delivery is logged and skipped), except a refusal of our credentials:
 * that stops route-github (see `refused`).
 */
class Republisher {
  /** Set when the server refused our token: route-github stops without marking the delivery routed. */
  refused: Error | undefined;
  readonly #base: URL;
  readonly #key: string;
  readonly #headers: Record<string, string>;
  readonly #log: Logger;
  readonly #signal: AbortSignal;
  readonly #agent: http.Agent;
  readonly #request: typeof http.request;

  constructor(config: RouteGithubConfig, log: Logger, signal: AbortSignal) {
    this.#base = config.publishBase;
    this.#key = config.key;
    const { Origin: _origin, ...headers } = config.headers;
    this.#headers = headers;
    this.#log = log;
    this.#signal = signal;
    const https_ = this.#base.protocol === 'https:';
    this.#agent = https_ ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    this.#request = https_ ? https.request : http.request;
  }

  async publish(topic: string, headers: Headers, body: Buffer, idempotencyKey: string): Promise<void> {
    const path = `/pub/${topic}`;
    const url = new URL(`/pub/${topic.split('/').map(encodeURIComponent).join('/')}`, this.#base);
    const request = {
      ...this.#headers,
      ...headers,
      authorization: `Bearer ${makeToken(this.#key, path)}`,
      'idempotency-key': idempotencyKey,
      'content-length': String(body.length),
    };
    for (let attempt = 0; ; attempt++) {
      if (this.#signal.aborted) throw new Stopped('stopping');
      const r = await this.#post(url, request, body);
      if (r.status !== undefined && r.status >= 200 && r.status < 300) return;
      const what = r.status !== undefined ? `HTTP ${r.status}${r.detail ? `: ${r.detail}` : ''}` : (r.error ?? 'no answer');
      if (r.status !== undefined && UNAUTHORIZED.has(r.status)) {
        throw (this.refused = new Error(`republish to ${path} refused (${what}): is --key (HOOKBOT_KEY) the server's key?`));
      }
      if (r.status !== undefined && r.status < 500 && r.status !== 408 && r.status !== 429) throw new Error(`republish to ${path} refused (${what})`);
      const delayMs = retryDelay(attempt, 500);
      this.#log.warn({ to: topic, attempt: attempt + 1, retryInMs: delayMs, error: what }, 'republish failed; retrying');
      await sleep(delayMs, this.#signal, () => new Stopped('stopping'));
    }
  }

  close(): void {
    this.#agent.destroy();
  }

  /** One attempt; never rejects. */
  #post(url: URL, headers: Record<string, string>, body: Buffer): Promise<{ status?: number; detail?: string; error?: string }> {
    return new Promise((resolve) => {
      let req: http.ClientRequest;
      try {
        req = this.#request(url, { method: 'POST', agent: this.#agent, headers, timeout: PUBLISH_TIMEOUT_MS });
      } catch (err) {
        // An invalid header value (from --header): sending it again will not help.
        return resolve({ status: 400, detail: (err as Error).message });
      }
      req.on('timeout', () => req.destroy(new Error(`no answer within ${PUBLISH_TIMEOUT_MS} ms`)));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          if (size < 512) chunks.push(c);
          size += c.length;
        });
        res.on('end', () => resolve({ status: res.statusCode, detail: Buffer.concat(chunks).toString('utf8').split('\n')[0].slice(0, 200) }));
        res.on('error', (err) => resolve({ error: err.message }));
      });
      req.on('error', (err) => resolve({ error: err.message }));
      req.end(body);
    });
  }
}
