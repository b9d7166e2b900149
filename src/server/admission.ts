/**
 * Admission: the one pipeline every subscribe request goes through, whatever
 * its transport. The checks run in a fixed order, cheapest and least
 * revealing first, so every transport refuses the same request the same way:
 *
 *   shutdown → path → unsafe header → token → since → limits
 *
 * A smee channel (serve --smee) goes through the same steps: its path
 * resolves to its topic, and the capability check (did this server mint the
 * id?) stands where the token check is, since the channel URL is the
 * credential; an id it did not mint is 404, as if no such channel existed.
 *
 * The limits come last so that only a request that would otherwise be served
 * takes a subscriber slot. The result is the admitted subscription or one
 * HttpError, which the transport renders (server/http/respond.ts).
 */
import type { IncomingMessage } from 'node:http';
import { HttpError, Status } from '../protocol/errors.js';
import { parseSince } from '../protocol/message.js';
import { parseEndpoint, UNSAFE_HEADER, UNSAFE_HEADER_ERROR, UNSAFE_HEADER_VALUE, type Endpoint } from '../protocol/topics.js';
import type { Context } from './context.js';
import type { Slot } from './ops/limits.js';
import type { TransportName } from './ops/metrics.js';

/** Where a transport reads a resume point from, in order of preference; the first present one wins. */
export interface SinceSource {
  /** How the source is named in a refusal (`?since=`, `Last-Event-ID header`). */
  name: string;
  read(req: IncomingMessage, query: URLSearchParams): string | undefined;
}

export const SINCE_QUERY: SinceSource = { name: 'since', read: (_req, query) => query.get('since') ?? undefined };

export interface Admitted {
  endpoint: Endpoint;
  query: URLSearchParams;
  /** The id to resume after (`0-0`: everything retained); undefined: live only. */
  since: string | undefined;
  /** The subscriber's place under the limits: released when its connection ends. */
  slot: Slot;
}

export const SHUTTING_DOWN = () => new HttpError(Status.SERVICE_UNAVAILABLE, 'server is shutting down', { connection: 'close' });

/** Every query-less request shares it (most publishes have none); nothing writes to a parsed query. */
const NO_QUERY = new URLSearchParams();

/** Splits a request target into its path and its query. */
export function splitUrl(url: string | undefined): { path: string; query: URLSearchParams } {
  const target = url ?? '/';
  const q = target.indexOf('?');
  return q === -1 ? { path: target, query: NO_QUERY } : { path: target.slice(0, q), query: new URLSearchParams(target.slice(q + 1)) };
}

/**
 * Admits a subscriber or throws the HttpError that refuses it. `transport`
 * names it in metrics; `sinceSources` are where this transport's clients put
 * their resume point.
 */
export function admit(ctx: Context, req: IncomingMessage, transport: TransportName, sinceSources: readonly SinceSource[]): Admitted {
  if (ctx.shuttingDown) throw SHUTTING_DOWN();

  const { path, query } = splitUrl(req.url);
  const endpoint = parseEndpoint(path, ctx.channels !== undefined);
  if (endpoint.action === 'pub') throw new HttpError(Status.BAD_REQUEST, 'publish with POST; subscribe at /sub/<topic>');

  if (endpoint.unsafe && req.headers[UNSAFE_HEADER] !== UNSAFE_HEADER_VALUE) throw new HttpError(Status.BAD_REQUEST, '', {}, UNSAFE_HEADER_ERROR);

  // Checked once per connection, so kept out of the per-path digest cache that publishes use.
  const denied = credentialError(ctx, endpoint, req.headers.authorization, false);
  if (denied) throw denied;

  let since: string | undefined;
  for (const source of sinceSources) {
    const value = source.read(req, query);
    if (value === undefined || value === '') continue;
    since = parseSince(value, source.name);
    break;
  }

  const slot = ctx.limits.admitSubscriber(req);
  if (slot instanceof HttpError) {
    ctx.metrics.subscriberRefused(transport, slot.status === Status.SERVICE_UNAVAILABLE ? 'server_limit' : 'per_ip_limit');
    throw slot;
  }
  return { endpoint, query, since, slot };
}

/**
 * Why a request may not use `endpoint`, for publishes and subscribes alike: a
 * channel's URL is its credential, anyone may publish to the unsafe
 * namespace (its readers verify what arrives), and everything else needs a
 * token for its path. `cache`: keep the path's digests for repeat checks.
 */
export function credentialError(ctx: Context, endpoint: Endpoint, authorization: string | undefined, cache: boolean): HttpError | undefined {
  if (endpoint.channel !== undefined) return ctx.channels?.verify(endpoint.channel) ? undefined : noSuchChannel();
  if (endpoint.unsafe && endpoint.action === 'pub') return undefined;
  return ctx.tokens.verifyAuthorization(endpoint.path, authorization, cache) ? undefined : unauthorized();
}

/** A channel id this server did not mint: nothing says whether it was ever anything. */
export function noSuchChannel(): HttpError {
  return new HttpError(Status.NOT_FOUND, 'no such channel');
}

function unauthorized(): HttpError {
  return new HttpError(Status.UNAUTHORIZED, '', { 'www-authenticate': 'Basic realm="hookbot"' });
}
