/**
 * The gitlab adapter: a GitLab group/instance webhook in, per-project channels out.
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
import { matchesAny } from '../../util/safe-equal.js';
import { goEnvelope, type RequestHeaders } from './envelope.js';
import { createRouter, type Adapter, type RouterOptions } from './pipeline.js';
import { type Router, type RouterHost, headerValue, isSafeTopicPart, objectField, parseJSON, refSummaries, stringField } from './router.js';

export const GITLAB_FEED = '/unsafe/gitlab.com/';

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
  return goEnvelope(
    {
      Token: headerValue(headers, 'x-gitlab-token'),
      Event: headerValue(headers, 'x-gitlab-event'),
      Delivery: headerValue(headers, 'idempotency-key') || headerValue(headers, 'x-gitlab-event-uuid'),
    },
    body,
  );
}

/** "Merge Request Hook" → "merge_request"; undefined if it doesn't look like a GitLab event name. */
export function gitlabEventSlug(event: string): string | undefined {
  const slug = event.trim().replace(/\s+hook$/i, '').trim().toLowerCase().replace(/[\s-]+/g, '_');
  return /^[a-z0-9_]{1,100}$/.test(slug) ? slug : undefined;
}

export const gitlabAdapter: Adapter<{ token: string }> = {
  name: 'gitlab',
  feed: GITLAB_FEED,
  credential: 'webhook token',
  eventHeader: 'x-gitlab-event',
  deliveryHeader: 'x-gitlab-event-uuid',
  eventHeaderName: 'X-Gitlab-Event',

  proof: (envelope, h) => ({ token: envelope?.get('Token') || (h['x-gitlab-token'] ?? '') }),

  async verify({ token }, _payload, tokens) {
    if (token === '') return 'missing X-Gitlab-Token (is the secret token set on the GitLab webhook?)';
    return matchesAny(token, tokens) ? undefined : 'X-Gitlab-Token does not match any configured token';
  },

  parse(raw) {
    const parsed = parseJSON(raw);
    return parsed.ok ? parsed.value : undefined;
  },

  repoField: 'project.path_with_namespace',
  repo: (payload) => stringField(objectField(payload, 'project'), 'path_with_namespace'),
  validRepo: (repo) => isSafeTopicPart(repo, true),
  repoInvalid: 'is not a usable path',
  eventTopic: gitlabEventSlug,
  topic: (repo, slug) => `gitlab.com/repo/${repo}/event/${slug}`,

  summaries(slug, repo, payload) {
    const ref = stringField(payload, 'ref') ?? '';
    // A Push Hook summarises branches, a Tag Push Hook tags; Type is the event slug.
    if (!(slug === 'push' && ref.startsWith('refs/heads/')) && !(slug === 'tag_push' && ref.startsWith('refs/tags/'))) return [];
    const who = stringField(payload, 'user_username') || stringField(payload, 'user_name') || '';
    return refSummaries('gitlab.com', repo, ref, { Type: slug, SHA: stringField(payload, 'after') ?? '', Who: who });
  },

  forward(message, d) {
    const { 'x-gitlab-token': _token, ...headers } = message.headers;
    const encoded = d.payload.encoded;
    // The envelope is rebuilt with its Payload copied as it is: nothing is re-encoded.
    const body = d.enveloped && encoded ? goEnvelope({ Token: '', Event: d.event, Delivery: d.id }, encoded, true) : message.body;
    return { headers, body };
  },
};

export interface GitlabRouterOptions extends Omit<RouterOptions, 'secrets'> {
  /** Accepted X-Gitlab-Token values (several during a rotation). Must be non-empty. */
  tokens: readonly string[];
}

export function createGitlabRouter(options: GitlabRouterOptions, host: RouterHost): Router {
  const { tokens, ...rest } = options;
  return createRouter(gitlabAdapter, { ...rest, secrets: tokens }, host);
}
