/**
 * The HTTP entry: routes every plain request. Publishing and `/status` are
 * the hot paths and are handled on node's request/response directly; a
 * subscribe by Server-Sent Events goes to the SSE transport; the operational
 * endpoints go to the express app in ./ops.ts.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { NEW_CHANNEL_PATH } from '../../protocol/channels.js';
import { HttpError, Status } from '../../protocol/errors.js';
import { parseEndpoint, type Endpoint } from '../../protocol/topics.js';
import { splitUrl } from '../admission.js';
import type { Context } from '../context.js';
import { wantsEventStream, type SseTransport } from '../transports/sse.js';
import { ChannelRoutes } from './channels.js';
import { declinedUpgrade } from './connections.js';
import { createOpsApp, isOpsPath } from './ops.js';
import { publish } from './publish.js';
import { asHttpError, reply, replyError } from './respond.js';

export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => void;

const NOT_A_SUBSCRIPTION = new HttpError(
  Status.BAD_REQUEST,
  'subscribe with a WebSocket upgrade, or with Accept: text/event-stream for Server-Sent Events',
);

export function createHttpHandler(ctx: Context, sse: SseTransport): HttpHandler {
  const app = createOpsApp(ctx);
  // serve --smee: /new and the channel paths (see ./channels.ts).
  const channels = ctx.channels ? new ChannelRoutes(ctx, sse) : undefined;

  return (req: IncomingMessage, res: ServerResponse): void => {
    // An upgrade offer we did not take may leave the parser in upgrade mode: this connection serves one request.
    if (declinedUpgrade(req)) res.shouldKeepAlive = false;
    const refused = ctx.limits.connectionRefusal(req.socket);
    if (refused) {
      res.shouldKeepAlive = false;
      return replyError(res, refused);
    }
    const { path, query } = splitUrl(req.url);
    if (path === '/status') return reply(res, Status.OK, 'OK');
    if (isOpsPath(path)) return void app(req as Parameters<typeof app>[0], res as Parameters<typeof app>[1]);

    if (channels && path === NEW_CHANNEL_PATH) return channels.mint(req, res);

    let endpoint: Endpoint;
    try {
      endpoint = parseEndpoint(path, channels !== undefined);
    } catch (err) {
      return replyError(res, asHttpError(err));
    }
    if (endpoint.channel !== undefined) return channels!.handle(req, res, endpoint, query);
    const method = req.method ?? 'GET';

    if (endpoint.action === 'pub' || (endpoint.action === 'any' && method === 'POST')) {
      if (method !== 'POST') return replyError(res, new HttpError(Status.METHOD_NOT_ALLOWED, 'publish with POST', { allow: 'POST' }));
      return publish(ctx, req, res, endpoint, query);
    }
    if (endpoint.action === 'sub' || (endpoint.action === 'any' && (method === 'GET' || method === 'HEAD'))) {
      if (method !== 'GET') return replyError(res, new HttpError(Status.METHOD_NOT_ALLOWED, 'subscribe with GET', { allow: 'GET' }));
      if (wantsEventStream(req)) return sse.handle(req, res);
      return replyError(res, NOT_A_SUBSCRIPTION);
    }
    return replyError(res, new HttpError(Status.NOT_IMPLEMENTED, 'POST publishes, GET subscribes'));
  };
}
