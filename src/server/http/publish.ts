/**
 * Publishing: `POST /pub/<topic>` (and `/unsafe/pub/`, and `POST /<topic>`),
 * the hot path. Checks run cheapest first: shutdown, the rate limit (before
 * the token, so guessing tokens is rate limited too), the token, the query;
 * then the body is read as a stream, never buffered past --max-body, and the
 * answer is `200` only once the backend has accepted the message.
 *
 * A smee channel (`POST /<channel id>`, serve --smee) is the same publish
 * with the channel's capability in place of the token: it keeps every
 * end-to-end request header and its query string (the query is the sender's,
 * so `?extra-metadata=` means nothing there), and answers `200` with an empty
 * body, as smee.io does.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError, Status } from '../../protocol/errors.js';
import { Message, type Headers } from '../../protocol/message.js';
import { CHANNEL_QUERY_HEADER, HOP_HEADERS } from '../../protocol/channels.js';
import type { Endpoint } from '../../protocol/topics.js';
import { credentialError, SHUTTING_DOWN } from '../admission.js';
import { BackendUnavailableError, MAX_IDEMPOTENCY_KEY, type PublishOptions } from '../backends/backend.js';
import type { Context } from '../context.js';
import type { RejectReason } from '../ops/metrics.js';
import { envelopeFor, ROUTER_NAMES } from '../routers/registry.js';
import { lingeringClose } from './connections.js';
import { NOSNIFF, replyError, TEXT } from './respond.js';

// A string body lets node send status line, headers and body in one write.
const OK = 'OK\n';

/** Headers kept with every message so a client can re-deliver it as the original request. */
export function keptHeaders(raw: IncomingMessage['headers'], extra: readonly string[]): Headers {
  const out: Headers = {};
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

/**
 * Headers that are about one hop or hold a credential: never kept with a
 * channel message. A subscriber's client sets its own hop headers (some, such
 * as `connection`, make fetch refuse the request outright), and a channel's
 * messages are readable by anyone holding its URL.
 */
const NOT_KEPT_ON_CHANNELS = new Set([...HOP_HEADERS, 'expect', 'http2-settings', 'cookie']);

/**
 * What a channel message keeps: every other request header, as smee.io
 * relays them (smee-client and gosmee forward them), and the raw query
 * string under CHANNEL_QUERY_HEADER.
 */
export function channelHeaders(raw: IncomingMessage['headers'], url: string | undefined): Headers {
  const out: Headers = {};
  for (const name in raw) {
    const value = raw[name];
    if (value === undefined || NOT_KEPT_ON_CHANNELS.has(name)) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  const q = url?.indexOf('?') ?? -1;
  if (q !== -1 && q < url!.length - 1) out[CHANNEL_QUERY_HEADER] = url!.slice(q + 1);
  return out;
}

/** A refusal with the metrics reason it counts under. */
function refuse(ctx: Context, res: ServerResponse, reason: RejectReason, err: HttpError): void {
  ctx.metrics.publishRejected(reason);
  replyError(res, err);
}

/**
 * A refusal sent before the body is read (or while it arrives): the rest of
 * the body is never buffered, the connection closes after the answer, and
 * it closes gracefully so the client reads the answer, not a reset.
 */
function refuseUnread(ctx: Context, req: IncomingMessage, res: ServerResponse, reason: RejectReason, err: HttpError): void {
  lingeringClose(req);
  refuse(ctx, res, reason, new HttpError(err.status, err.message, { ...err.headers, connection: 'close' }, err.body));
}

export function publish(ctx: Context, req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, query: URLSearchParams): void {
  const startedAt = performance.now();
  const { config, limits } = ctx;
  if (ctx.shuttingDown) return refuseUnread(ctx, req, res, 'unavailable', SHUTTING_DOWN());
  // Before the token, so guessing tokens is rate limited too.
  const limited = limits.publish(req);
  if (limited) return refuseUnread(ctx, req, res, 'rate_limited', limited);
  const denied = credentialError(ctx, endpoint, req.headers.authorization, true);
  if (denied) return refuseUnread(ctx, req, res, 'unauthorized', denied);
  const channel = endpoint.channel !== undefined;

  const metadata = channel ? null : query.get('extra-metadata');
  const envelope = metadata === null ? undefined : envelopeFor(metadata);
  if (metadata !== null && !envelope) {
    return refuseUnread(ctx, req, res, 'bad_request', new HttpError(Status.BAD_REQUEST, `bad ?extra-metadata=: supported values are ${ROUTER_NAMES.join(', ')}`));
  }

  // A retry of a publish already stored gets the original id back; GitHub's delivery id serves for its envelopes.
  const idempotencyHeader = req.headers['idempotency-key'] ?? (metadata === 'github' ? req.headers['x-github-delivery'] : undefined);
  const idempotencyKey = (Array.isArray(idempotencyHeader) ? idempotencyHeader[0] : idempotencyHeader) || undefined;
  if (idempotencyKey !== undefined && idempotencyKey.length > MAX_IDEMPOTENCY_KEY) {
    return refuseUnread(ctx, req, res, 'bad_request', new HttpError(Status.BAD_REQUEST, `Idempotency-Key is longer than ${MAX_IDEMPOTENCY_KEY} characters`));
  }
  const options: PublishOptions | undefined = idempotencyKey === undefined ? undefined : { idempotencyKey };

  const max = config.maxBody;
  const tooLarge = () => new HttpError(Status.PAYLOAD_TOO_LARGE, `body exceeds --max-body of ${max} bytes`);
  const busy = () =>
    new HttpError(Status.SERVICE_UNAVAILABLE, `the server is receiving its maximum of ${limits.config.maxBodyInFlight} body bytes at once (--max-body-in-flight); retry shortly`, { 'retry-after': '1' });
  const declaredHeader = req.headers['content-length'];
  const declared = declaredHeader === undefined ? undefined : Number(declaredHeader);
  if (declared !== undefined && declared > max) return refuseUnread(ctx, req, res, 'too_large', tooLarge());
  // A declared body is reserved whole up front; a chunked one as it arrives.
  let reserved = 0;
  if (declared !== undefined) {
    if (!limits.reserveBody(declared)) return refuseUnread(ctx, req, res, 'unavailable', busy());
    reserved = declared;
  }

  // A declared body is copied into its one buffer as it arrives, so the turn that ends it
  // does not also copy it whole (18 MiB: about 10 ms); a chunked one is joined at the end.
  let whole: Buffer | undefined;
  let chunks: Buffer[] = [];
  let size = 0;
  let settled = false;
  /** Stops receiving: the budget and the buffered chunks are given back at once, whatever happens next. */
  const finish = () => {
    settled = true;
    clearTimeout(timer);
    limits.releaseBody(reserved);
    reserved = 0;
    whole = undefined;
    chunks = [];
  };
  const stop = (reason: RejectReason, err: HttpError) => {
    finish();
    refuseUnread(ctx, req, res, reason, err);
  };
  const timer = setTimeout(() => {
    if (!settled) stop('timeout', new HttpError(Status.REQUEST_TIMEOUT, `body not received within --body-timeout of ${config.bodyTimeoutMs} ms`));
  }, config.bodyTimeoutMs);
  timer.unref();

  req.on('data', (chunk: Buffer) => {
    if (settled) return;
    size += chunk.length;
    if (size > max) return stop('too_large', tooLarge());
    if (declared === undefined) {
      if (!limits.reserveBody(chunk.length)) return stop('unavailable', busy());
      reserved += chunk.length;
      chunks.push(chunk);
    } else {
      chunk.copy((whole ??= Buffer.allocUnsafe(declared)), size - chunk.length);
    }
  });
  // The client went away (or the socket failed) mid-body: nothing to answer, memory back now.
  req.on('close', () => {
    if (!settled) finish();
  });
  req.on('end', () => {
    if (settled) return;
    const raw = whole?.subarray(0, size) ?? (chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    finish();
    const headers = channel ? channelHeaders(req.headers, req.url) : keptHeaders(req.headers, config.keepHeaders);
    const body = envelope ? envelope(req.headers, raw) : raw;
    const answer = channel ? '' : OK;
    const accepted = (message: Message) => {
      ctx.metrics.publishAccepted(size, startedAt);
      res.writeHead(Status.OK, ['content-type', TEXT, 'content-length', String(answer.length), 'x-content-type-options', NOSNIFF, 'x-hookbot-message-id', message.id]);
      res.end(answer);
    };
    const failedToStore = (err: Error) => {
      if (err instanceof BackendUnavailableError) return refuse(ctx, res, 'unavailable', new HttpError(Status.SERVICE_UNAVAILABLE, err.message, { 'retry-after': '1' }));
      if (err instanceof HttpError) return refuse(ctx, res, 'bad_request', err);
      ctx.log.error({ topic: endpoint.topic, err: err.message }, 'publish failed');
      refuse(ctx, res, 'error', new HttpError(Status.INTERNAL_SERVER_ERROR, 'publish failed'));
    };
    let result: Message | Promise<Message>;
    try {
      result = ctx.broker.publishNow(endpoint.topic, headers, body, options);
    } catch (err) {
      return failedToStore(err as Error);
    }
    if (result instanceof Message) accepted(result);
    else result.then(accepted, failedToStore);
  });
}
