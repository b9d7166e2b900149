/**
 * smee.io- and gosmee-compatible channels (serve --smee): the requests on a
 * channel's URL, which is its own credential.
 *
 *   GET|HEAD /new              307 to a fresh channel URL on this server
 *   POST /<id>                 publish (any content type, any bytes) → 200, empty body
 *   GET /<id>, event stream    smee-client's format (gosmee's with ?stream= or a gosmee User-Agent)
 *   GET /<id>, WebSocket       hookbot.v1 or raw, as on /sub/ (`hookbot sub`/`forward`)
 *   GET /events/<id>           gosmee's format (current gosmee clients)
 *   GET|HEAD /<id>, otherwise  the channel's page (public/smee/)
 *
 * Publishing and subscribing go through the ordinary publish path and the
 * admission pipeline, which check that this server minted the id; only the
 * page is served here, so it checks for itself.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError, Status } from '../../protocol/errors.js';
import type { Endpoint } from '../../protocol/topics.js';
import { noSuchChannel } from '../admission.js';
import type { Context } from '../context.js';
import { CHANNEL_PAGE_CSP, CHANNEL_PAGE_DIR } from '../ops/channel-page.js';
import { gosmeeEncoder } from '../transports/gosmee.js';
import { smeeEncoder } from '../transports/smee.js';
import { wantsEventStream, type SseTransport } from '../transports/sse.js';
import { publish } from './publish.js';
import { NOSNIFF, replyError, TEXT } from './respond.js';

/** A Host (or X-Forwarded-Host) that can go into a URL as it is. */
const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?$/;
const MAX_HOST = 255;

/**
 * The entry of a proxy-set header that the nearest of `hops` trusted proxies
 * wrote, counted from the right as for X-Forwarded-For (entries further left
 * came from the client).
 */
function forwarded(value: string | string[] | undefined, hops: number): string | undefined {
  if (value === undefined) return undefined;
  const entries = (Array.isArray(value) ? value.join(',') : value).split(',').map((s) => s.trim()).filter((s) => s !== '');
  return entries.length === 0 ? undefined : entries[Math.max(0, entries.length - hops)];
}

/** Whether a channel event-stream request comes from gosmee: its v0.22 client's `?stream=`, or its User-Agent. */
function isGosmee(req: IncomingMessage, query: URLSearchParams): boolean {
  return query.has('stream') || /gosmee/i.test(req.headers['user-agent'] ?? '');
}

export class ChannelRoutes {
  readonly #ctx: Context;
  readonly #sse: SseTransport;
  /** Read once: the page is the same static file for every channel (it reads its id from its URL). */
  readonly #page: Buffer;

  constructor(ctx: Context, sse: SseTransport) {
    this.#ctx = ctx;
    this.#sse = sse;
    this.#page = readFileSync(CHANNEL_PAGE_DIR + 'index.html');
  }

  /** Where channel URLs start: --public-url, else this request's scheme and host (a trusted proxy's, behind --trust-proxy). */
  baseUrl(req: IncomingMessage): string {
    const { config } = this.#ctx;
    if (config.publicUrl) return config.publicUrl;
    const hops = config.trustProxy;
    const proto = hops > 0 ? forwarded(req.headers['x-forwarded-proto'], hops)?.toLowerCase() : undefined;
    const scheme = proto === 'http' || proto === 'https' ? proto : config.tls ? 'https' : 'http';
    const host = (hops > 0 ? forwarded(req.headers['x-forwarded-host'], hops) : undefined) ?? req.headers.host;
    if (!host || host.length > MAX_HOST || !HOST_RE.test(host)) {
      throw new HttpError(Status.BAD_REQUEST, 'cannot tell this server\'s address from the Host header; the operator can set --public-url');
    }
    return `${scheme}://${host}/`;
  }

  /** `GET`/`HEAD /new`: a redirect to a fresh channel, as smee.io answers (smee-client's createChannel reads its Location). */
  mint(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') return replyError(res, new HttpError(Status.METHOD_NOT_ALLOWED, 'GET /new mints a channel', { allow: 'GET, HEAD' }));
    let url: string;
    try {
      url = this.baseUrl(req) + this.#ctx.channels!.mint();
    } catch (err) {
      return replyError(res, err as HttpError);
    }
    const body = `${Status.TEMPORARY_REDIRECT} Temporary Redirect: ${url}\n`;
    res.writeHead(Status.TEMPORARY_REDIRECT, {
      location: url,
      'cache-control': 'no-store',
      'content-type': TEXT,
      'content-length': Buffer.byteLength(body),
      'x-content-type-options': NOSNIFF,
    });
    res.end(body);
  }

  /** A plain request on a channel path (`endpoint.channel` set). */
  handle(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, query: URLSearchParams): void {
    const method = req.method ?? 'GET';
    // gosmee's /events/<id>: a stream whatever the Accept header says, as gosmee serves it.
    if (endpoint.action === 'sub') {
      if (method !== 'GET') return this.#refuse(res, endpoint, new HttpError(Status.METHOD_NOT_ALLOWED, 'subscribe with GET', { allow: 'GET' }));
      return this.#sse.handle(req, res, gosmeeEncoder);
    }
    if (method === 'POST') return publish(this.#ctx, req, res, endpoint, query);
    if (method === 'GET' && wantsEventStream(req)) return this.#sse.handle(req, res, isGosmee(req, query) ? gosmeeEncoder : smeeEncoder);
    if (method === 'GET' || method === 'HEAD') return this.#servePage(res, endpoint);
    this.#refuse(res, endpoint, new HttpError(Status.METHOD_NOT_ALLOWED, 'POST publishes; GET subscribes (Accept: text/event-stream) or shows the channel page', { allow: 'GET, HEAD, POST' }));
  }

  /** An unminted id is 404 whatever was asked of it. */
  #refuse(res: ServerResponse, endpoint: Endpoint, err: HttpError): void {
    replyError(res, this.#ctx.channels!.verify(endpoint.channel!) ? err : noSuchChannel());
  }

  #servePage(res: ServerResponse, endpoint: Endpoint): void {
    if (!this.#ctx.channels!.verify(endpoint.channel!)) return replyError(res, noSuchChannel());
    res.writeHead(Status.OK, {
      'content-type': 'text/html; charset=utf-8',
      'content-length': this.#page.length,
      // The same URL is an event stream for Accept: text/event-stream.
      vary: 'accept',
      'cache-control': 'no-store',
      'content-security-policy': CHANNEL_PAGE_CSP,
      'referrer-policy': 'no-referrer',
      'x-content-type-options': NOSNIFF,
    });
    res.end(this.#page);
  }
}
