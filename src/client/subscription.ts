/**
 * The subscribing side of the `hookbot.v1` WebSocket subprotocol.
 *
 * Subscribers run behind firewalls on laptops and CI boxes, where connections
 * die silently (a proxy stops passing bytes without closing). So this client
 * never trusts a quiet socket: it pings, and a connection that shows no
 * traffic within a deadline is torn down and replaced. Every reconnect
 * resumes with `?since=<id>` so nothing is missed, and ids at or below the
 * last one seen are dropped so nothing is handled twice.
 *
 * "Processed" is decided by the consumer, not by the socket: a message counts
 * as processed when the async iterator is asked for the next one, or when the
 * `onMessage` callback's promise resolves. Only then is the id persisted to
 * the state file, so a client restart resumes after the last message that was
 * actually handled.
 */
import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { Message, compareIds, isMessageId, SUBPROTOCOL, type MessageJSON } from '../protocol/message.js';
import { UNSAFE_HEADER, UNSAFE_HEADER_VALUE } from '../protocol/topics.js';
import { backoffDelay } from '../util/backoff.js';
import { readStateFile, writeStateFile } from './state-file.js';
import { checkSince, parseSubscribeUrl, redactUrl, SubscribeError } from './url.js';

export { SUBPROTOCOL };

export interface SubscribeOptions {
  /** Sent as `Authorization: Bearer <token>`; wins over a token in the URL's user info. */
  token?: string;
  /** Resume after this message id (`0` = everything the server retains). Default: live only. */
  since?: string;
  /**
   * Keep the last processed id in this file (written atomically) and resume
   * from it on start; when it exists it wins over `since`.
   */
  stateFile?: string;
  /** How often the client pings. Default 10 000 ms. */
  pingIntervalMs?: number;
  /** No pong or other traffic for this long means the connection is dead. Default 30 000 ms. */
  deadlineMs?: number;
  /** Reconnect backoff: full jitter over min·2^attempt, capped at max. Defaults 500 ms and 30 000 ms. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Messages received but not yet processed above which the client disconnects
   * until the consumer catches up (then resumes by id). Default 1000.
   */
  maxBuffered?: number;
  /** Send `X-Hookbot-Unsafe-Is-Ok`, which the server requires on `/unsafe/sub/...`. */
  unsafe?: boolean;
  /** Extra request headers for the WebSocket handshake. */
  headers?: Record<string, string>;
  /** Trusted CA(s) for wss:// to a server with a private certificate. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Skip TLS certificate verification (wss:// only). */
  insecure?: boolean;
  /**
   * Callback style: called once per message, one at a time, in order. The
   * message is processed when the returned promise resolves; if it rejects,
   * the subscription stops and `closed` rejects with that error. `signal`
   * aborts when `close()` is called.
   */
  onMessage?: (message: Message, context: { signal: AbortSignal }) => void | Promise<void>;
  /**
   * Called when the server reports that messages after `since` are no longer
   * retained (they were missed), at the point in the stream where the gap is.
   * Without it (and without a 'gap' listener) a process warning is emitted.
   */
  onGap?: (since: string) => void;
  /** Aborting it closes the subscription. */
  signal?: AbortSignal;
}

/** Events of a Subscription (`sub.on('gap', ...)`). */
export interface SubscriptionEvents {
  /** A connection was established (first connect and every reconnect). */
  open: [];
  /** The server finished any replay; messages are now live. */
  live: [];
  /** Messages after `since` were missed (server history no longer holds them). */
  gap: [since: string];
  /** A connection ended; a reconnect follows unless the subscription is closed or failed. */
  disconnect: [info: DisconnectInfo];
  /** A reconnect is scheduled in `delayMs`. */
  reconnect: [info: { attempt: number; delayMs: number; since?: string }];
  /** Something odd but recoverable (a malformed frame, a stall). */
  warning: [message: string];
}

export interface DisconnectInfo {
  code?: number;
  reason: string;
  error?: Error;
}


const CERT_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

type Item = { kind: 'message'; message: Message } | { kind: 'gap'; since: string };

interface Waiter {
  resolve: (item: Item | undefined) => void;
  reject: (err: Error) => void;
}

/**
 * A live subscription. Iterate it (`for await (const m of sub)`) or pass
 * `onMessage`; not both. Call `close()` to stop.
 */
export class Subscription extends EventEmitter<SubscriptionEvents> implements AsyncIterable<Message> {
  /** The ws(s):// URL, without credentials. */
  readonly url: string;
  /** True when the subscription's topic ends in `/` (messages come from many topics). */
  readonly recursive: boolean;
  /** Resolves after close(); rejects with the error that stopped the subscription. */
  readonly closed: Promise<void>;

  readonly #authorization: string | undefined;
  readonly #opts: Required<Pick<SubscribeOptions, 'pingIntervalMs' | 'deadlineMs' | 'minBackoffMs' | 'maxBackoffMs' | 'maxBuffered'>> &
    SubscribeOptions;
  readonly #abort = new AbortController();
  #resolveClosed!: () => void;
  #rejectClosed!: (err: Error) => void;

  #queue: Item[] = [];
  #waiter: Waiter | undefined;
  #mode: 'none' | 'iterator' | 'callback' = 'none';
  /** Handed to the consumer, not yet processed. */
  #inFlight: Message | undefined;
  #lastProcessed: string | undefined;
  /** Newest id received: the resume point and the duplicate filter. */
  #lastReceived: string | undefined;
  /** `since` for a reconnect before any message arrived (`0`, a given id or the first connect time). */
  #resumeFrom: string | undefined;

  #ws: WebSocket | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #lastSeen = 0;
  #attempt = 0;
  #paused = false;
  #closing = false;
  #fatal: Error | undefined;
  #pump: Promise<void> | undefined;

  constructor(url: string, options: SubscribeOptions = {}) {
    super();
    const parsed = parseSubscribeUrl(url, options.token);
    this.url = parsed.url;
    this.recursive = parsed.recursive;
    this.#authorization = parsed.authorization;
    this.#opts = {
      pingIntervalMs: 10_000,
      deadlineMs: 30_000,
      minBackoffMs: 500,
      maxBackoffMs: 30_000,
      maxBuffered: 1000,
      ...stripUndefined(options),
    };
    for (const key of ['pingIntervalMs', 'deadlineMs', 'minBackoffMs', 'maxBackoffMs', 'maxBuffered'] as const) {
      const v = this.#opts[key];
      if (!Number.isFinite(v) || v <= 0) throw new SubscribeError(`${key} must be a positive number`);
    }
    if (this.#opts.maxBackoffMs < this.#opts.minBackoffMs) throw new SubscribeError('maxBackoffMs must be at least minBackoffMs');

    let since = options.since ?? parsed.since;
    if (since !== undefined) checkSince(since);
    if (options.stateFile) since = readStateFile(options.stateFile) ?? since;
    this.#resumeFrom = since;
    if (since !== undefined && since !== '0') {
      this.#lastReceived = since;
      this.#lastProcessed = since;
    }

    this.closed = new Promise<void>((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // Iterator users may never look at `closed`; its rejection must not crash them.
    this.closed.catch(() => {});

    if (options.signal) {
      if (options.signal.aborted) queueMicrotask(() => void this.close());
      else options.signal.addEventListener('abort', () => void this.close(), { once: true });
    }
    if (options.onMessage) {
      this.#mode = 'callback';
      const handler = options.onMessage;
      this.#pump = this.#runCallback(handler);
    }
    this.#connect();
  }

  /** The id of the last message the consumer finished with. */
  get lastId(): string | undefined {
    return this.#lastProcessed;
  }

  /** True while a connection is open. */
  get connected(): boolean {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Stops receiving and reconnecting. Waits for a running `onMessage` call to
   * settle; messages received but not processed are dropped (a later
   * subscription resumes from `lastId` and gets them again).
   */
  async close(): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      this.#abort.abort();
      this.#stopConnection();
      this.#queue = [];
      this.#wake();
    }
    try {
      await this.#pump;
    } catch {
      // Reported through `closed`.
    }
    if (!this.#fatal) this.#resolveClosed();
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    if (this.#mode !== 'none') throw new Error(`this subscription is already consumed (${this.#mode})`);
    this.#mode = 'iterator';
    return {
      next: async (): Promise<IteratorResult<Message>> => {
        // Asking for the next message is what marks the previous one processed.
        this.#markProcessed();
        const message = await this.#nextMessage();
        if (!message) return { done: true, value: undefined };
        this.#inFlight = message;
        return { done: false, value: message };
      },
      return: async (): Promise<IteratorResult<Message>> => {
        // `break` ends the loop body normally, so the current message is done.
        this.#markProcessed();
        await this.close();
        return { done: true, value: undefined };
      },
    };
  }

  async #runCallback(handler: NonNullable<SubscribeOptions['onMessage']>): Promise<void> {
    // Let the constructor finish (and listeners attach) before the first call.
    await Promise.resolve();
    try {
      for (;;) {
        const message = await this.#nextMessage();
        if (!message) return;
        this.#inFlight = message;
        await handler(message, { signal: this.#abort.signal });
        this.#markProcessed();
      }
    } catch (err) {
      // A handler giving up because we are closing is a clean stop, not a
      // failure. Anything else is reported through `closed`.
      if (this.#closing) return;
      this.#fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #markProcessed(): void {
    const m = this.#inFlight;
    if (!m) return;
    this.#inFlight = undefined;
    this.#lastProcessed = m.id;
    if (this.#opts.stateFile) writeStateFile(this.#opts.stateFile, m.id);
  }

  async #nextMessage(): Promise<Message | undefined> {
    for (;;) {
      const item = await this.#pull();
      if (!item) return undefined;
      if (item.kind === 'message') return item.message;
      this.#reportGap(item.since);
    }
  }

  #pull(): Promise<Item | undefined> {
    if (this.#waiter) return Promise.reject(new Error('next() called again before the previous call settled'));
    const item = this.#queue.shift();
    if (item) {
      this.#maybeResume();
      return Promise.resolve(item);
    }
    if (this.#closing) return Promise.resolve(undefined);
    if (this.#fatal) return Promise.reject(this.#fatal);
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  #push(item: Item): void {
    const waiter = this.#waiter;
    if (waiter) {
      this.#waiter = undefined;
      waiter.resolve(item);
    } else {
      this.#queue.push(item);
    }
  }

  /** Settles a waiting pull after close or failure. */
  #wake(): void {
    const waiter = this.#waiter;
    if (!waiter) return;
    this.#waiter = undefined;
    if (this.#closing) waiter.resolve(undefined);
    else if (this.#fatal) waiter.reject(this.#fatal);
  }

  #reportGap(since: string): void {
    this.#opts.onGap?.(since);
    const listened = this.emit('gap', since);
    if (!this.#opts.onGap && !listened) {
      process.emitWarning(`hookbot: messages after ${since} were no longer retained by the server and were missed`, {
        code: 'HOOKBOT_GAP',
      });
    }
  }

  #fail(err: Error): void {
    if (this.#fatal || this.#closing) return;
    this.#fatal = err;
    this.#stopConnection();
    this.#abort.abort();
    this.#rejectClosed(err);
    this.#wake();
  }

  #stopConnection(): void {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#stopHeartbeat();
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws) {
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
    }
  }

  #connect(): void {
    this.#reconnectTimer = undefined;
    if (this.#closing || this.#fatal) return;
    const url = new URL(this.url);
    const since = this.#lastReceived ?? this.#resumeFrom;
    if (since !== undefined) url.searchParams.set('since', since);
    // Without any id yet, a reconnect resumes from when this first attempt
    // began (client clock) so messages sent during an outage are not lost.
    this.#resumeFrom ??= `${Date.now()}-0`;

    const headers: Record<string, string> = { ...this.#opts.headers };
    if (this.#authorization) headers.Authorization = this.#authorization;
    if (this.#opts.unsafe) headers[UNSAFE_HEADER] = UNSAFE_HEADER_VALUE;
    const ws = new WebSocket(url, [SUBPROTOCOL], {
      headers,
      handshakeTimeout: this.#opts.deadlineMs,
      followRedirects: false,
      ca: this.#opts.ca,
      rejectUnauthorized: !this.#opts.insecure,
    });
    this.#ws = ws;
    let ended = false;
    let lastError: Error | undefined;
    const end = (info: DisconnectInfo) => {
      if (ended) return;
      ended = true;
      this.#onConnectionEnd(ws, info);
    };

    ws.on('unexpected-response', (req, res) => {
      const status = res.statusCode ?? 0;
      void readSome(res, 512).then((body) => {
        req.destroy();
        if (ws !== this.#ws) return;
        const line = body.trim().split('\n')[0];
        const what = `${status} ${res.statusMessage ?? ''}`.trim();
        // The server's body usually restates the status; say it once.
        const detail = line.startsWith(String(status)) ? line : line ? `${what}: ${line}` : what;
        // 5xx, 408 and 429 are the server having a bad moment; other refusals
        // (bad token, bad path, missing header) will be refused again.
        if (status >= 500 || status === 408 || status === 429) {
          end({ reason: `handshake refused: ${detail}` });
        } else if (status >= 300 && status < 400) {
          this.#fail(new SubscribeError(`${redactUrl(this.url)} redirects (${what}) to ${res.headers.location ?? '?'}: use that URL`, status));
        } else {
          const hint = status === 401 || status === 403 ? ' (token refused for this path)' : '';
          this.#fail(new SubscribeError(`subscribe to ${this.url} refused: ${detail}${hint}`, status));
        }
      });
    });
    ws.on('open', () => {
      if (ws.protocol !== SUBPROTOCOL) {
        this.#fail(new SubscribeError(`${this.url} does not speak ${SUBPROTOCOL} (got ${JSON.stringify(ws.protocol)})`));
        return;
      }
      this.#lastSeen = Date.now();
      this.#startHeartbeat(ws);
      this.emit('open');
    });
    ws.on('message', (data, isBinary) => {
      this.#lastSeen = Date.now();
      this.#onFrame(ws, data as Buffer, isBinary);
    });
    ws.on('pong', () => {
      this.#lastSeen = Date.now();
    });
    ws.on('ping', () => {
      this.#lastSeen = Date.now();
    });
    ws.on('error', (err) => {
      lastError = err;
      if (/no subprotocol|invalid subprotocol/i.test(err.message)) {
        this.#fail(
          new SubscribeError(`${this.url} does not speak ${SUBPROTOCOL} (${err.message}); is it an original hookbot server?`),
        );
      } else if (CERT_ERRORS.has((err as NodeJS.ErrnoException).code ?? '')) {
        this.#fail(new SubscribeError(`TLS certificate of ${this.url} not trusted: ${err.message} (use --ca FILE or --insecure)`));
      }
    });
    ws.on('close', (code, reason) => {
      end({ code, reason: reason.toString() || (lastError ? lastError.message : `closed (${code})`), error: lastError });
    });
  }

  #onFrame(ws: WebSocket, data: Buffer, isBinary: boolean): void {
    if (ws !== this.#ws && !this.#paused) return;
    if (isBinary) {
      this.emit('warning', 'ignored a binary frame: the server is not speaking hookbot.v1');
      return;
    }
    let frame: { type?: unknown; id?: unknown; since?: unknown };
    try {
      frame = JSON.parse(data.toString('utf8'));
    } catch {
      this.emit('warning', 'ignored a frame that is not JSON');
      return;
    }
    switch (frame.type) {
      case 'message': {
        if (typeof frame.id !== 'string' || !isMessageId(frame.id)) {
          this.emit('warning', 'ignored a message without a valid id');
          return;
        }
        // Replays overlap what was already received; the id order makes that safe to drop.
        if (this.#lastReceived !== undefined && compareIds(frame.id, this.#lastReceived) <= 0) return;
        let message: Message;
        try {
          message = Message.fromJSON(frame as MessageJSON);
        } catch {
          this.emit('warning', `ignored malformed message ${frame.id}`);
          return;
        }
        this.#lastReceived = message.id;
        this.#attempt = 0;
        this.#push({ kind: 'message', message });
        if (this.#queue.length >= this.#opts.maxBuffered && !this.#paused && ws === this.#ws) {
          // The consumer is behind. Rather than buffer without bound (or stop
          // reading and trip heartbeats), step away and resume by id later.
          this.#paused = true;
          ws.close(1000, 'client catching up');
        }
        return;
      }
      case 'gap':
        if (typeof frame.since === 'string') this.#push({ kind: 'gap', since: frame.since });
        return;
      case 'live':
        this.#attempt = 0;
        this.emit('live');
        return;
      default:
        // Unknown envelope types are for newer clients.
        return;
    }
  }

  #onConnectionEnd(ws: WebSocket, info: DisconnectInfo): void {
    if (ws !== this.#ws) return;
    this.#stopHeartbeat();
    this.#ws = undefined;
    if (this.#closing || this.#fatal) return;
    this.emit('disconnect', info);
    if (this.#paused) this.#maybeResume();
    else this.#scheduleReconnect();
  }

  /** Reconnects after a pause once the consumer has drained half the buffer. */
  #maybeResume(): void {
    if (!this.#paused || this.#ws || this.#closing || this.#fatal) return;
    if (this.#queue.length > this.#opts.maxBuffered / 2) return;
    this.#paused = false;
    this.#connect();
  }

  #scheduleReconnect(): void {
    const delayMs = backoffDelay(this.#attempt, { minMs: this.#opts.minBackoffMs, maxMs: this.#opts.maxBackoffMs });
    this.#attempt++;
    this.emit('reconnect', { attempt: this.#attempt, delayMs, since: this.#lastReceived ?? this.#resumeFrom });
    this.#reconnectTimer = setTimeout(() => this.#connect(), delayMs);
  }

  #startHeartbeat(ws: WebSocket): void {
    const { pingIntervalMs, deadlineMs } = this.#opts;
    let lastPing = Date.now();
    const tick = Math.max(5, Math.min(pingIntervalMs, deadlineMs / 4));
    this.#heartbeat = setInterval(() => {
      const now = Date.now();
      if (now - this.#lastSeen >= deadlineMs) {
        this.emit('warning', `no traffic from the server for ${now - this.#lastSeen} ms: reconnecting`);
        // terminate, not close: a stalled path would never complete a close handshake.
        ws.terminate();
        return;
      }
      if (now - lastPing >= pingIntervalMs) {
        lastPing = now;
        try {
          ws.ping();
        } catch {
          // Closing already; the close event handles it.
        }
      }
    }, tick);
  }

  #stopHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }
}

/**
 * Subscribes to a hookbot topic over `hookbot.v1`.
 *
 * ```ts
 * const sub = subscribe('wss://TOKEN@hookbot.example.com/sub/github.com/repo/me/app/');
 * for await (const m of sub) console.log(m.id, m.topic, m.body.toString());
 * ```
 *
 * Throws SubscribeError at once for a bad URL or option; handshake refusals
 * (401/403/400/404) reject the iterator and `closed` instead of retrying.
 */
export function subscribe(url: string, options: SubscribeOptions = {}): Subscription {
  return new Subscription(url, options);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function readSome(stream: NodeJS.ReadableStream, limit: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('utf8').slice(0, limit));
    };
    const timer = setTimeout(done, 2000);
    stream.on('data', (c: Buffer) => {
      if (size < limit) chunks.push(c);
      size += c.length;
      if (size >= limit) done();
    });
    stream.on('end', done);
    stream.on('error', done);
  });
}
