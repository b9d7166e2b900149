/**
 * Shared test plumbing: real servers on port 0, real ws clients, and waits
 * that end on events or a timeout, never on a fixed sleep.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server as HttpServer } from 'node:http';
import { connect, createServer } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'playwright-core';
import { WebSocket, type ClientOptions, type RawData } from 'ws';
import { resolveServeConfig, type Config, type ServeOptions } from '../src/server/config.js';
import { createLogger } from '../src/server/log.js';
import { startServer, type HookbotServer } from '../src/server/server.js';
import { makeToken } from '../src/protocol/tokens.js';

export const KEY = 'test-key';
export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = fileURLToPath(new URL('../bin/hookbot.js', import.meta.url));

export function token(path: string, key = KEY): string {
  return makeToken(key, path);
}

export function bearer(path: string, key = KEY): Record<string, string> {
  return { authorization: `Bearer ${token(path, key)}` };
}

const tempDirs = new Set<string>();
// Whatever a test left behind (a server it never closed, a child it killed without waiting) goes when the test process ends.
process.once('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A fresh empty directory under the system's temporary directory, removed by removeDir or when the test process exits. */
export function tempDir(prefix = 'hookbot-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/** Whether serve options already say where history goes (else tests give it a temporary data directory). */
function choosesStore(options: ServeOptions, overrides: Partial<Config>): boolean {
  return options.dataDir !== undefined || options.memory === true || options.redis !== undefined || 'dataDir' in overrides || 'redisUrl' in overrides;
}

/**
 * A server in this process on the default durable store, in a temporary data
 * directory removed when it closes (pass `memory: true` or a `dataDir` to choose).
 */
export async function startTestServer(options: ServeOptions = {}, overrides: Partial<Config> = {}): Promise<HookbotServer> {
  const dir = choosesStore(options, overrides) ? undefined : tempDir();
  let server: HookbotServer;
  try {
    const config = { ...resolveServeConfig({ bind: '127.0.0.1:0', key: KEY, ...(dir ? { dataDir: dir } : {}), ...options }, {}), ...overrides };
    server = await startServer(config, createLogger(process.env.TEST_LOG_LEVEL ?? 'silent'));
  } catch (err) {
    if (dir) removeDir(dir);
    throw err;
  }
  if (!dir) return server;
  let closing: Promise<void> | undefined;
  const close = server.close;
  return { ...server, close: () => (closing ??= close().finally(() => removeDir(dir))) };
}

export function wsUrl(server: HookbotServer, path: string): string {
  return server.url.replace(/^http/, 'ws') + path;
}

// Messages that arrive with the handshake can be emitted before the caller's
// await resumes; wsConnect keeps them here until an Inbox takes over.
const EARLY = Symbol('early messages');
type EarlyWs = WebSocket & { [EARLY]?: { messages: Array<{ data: Buffer; binary: boolean }>; listener: (data: RawData, binary: boolean) => void } };

function toBuffer(data: RawData): Buffer {
  return Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}

/** Opens a WebSocket and resolves once it is open; rejects with the HTTP status on a refused handshake. */
export function wsConnect(url: string, options: ClientOptions & { protocol?: string } = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const { protocol, ...rest } = options;
    const ws: EarlyWs = new WebSocket(url, protocol ? [protocol] : [], rest);
    const early = { messages: [] as Array<{ data: Buffer; binary: boolean }>, listener: (data: RawData, binary: boolean) => early.messages.push({ data: toBuffer(data), binary }) };
    ws[EARLY] = early;
    ws.on('message', early.listener);
    const timer = setTimeout(() => reject(new Error(`timeout connecting to ${url}`)), 5000);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve(ws);
    });
    ws.once('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}: ${body}`), { status: res.statusCode, body, headers: res.headers })));
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export function subscribe(server: HookbotServer, path: string, options: ClientOptions & { protocol?: string } = {}): Promise<WebSocket> {
  const clean = path.split('?')[0];
  return wsConnect(wsUrl(server, path), { headers: bearer(clean), ...options });
}

/**
 * Waiting on a condition that changes when wake() is called, with a timeout
 * whose error says what was awaited (and, with `detail`, what there was).
 */
export class Waiters {
  #waiting: Array<() => void> = [];

  wake(): void {
    for (const w of this.#waiting.splice(0)) w();
  }

  until(predicate: () => boolean, what: string, timeoutMs = 5000, detail?: () => string): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}${detail ? `; ${detail()}` : ''}`)), timeoutMs);
      const check = () => {
        if (predicate()) {
          clearTimeout(timer);
          resolve();
        } else {
          this.#waiting.push(check);
        }
      };
      this.#waiting.push(check);
    });
  }
}

/** Collects messages from a socket so tests can wait for the n-th one. */
export class Inbox {
  readonly messages: Array<{ data: Buffer; binary: boolean }> = [];
  readonly #waiters = new Waiters();
  closed: { code: number; reason: string } | undefined;

  constructor(ws: WebSocket) {
    const early = (ws as EarlyWs)[EARLY];
    if (early) {
      ws.off('message', early.listener);
      this.messages.push(...early.messages);
      delete (ws as EarlyWs)[EARLY];
    }
    ws.on('message', (data: RawData, binary: boolean) => {
      this.messages.push({ data: toBuffer(data), binary });
      this.#wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
  }

  #wake(): void {
    this.#waiters.wake();
  }

  /** Resolves when at least n messages arrived. */
  async waitFor(n: number, timeoutMs = 5000): Promise<Array<{ data: Buffer; binary: boolean }>> {
    await this.until(() => this.messages.length >= n, timeoutMs, `${n} messages (have ${this.messages.length})`);
    return this.messages.slice(0, n);
  }

  async waitClose(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    await this.until(() => this.closed !== undefined, timeoutMs, 'close');
    return this.closed!;
  }

  until(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
    return this.#waiters.until(predicate, what, timeoutMs);
  }

  texts(): string[] {
    return this.messages.map((m) => m.data.toString());
  }
}

/** A Buffer as fetch's BodyInit wants it typed (a view, not a copy). */
export function bodyOf(body: string | Buffer): string | Uint8Array<ArrayBuffer> {
  return typeof body === 'string' ? body : new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.length);
}

export async function publish(server: HookbotServer, path: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<Response> {
  const clean = path.split('?')[0];
  return fetch(server.url + path, { method: 'POST', body: bodyOf(body), headers: { ...bearer(clean), ...headers } });
}

/** Polls `check` (for state that has no event) until it returns a truthy value, which it resolves with; fails after timeoutMs. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 5000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** waitFor() for a plain condition. */
export async function eventually(predicate: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  await waitFor(predicate, timeoutMs, what);
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export interface Proc {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first stdout/stderr line matching. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
}

/** The command of a CLI line: the first word that is not an option, past the global options and their values (as the original has them). */
function commandOf(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (/^--?(key|github-secret)$/.test(a)) i++;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/**
 * Runs the real CLI (dist must be built) as a child process. A `serve` that
 * does not choose its store (--data-dir, --memory, --redis or their
 * environment variables) gets a temporary data directory, removed when it
 * exits, so no test writes ./hookbot-data.
 */
export function runCli(args: string[], env: Record<string, string | undefined> = {}, input?: string): Proc {
  let dir: string | undefined;
  if (
    commandOf(args) === 'serve' &&
    !args.some((a) => a === '--data-dir' || a === '--memory' || a === '--redis' || a.startsWith('--data-dir=') || a.startsWith('--redis=')) &&
    !env.HOOKBOT_DATA_DIR &&
    !env.HOOKBOT_MEMORY &&
    !env.HOOKBOT_REDIS_URL
  ) {
    dir = tempDir('hookbot-serve-');
    args = [...args, '--data-dir', dir];
  }
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, HOOKBOT_LOG_JSON: '1', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    for (const l of listeners) l();
  });
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString();
    for (const l of listeners) l();
  });
  if (input !== undefined) child.stdin.end(input);
  else child.stdin.end();
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      if (dir) removeDir(dir);
      for (const l of listeners) l();
      resolve({ code, signal });
    }),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exit,
    waitForLine(re, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`timed out waiting for ${re} in output:\n${out}\n${err}`));
        }, timeoutMs);
        const check = () => {
          const line = (out + '\n' + err).split('\n').find((l) => re.test(l));
          if (line !== undefined) {
            clearTimeout(timer);
            listeners.delete(check);
            resolve(line);
          } else if (child.exitCode !== null) {
            clearTimeout(timer);
            listeners.delete(check);
            reject(new Error(`process exited (${child.exitCode}) before ${re}:\n${out}\n${err}`));
          }
        };
        listeners.add(check);
        check();
      });
    },
  };
}

/** Starts `hookbot serve` as a child process on a free port; resolves once it listens. */
export async function startServeProcess(args: string[] = [], env: Record<string, string | undefined> = {}): Promise<Proc & { port: number; url: string }> {
  const port = await freePort();
  const proc = runCli(['serve', '--bind', `127.0.0.1:${port}`, ...args], { HOOKBOT_KEY: KEY, ...env });
  try {
    await proc.waitForLine(/Listening on/);
  } catch (err) {
    // Nobody else holds it yet: a server that never said it listens must not outlive the test.
    proc.child.kill('SIGKILL');
    throw err;
  }
  return Object.assign(proc, { port, url: `http://127.0.0.1:${port}` });
}

export interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

/** A streaming SSE response: keeps every raw byte and the events parsed from them as the spec says. */
export class SseStream {
  readonly res: Response;
  raw = '';
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  ended = false;
  readonly #abort: AbortController;
  #parsed = 0;
  readonly #waiters = new Waiters();

  constructor(res: Response, abort: AbortController) {
    this.res = res;
    this.#abort = abort;
    void this.#pump();
  }

  async #pump(): Promise<void> {
    const reader = this.res.body!.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.raw += decoder.decode(value, { stream: true });
        this.#parse();
        this.#wake();
      }
    } catch {
      // aborted
    }
    this.ended = true;
    this.#wake();
  }

  #parse(): void {
    for (;;) {
      const end = this.raw.indexOf('\n\n', this.#parsed);
      if (end === -1) return;
      const block = this.raw.slice(this.#parsed, end);
      this.#parsed = end + 2;
      const event: SseEvent = { data: '' };
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) {
          this.comments.push(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'id') event.id = value;
        else if (field === 'event') event.event = value;
      }
      if (data.length === 0) continue;
      event.data = data.join('\n');
      this.events.push(event);
    }
  }

  #wake(): void {
    this.#waiters.wake();
  }

  until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    return this.#waiters.until(predicate, what, timeoutMs, () => `got ${JSON.stringify(this.raw.slice(-500))}`);
  }

  async waitFor(n: number, timeoutMs = 5000): Promise<SseEvent[]> {
    await this.until(() => this.events.length >= n, `${n} events (have ${this.events.length})`, timeoutMs);
    return this.events.slice(0, n);
  }

  close(): void {
    this.#abort.abort();
  }
}

/**
 * Publishes like a webhook sender that retries: connection errors and 5xx
 * (server down or restarting) are retried until the server says 200, whose
 * message id it resolves with; another 4xx fails. `stats.ambiguous` counts
 * attempts whose outcome is unknown (no status came back).
 */
export async function publishUntilAccepted(
  url: string,
  seq: number,
  body: string | Buffer,
  headers: Record<string, string>,
  stats: { ambiguous: number },
  timeoutMs = 20_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (Date.now() > deadline) throw new Error(`publish ${seq} not accepted within ${timeoutMs} ms`);
    try {
      const res = await fetch(url, { method: 'POST', body: bodyOf(body), headers });
      await res.arrayBuffer();
      if (res.status === 200) return res.headers.get('x-hookbot-message-id')!;
      if (res.status < 500) throw new Error(`publish ${seq}: HTTP ${res.status}`);
    } catch (err) {
      if ((err as Error).message.startsWith('publish')) throw err;
      stats.ambiguous++;
    }
    await new Promise((r) => setTimeout(r, 30));
  }
}

/** Debian's Chromium, headless, with the flags this machine's closed network needs (no background connections). */
export async function launchChromium(): Promise<Browser> {
  // Loaded here, not by every test file that imports these helpers.
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A webhook signature header value as GitHub makes it: `sha256=<hex HMAC of the body>` (or sha1). */
export function signature(algo: 'sha1' | 'sha256', secret: string, body: Buffer | string): string {
  return `${algo}=${createHmac(algo, secret).update(body).digest('hex')}`;
}

/** GitHub's `X-Hub-Signature-256` of a body under a webhook secret. */
export function githubSignature(secret: string, body: Buffer | string): string {
  return signature('sha256', secret, body);
}

export interface Delivery {
  method: string;
  /** Path and query as requested. */
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/**
 * A local app that webhooks are forwarded to: records every request with its
 * raw body and, given a secret, answers 401 unless X-Hub-Signature-256 is the
 * body's HMAC (as a GitHub app checks it), else 200.
 */
export class WebhookApp {
  readonly deliveries: Delivery[] = [];
  /** Requests whose signature did not verify (with a secret). */
  readonly refused: Delivery[] = [];
  readonly #server: HttpServer;
  #url = '';
  readonly #waiters = new Waiters();

  private constructor(secret: string | undefined) {
    this.#server = createHttpServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const d: Delivery = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
        const ok = secret === undefined || req.headers['x-hub-signature-256'] === githubSignature(secret, d.body);
        (ok ? this.deliveries : this.refused).push(d);
        res.writeHead(ok ? 200 : 401).end();
        this.#waiters.wake();
      });
    });
  }

  /** Where to send: http://127.0.0.1:<port><path>. */
  get url(): string {
    return this.#url;
  }

  static async start(secret?: string, path = '/webhook'): Promise<WebhookApp> {
    const app = new WebhookApp(secret);
    app.#server.listen(0, '127.0.0.1');
    await once(app.#server, 'listening');
    app.#url = `http://127.0.0.1:${(app.#server.address() as { port: number }).port}${path}`;
    return app;
  }

  /** Resolves once `n` requests were accepted; rejects at once if one was refused. */
  async waitFor(n: number, timeoutMs = 10_000): Promise<Delivery[]> {
    await this.#waiters.until(() => this.refused.length > 0 || this.deliveries.length >= n, `${n} deliveries (have ${this.deliveries.length})`, timeoutMs);
    if (this.refused.length > 0) throw new Error(`the app refused a delivery: ${this.refused[0].body.toString().slice(0, 200)}`);
    return this.deliveries.slice(0, n);
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** Sends raw bytes on a fresh connection; resolves with everything the server sent until it closed. */
export function rawExchange(port: number, bytes: string | Buffer, timeoutMs = 30_000): Promise<{ text: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const s = connect(port, '127.0.0.1', () => s.write(bytes));
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(text.slice(0, 200))}`));
    }, timeoutMs);
    s.on('data', (c: Buffer) => (text += c.toString('latin1')));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ text, ms: performance.now() - started });
    });
  });
}
