/**
 * A smee channel's page (static, in public/smee/) and the one call it makes
 * besides subscribing: Redeliver. The channel id is the credential, as for
 * publishing and subscribing, so Redeliver is scoped to that one channel's
 * history; it is rate limited like a publish.
 */
import type { IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import { channelTopic } from '../../protocol/channels.js';
import { isMessageId } from '../../protocol/message.js';
import type { Context } from '../context.js';
import { error, redeliver, type ApiResponse } from './inspector.js';

/** Found relative to this file so it works from src/ and from dist/. */
export const CHANNEL_PAGE_DIR = fileURLToPath(new URL('../../../public/smee/', import.meta.url));

/**
 * The page shows webhook bodies posted by anyone holding the URL: nothing but
 * its own files may run or be fetched, and the URL (the credential) never
 * leaves in a Referer.
 */
export const CHANNEL_PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Where the page's script, styles and Redeliver live: an operational path, never a topic or a channel. */
export const CHANNEL_ASSETS_PATH = '/_/smee';
export const CHANNEL_ASSETS: ReadonlySet<string> = new Set(['/channel.js', '/channel.css']);

/** `POST /_/smee/redeliver` with `{"channel","id"}`: re-publishes one message of that channel's history. */
export async function redeliverOnChannel(ctx: Context, req: IncomingMessage, body: unknown): Promise<ApiResponse> {
  const { channel, id } = (body ?? {}) as { channel?: unknown; id?: unknown };
  if (typeof channel !== 'string' || !ctx.channels?.verify(channel)) return error(404, 'no such channel');
  if (typeof id !== 'string' || !isMessageId(id)) return error(400, 'id must be a message id such as 1700000000000-0');
  const limited = ctx.limits.publish(req);
  if (limited) return { status: limited.status, body: { error: limited.message } };
  return redeliver(ctx, channelTopic(channel), id, 'channel page');
}
