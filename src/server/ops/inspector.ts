/**
 * The inspector's JSON API (the page itself is static, in public/inspector/).
 *
 * Every call needs a token for `/_/` (or a master token for `/`). That token
 * is an admin token: it reads the recent messages of every topic, unsafe ones
 * included, and re-publishes them. http.ts mounts these routes on its express
 * app; this module only deals in plain requests and answers.
 */
import { fileURLToPath } from 'node:url';
import type { Context } from '../context.js';
import { isMessageId, type Headers, type Message } from '../../protocol/message.js';

/** The static page, found relative to this file so it works from src/ and from dist/. */
export const INSPECTOR_DIR = fileURLToPath(new URL('../../../public/inspector/', import.meta.url));
/** Styles and DOM helpers every page shares (the inspector and the channel pages), served at /_/common/. */
export const COMMON_PAGE_DIR = fileURLToPath(new URL('../../../public/common/', import.meta.url));

/** The path an inspector token is made for. */
export const INSPECTOR_PATH = '/_/';

/** Messages shown per topic. */
const RECENT = 50;
/** Topics listed at most, so one call stays small whatever the traffic. */
const MAX_TOPICS = 1000;
/** Per-topic dispatch counts kept while watched. */
const MAX_COUNTED_TOPICS = 10_000;
/** Counting stops this long after the last API call, so an unwatched server pays nothing. */
const WATCH_IDLE_MS = 5 * 60_000;
const MAX_TOPIC_LENGTH = 4096;

/** Header names whose values are credentials: shown as "[redacted]". */
const SECRET_HEADER = /token|secret|password|authorization|cookie|api-key|apikey/i;

export const REDACTED = '[redacted]';

export function redactHeaders(headers: Headers): Headers {
  const out: Headers = {};
  for (const name in headers) out[name] = SECRET_HEADER.test(name) ? REDACTED : headers[name];
  return out;
}

export interface ApiRequest {
  query: Record<string, unknown>;
  body: unknown;
}

export interface ApiResponse {
  status: number;
  body: unknown;
}

export interface ApiRoute {
  method: 'get' | 'post';
  /** Below /_/api. */
  path: string;
  handle(req: ApiRequest): Promise<ApiResponse>;
}

interface TopicRow {
  topic: string;
  subscribers: number;
  messages: number;
  bytes: number;
  /** Messages dispatched since the inspector started watching (clients derive rates from it). */
  dispatched: number;
}

export const error = (status: number, message: string): ApiResponse => ({ status, body: { error: message } });

export class Inspector {
  readonly #ctx: Context;
  readonly #counts = new Map<string, number>();
  #dispatched = 0;
  #watching = false;
  #lastCall = 0;
  readonly routes: ApiRoute[];

  constructor(ctx: Context) {
    this.#ctx = ctx;
    ctx.broker.onDispatch((m) => {
      if (!this.#watching) return;
      this.#dispatched++;
      const n = this.#counts.get(m.topic);
      if (n !== undefined) this.#counts.set(m.topic, n + 1);
      else if (this.#counts.size < MAX_COUNTED_TOPICS) this.#counts.set(m.topic, 1);
    });
    this.routes = [
      { method: 'get', path: '/topics', handle: () => this.#topics() },
      { method: 'get', path: '/messages', handle: (req) => this.#messages(req) },
      { method: 'post', path: '/redeliver', handle: (req) => this.#redeliver(req) },
    ];
  }

  /** Whether an Authorization header carries an inspector (or master) token. */
  authorized(authorization: string | undefined): boolean {
    const ok = this.#ctx.tokens.verifyAuthorization(INSPECTOR_PATH, authorization);
    if (ok) this.#watch();
    return ok;
  }

  #watch(): void {
    this.#lastCall = Date.now();
    if (this.#watching) return;
    this.#watching = true;
    const check = () => {
      if (Date.now() - this.#lastCall >= WATCH_IDLE_MS) {
        this.#watching = false;
        this.#counts.clear();
      } else {
        setTimeout(check, WATCH_IDLE_MS).unref();
      }
    };
    setTimeout(check, WATCH_IDLE_MS).unref();
  }

  async #topics(): Promise<ApiResponse> {
    const { broker } = this.#ctx;
    const rows = new Map<string, TopicRow>();
    const row = (topic: string) => {
      let r = rows.get(topic);
      if (!r) rows.set(topic, (r = { topic, subscribers: 0, messages: 0, bytes: 0, dispatched: 0 }));
      return r;
    };
    for (const [topic, n] of broker.topics()) row(topic).subscribers = n;
    let historyOk = true;
    try {
      for (const h of await broker.backend.historyTopics()) {
        const r = row(h.topic);
        r.messages = h.messages;
        r.bytes = h.bytes;
      }
    } catch {
      historyOk = false;
    }
    for (const [topic, n] of this.#counts) row(topic).dispatched = n;
    const all = [...rows.values()].sort((a, b) => (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0));
    return {
      status: 200,
      body: {
        time: Date.now(),
        dispatched: this.#dispatched,
        subscriptions: broker.subscriptions,
        history: historyOk,
        truncated: all.length > MAX_TOPICS,
        topics: all.slice(0, MAX_TOPICS),
      },
    };
  }

  async #messages(req: ApiRequest): Promise<ApiResponse> {
    const topic = req.query.topic;
    if (typeof topic !== 'string' || topic === '' || topic.length > MAX_TOPIC_LENGTH) return error(400, 'topic is required (?topic=foo/bar)');
    const since = req.query.since;
    if (since !== undefined && (typeof since !== 'string' || !isMessageId(since))) return error(400, 'since must be a message id such as 1700000000000-0');
    try {
      const result = await this.#ctx.broker.history(topic, since, RECENT);
      return { status: 200, body: { topic, gap: result.gap, messages: result.messages.map(view) } };
    } catch (err) {
      return error(503, `history unavailable: ${(err as Error).message}`);
    }
  }

  async #redeliver(req: ApiRequest): Promise<ApiResponse> {
    const body = req.body as { topic?: unknown; id?: unknown } | undefined;
    const topic = body?.topic;
    const id = body?.id;
    if (typeof topic !== 'string' || topic === '' || topic.length > MAX_TOPIC_LENGTH) return error(400, 'topic is required: {"topic": "...", "id": "..."}');
    if (typeof id !== 'string' || !isMessageId(id)) return error(400, 'id must be a message id such as 1700000000000-0');
    return redeliver(this.#ctx, topic, id, 'inspector');
  }
}

/**
 * Re-publishes a message still in `topic`'s history with its original headers
 * and body (the inspector's and a smee channel page's Redeliver); `by` names
 * who asked, in the log line.
 */
export async function redeliver(ctx: Context, topic: string, id: string, by: string): Promise<ApiResponse> {
  const { broker, log } = ctx;
  if (ctx.shuttingDown) return error(503, 'server is shutting down');
  let original: Message | undefined;
  try {
    original = (await broker.history(topic)).messages.find((m) => m.id === id);
  } catch (err) {
    return error(503, `history unavailable: ${(err as Error).message}`);
  }
  if (!original) return error(404, `message ${id} is no longer in the history of ${topic}`);
  try {
    const copy = await broker.publish(original.topic, original.headers, original.body);
    log.info({ topic: original.topic, original: id, id: copy.id }, `${by} redelivered a message`);
    return { status: 200, body: { id: copy.id, topic: original.topic, original: id } };
  } catch (err) {
    return error(503, `publish failed: ${(err as Error).message}`);
  }
}

/** A message as the inspector shows it: credentials redacted, body as text or base64. */
function view(m: Message): object {
  const json = m.toJSON();
  return { ...json, headers: redactHeaders(json.headers), size: m.body.length };
}
