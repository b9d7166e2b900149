/**
 * The gitlab router: a GitLab group/instance webhook in, per-project channels out.
 *
 * GitLab does not sign payloads; it sends the webhook's secret token in
 * `X-Gitlab-Token`. Anyone can post to `/unsafe/pub/gitlab.com/...`, so a
 * delivery is re-published only if its token equals a configured one, and the
 * token is never passed on: re-published messages carry neither the header
 * nor the envelope's Token, or every project's subscriber could forge events.
 * Verified deliveries become:
 * - Push Hook to refs/heads/<b>: `{"Branch","Repo","SHA","Type","Who"}` on
 *   `gitlab.com/repo/<path_with_namespace>/branch/<b>`;
 * - Tag Push Hook to refs/tags/<t>: `{"Repo","SHA","Tag","Type","Who"}` on `.../tag/<t>`;
 * - every event: the envelope (Token blanked) on `.../event/<slug>`, where the
 *   slug of "Merge Request Hook" is `merge_request`.
 */
import type { Headers, Message } from '../../protocol/message.js';
import { matchesAny } from '../../util/safe-equal.js';
import { RecentIds } from './dedupe.js';
import {
  type Output,
  type Router,
  type RouterHost,
  type SeenStore,
  claimDelivery,
  decodeBase64,
  goJSON,
  headerValue,
  isSafeTopicPart,
  logSafe,
  objectField,
  parseJSON,
  publishAll,
  refSummaries,
  releaseAll,
  serialHandler,
  stringField,
} from './router.js';

export const GITLAB_FEED = '/unsafe/gitlab.com/';

type RequestHeaders = Readonly<Record<string, string | string[] | undefined>>;

/**
 * The `?extra-metadata=gitlab` body, shaped like the github one:
 * `{"Delivery","Event","Payload","Token"}` (keys sorted, Go-style JSON), where
 * Token is X-Gitlab-Token, Event is X-Gitlab-Event, Delivery is Idempotency-Key
 * (stable across GitLab's retries, GitLab 17.4+) or else X-Gitlab-Event-UUID,
 * Payload is the standard base64 of the raw body; absent headers are "".
 * `headers` are the lower-case request headers (Idempotency-Key is not a kept
 * message header, which is why the envelope carries it).
 */
export function gitlabEnvelope(headers: RequestHeaders, body: Buffer): Buffer {
  return goJSON({
    Token: headerValue(headers, 'x-gitlab-token'),
    Event: headerValue(headers, 'x-gitlab-event'),
    Delivery: headerValue(headers, 'idempotency-key') || headerValue(headers, 'x-gitlab-event-uuid'),
    Payload: body.toString('base64'),
  });
}

/** "Merge Request Hook" → "merge_request"; undefined if it doesn't look like a GitLab event name. */
export function gitlabEventSlug(event: string): string | undefined {
  const slug = event.trim().replace(/\s+hook$/i, '').trim().toLowerCase().replace(/[\s-]+/g, '_');
  return /^[a-z0-9_]{1,100}$/.test(slug) ? slug : undefined;
}

export interface GitlabRouterOptions {
  /** Accepted X-Gitlab-Token values (several during a rotation). Must be non-empty. */
  tokens: readonly string[];
  dedupeWindowMs?: number;
  maxIds?: number;
  seen?: SeenStore;
  /** Feed messages allowed to wait; more are dropped (counted as failed). Default 10 000. */
  maxPending?: number;
}

interface Delivery {
  payload: Buffer;
  event: string;
  delivery: string;
  token: string;
  /** What to re-publish on the event topic: the feed message minus the token. */
  forward: { headers: Headers; body: Buffer };
}

export function createGitlabRouter(options: GitlabRouterOptions, host: RouterHost): Router {
  const tokens = options.tokens.filter((t) => t !== '');
  if (tokens.length === 0) throw new Error('the gitlab router needs at least one non-empty webhook token');
  const seen =
    options.seen ?? new RecentIds({ windowMs: options.dedupeWindowMs, maxEntries: options.maxIds });
  const name = 'gitlab';
  const log = host.log;

  function drop(context: object, reason: string, level: 'warn' | 'info' = 'warn'): void {
    log[level]({ router: name, ...context, reason }, 'gitlab delivery dropped');
  }

  function read(message: Message): Delivery | string {
    const h = message.headers;
    const { 'x-gitlab-token': _token, ...forwardHeaders } = h;
    const parsed = parseJSON(message.body);
    if (!parsed.ok) return 'feed message is not JSON (publish with ?extra-metadata=gitlab)';
    const env = parsed.value;
    const payloadB64 = stringField(env, 'Payload');
    if (payloadB64 !== undefined) {
      const payload = decodeBase64(payloadB64);
      if (payload === undefined) return 'envelope Payload is not valid base64';
      const event = stringField(env, 'Event') || (h['x-gitlab-event'] ?? '');
      const delivery = stringField(env, 'Delivery') || (h['x-gitlab-event-uuid'] ?? '');
      return {
        payload,
        event,
        delivery,
        token: stringField(env, 'Token') || (h['x-gitlab-token'] ?? ''),
        forward: {
          headers: forwardHeaders,
          body: goJSON({ Token: '', Event: event, Delivery: delivery, Payload: payloadB64 }),
        },
      };
    }
    // Published without ?extra-metadata=gitlab: the body is GitLab's own payload.
    if (h['x-gitlab-event'] && env !== null && typeof env === 'object' && !Array.isArray(env)) {
      return {
        payload: message.body,
        event: h['x-gitlab-event'],
        delivery: h['x-gitlab-event-uuid'] ?? '',
        token: h['x-gitlab-token'] ?? '',
        forward: { headers: forwardHeaders, body: message.body },
      };
    }
    return 'feed message is not an extra-metadata=gitlab envelope';
  }

  function summaries(slug: string, repo: string, payload: unknown): Output[] {
    const ref = stringField(payload, 'ref') ?? '';
    // A Push Hook summarises branches, a Tag Push Hook tags; Type is the event slug.
    if (!(slug === 'push' && ref.startsWith('refs/heads/')) && !(slug === 'tag_push' && ref.startsWith('refs/tags/'))) return [];
    const who = stringField(payload, 'user_username') || stringField(payload, 'user_name') || '';
    return refSummaries('gitlab.com', repo, ref, { Type: slug, SHA: stringField(payload, 'after') ?? '', Who: who });
  }

  async function route(message: Message): Promise<void> {
    const context: Record<string, unknown> = { feed: message.topic, messageId: message.id };
    const d = read(message);
    if (typeof d === 'string') {
      host.count('failed', name);
      drop(context, d);
      return;
    }
    context.delivery = logSafe(d.delivery) || undefined;
    context.event = logSafe(d.event) || undefined;
    const parsed = parseJSON(d.payload);
    const payload = parsed.ok ? parsed.value : undefined;
    const repo = stringField(objectField(payload, 'project'), 'path_with_namespace');
    context.repo = logSafe(repo);

    if (d.token === '') {
      host.count('failed', name);
      drop(context, 'missing X-Gitlab-Token (is the secret token set on the GitLab webhook?)');
      return;
    }
    if (!matchesAny(d.token, tokens)) {
      host.count('failed', name);
      drop(context, 'X-Gitlab-Token does not match any configured token');
      return;
    }
    host.count('verified', name);

    const { duplicate, keys } = await claimDelivery(seen, name, d.delivery, d.payload);
    if (duplicate) {
      host.count('duplicate', name);
      log.info({ router: name, ...context }, 'gitlab delivery is a duplicate; not re-published');
      return;
    }

    if (payload === undefined) return drop(context, 'payload is not JSON');
    if (repo === undefined) return drop(context, 'payload has no project.path_with_namespace; not routed', 'info');
    if (!isSafeTopicPart(repo, true)) return drop(context, 'project.path_with_namespace is not a usable path');
    const slug = gitlabEventSlug(d.event);
    if (slug === undefined) return drop(context, 'missing or invalid X-Gitlab-Event');

    const outputs = summaries(slug, repo, payload);
    outputs.push({ topic: `gitlab.com/repo/${repo}/event/${slug}`, ...d.forward });
    if (!(await publishAll(host, name, context, outputs))) await releaseAll(seen, keys);
  }

  return { name, topic: GITLAB_FEED, ...serialHandler(name, host, route, options.maxPending) };
}
