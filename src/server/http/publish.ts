/**
 * Publishing: `POST /pub/<topic>` (and `/unsafe/pub/`, and `POST /<topic>`),
 * the hot path. Checks run cheapest first: shutdown, the rate limit (before
 * the token, so guessing tokens is rate limited too), the token, the query;
 * then the body is read as a stream, never buffered past --max-body, and the
 * answer is `200` only once the backend has accepted the message.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError, Status } from '../../protocol/errors.js';
import { Message, type Headers } from '../../protocol/message.js';
import type { Endpoint } from '../../protocol/topics.js';
import { unauthorized, SHUTTING_DOWN } from '../admission.js';
import { BackendUnavailableError, MAX_IDEMPOTENCY_KEY, type PublishOptions } from '../backends/backend.js';
import type { Context } from '../context.js';
import type { RejectReason } from '../ops/metrics.js';
import { ENVELOPES } from '../routers/envelopes.js';
import { replyError, TEXT } from './respond.js';

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

/** A refusal with the metrics reason it counts under. */
function refuse(ctx: Context, res: ServerResponse, reason: RejectReason, err: HttpError): void {
  ctx.metrics.publishRejected(reason);
  replyError(res, err);
}

export function publish(ctx: Context, req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, query: URLSearchParams): void {
  const startedAt = performance.now();
  if (ctx.shuttingDown) return refuse(ctx, res, 'unavailable', SHUTTING_DOWN());
  const limited = ctx.limits.publish(req);
  if (limited) return refuse(ctx, res, 'rate_limited', limited);
  if (!endpoint.unsafe && !ctx.tokens.verifyAuthorization(endpoint.path, req.headers.authorization)) return refuse(ctx, res, 'unauthorized', unauthorized());

  const metadata = query.get('extra-metadata');
  const envelope = metadata === null ? undefined : ENVELOPES[metadata];
  if (metadata !== null && !envelope) {
    return refuse(ctx, res, 'bad_request', new HttpError(Status.BAD_REQUEST, `bad ?extra-metadata=: supported values are ${Object.keys(ENVELOPES).join(', ')}`));
  }

  // A retry of a publish already stored gets the original id back; GitHub's delivery id serves for its envelopes.
  const idempotencyHeader = req.headers['idempotency-key'] ?? (metadata === 'github' ? req.headers['x-github-delivery'] : undefined);
  const idempotencyKey = (Array.isArray(idempotencyHeader) ? idempotencyHeader[0] : idempotencyHeader) || undefined;
  if (idempotencyKey !== undefined && idempotencyKey.length > MAX_IDEMPOTENCY_KEY) {
    return refuse(ctx, res, 'bad_request', new HttpError(Status.BAD_REQUEST, `Idempotency-Key is longer than ${MAX_IDEMPOTENCY_KEY} characters`));
  }
  const options: PublishOptions | undefined = idempotencyKey === undefined ? undefined : { idempotencyKey };

  const max = ctx.config.maxBody;
  const tooLarge = () => {
    // Answer, then stop reading: the rest of the body is never buffered.
    refuse(ctx, res, 'too_large', new HttpError(Status.PAYLOAD_TOO_LARGE, `body exceeds --max-body of ${max} bytes`, { connection: 'close' }));
    req.unpipe();
    req.resume();
    res.on('finish', () => req.destroy());
  };
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) return tooLarge();

  const chunks: Buffer[] = [];
  let size = 0;
  let failed = false;
  req.on('data', (chunk: Buffer) => {
    if (failed) return;
    size += chunk.length;
    if (size > max) {
      failed = true;
      chunks.length = 0;
      return tooLarge();
    }
    chunks.push(chunk);
  });
  req.on('error', () => {
    failed = true;
  });
  req.on('end', () => {
    if (failed) return;
    const raw = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
    const headers = keptHeaders(req.headers, ctx.config.keepHeaders);
    const body = envelope ? envelope(req.headers, raw) : raw;
    const accepted = (message: Message) => {
      ctx.metrics.publishAccepted(size, startedAt);
      res.writeHead(Status.OK, ['content-type', TEXT, 'content-length', '3', 'x-content-type-options', 'nosniff', 'x-hookbot-message-id', message.id]);
      res.end(OK);
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
