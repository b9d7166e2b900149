/**
 * The github router: one org-wide GitHub webhook in, per-repository channels out.
 *
 * GitHub posts to `/unsafe/pub/github.com/...?extra-metadata=github`, which
 * anyone on the internet can also do, so nothing is re-published until the
 * HMAC of the raw payload checks out under one of the configured secrets.
 * Verified deliveries become:
 * - push to refs/heads/<b>: `{"Branch","Repo","SHA","Type","Who"}` on
 *   `github.com/repo/<owner>/<name>/branch/<b>` (the original hookbot's message);
 * - push to refs/tags/<t>: `{"Repo","SHA","Tag","Type","Who"}` on `.../tag/<t>`;
 * - every event: the feed message itself (envelope bytes and headers, so a
 *   receiver can verify the signature again) on `.../event/<event>`.
 */
import { createHmac } from 'node:crypto';
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

export const GITHUB_FEED = '/unsafe/github.com/';

type RequestHeaders = Readonly<Record<string, string | string[] | undefined>>;

/**
 * The `?extra-metadata=github` body: the original hookbot's JSON object
 * `{"Delivery","Event","Payload","Signature"}` byte for byte (Go sorts map
 * keys; absent headers are ""; Payload is standard base64), plus
 * `"Signature256"` (X-Hub-Signature-256) when GitHub sent one, so raw
 * subscribers, who see only the body, can verify with sha256. Go clients
 * ignore the extra key. `headers` are lower-case request headers.
 */
export function githubEnvelope(headers: RequestHeaders, body: Buffer): Buffer {
  const fields: Record<string, string> = {
    Signature: headerValue(headers, 'x-hub-signature'),
    Event: headerValue(headers, 'x-github-event'),
    Delivery: headerValue(headers, 'x-github-delivery'),
    Payload: body.toString('base64'),
  };
  const sig256 = headerValue(headers, 'x-hub-signature-256');
  if (sig256 !== '') fields.Signature256 = sig256;
  return goJSON(fields);
}

export interface GithubRouterOptions {
  /** Webhook secrets; any one verifies (several during a rotation). Must be non-empty. */
  secrets: readonly string[];
  /** How long a delivery id is remembered; default 1 hour. */
  dedupeWindowMs?: number;
  /** At most this many ids remembered; default 100 000. */
  maxIds?: number;
  /** Shared dedupe store (e.g. for a cluster); defaults to an in-process RecentIds. */
  seen?: SeenStore;
  /** Feed messages allowed to wait; more are dropped (counted as failed). Default 10 000. */
  maxPending?: number;
}

/** What a feed message says, before anything is trusted. */
interface Delivery {
  payload: Buffer;
  event: string;
  delivery: string;
  sig256: string;
  sig1: string;
}

const SIG256_RE = /^sha256=([0-9a-fA-F]{64})$/;
const SIG1_RE = /^sha1=([0-9a-fA-F]{40})$/;
const EVENT_RE = /^[A-Za-z0-9_.-]{1,100}$/;
const FULL_NAME_RE = /^[^/]+\/[^/]+$/;

export function createGithubRouter(options: GithubRouterOptions, host: RouterHost): Router {
  const secrets = options.secrets.filter((s) => s !== '');
  if (secrets.length === 0) throw new Error('the github router needs at least one non-empty webhook secret');
  const seen =
    options.seen ?? new RecentIds({ windowMs: options.dedupeWindowMs, maxEntries: options.maxIds });
  const name = 'github';
  const log = host.log;

  function drop(context: object, reason: string, level: 'warn' | 'info' = 'warn'): void {
    log[level]({ router: name, ...context, reason }, 'github delivery dropped');
  }

  /** Reads the feed message: an extra-metadata=github envelope, or a raw payload with its headers. */
  function read(message: Message): Delivery | string {
    const h = message.headers;
    const parsed = parseJSON(message.body);
    if (!parsed.ok) return 'feed message is not JSON (publish with ?extra-metadata=github and content type application/json)';
    const env = parsed.value;
    const payloadB64 = stringField(env, 'Payload');
    if (payloadB64 !== undefined) {
      const payload = decodeBase64(payloadB64);
      if (payload === undefined) return 'envelope Payload is not valid base64';
      return {
        payload,
        event: stringField(env, 'Event') || (h['x-github-event'] ?? ''),
        delivery: stringField(env, 'Delivery') || (h['x-github-delivery'] ?? ''),
        // The header beats the envelope for sha256 only because the original
        // envelope has no such field; either way the HMAC decides.
        sig256: h['x-hub-signature-256'] || (stringField(env, 'Signature256') ?? ''),
        sig1: stringField(env, 'Signature') || (h['x-hub-signature'] ?? ''),
      };
    }
    // Published without ?extra-metadata=github: the body is GitHub's own payload.
    if (h['x-github-event'] && env !== null && typeof env === 'object' && !Array.isArray(env)) {
      return {
        payload: message.body,
        event: h['x-github-event'],
        delivery: h['x-github-delivery'] ?? '',
        sig256: h['x-hub-signature-256'] ?? '',
        sig1: h['x-hub-signature'] ?? '',
      };
    }
    return 'feed message is not an extra-metadata=github envelope';
  }

  /** undefined if the payload is signed by one of the secrets, else the reason. */
  function verify(d: Delivery): string | undefined {
    // sha256 is preferred: when GitHub sent it, sha1 is not consulted, so a
    // weaker signature can't stand in for a failed stronger one.
    if (d.sig256 !== '') {
      const m = SIG256_RE.exec(d.sig256);
      if (!m) return 'malformed X-Hub-Signature-256';
      const expected = secrets.map((s) => createHmac('sha256', s).update(d.payload).digest('hex'));
      return matchesAny(m[1].toLowerCase(), expected) ? undefined : 'sha256 signature does not match any secret';
    }
    if (d.sig1 !== '') {
      const m = SIG1_RE.exec(d.sig1);
      if (!m) return 'malformed X-Hub-Signature';
      const expected = secrets.map((s) => createHmac('sha1', s).update(d.payload).digest('hex'));
      return matchesAny(m[1].toLowerCase(), expected) ? undefined : 'sha1 signature does not match any secret';
    }
    return 'missing signature (is the webhook secret set in GitHub?)';
  }

  /** The payload as JSON; GitHub's form content type wraps it in `payload=`. */
  function payloadJSON(d: Delivery, headers: Headers): unknown {
    let raw = d.payload;
    const type = headers['content-type'] ?? '';
    if (type.includes('application/x-www-form-urlencoded') || raw.subarray(0, 8).toString() === 'payload=') {
      const form = new URLSearchParams(raw.toString('utf8')).get('payload');
      if (form !== null) raw = Buffer.from(form, 'utf8');
    }
    const parsed = parseJSON(raw);
    return parsed.ok ? parsed.value : undefined;
  }

  function summaries(event: string, repo: string, payload: unknown): Output[] {
    if (event !== 'push') return [];
    const pusher = objectField(payload, 'pusher');
    // As the original: no pusher object → "<unknown>", a pusher without a name → "".
    const who = pusher === undefined ? '<unknown>' : (stringField(pusher, 'name') ?? '');
    return refSummaries('github.com', repo, stringField(payload, 'ref') ?? '', { Type: 'push', SHA: stringField(payload, 'after') ?? '', Who: who });
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

    const failure = verify(d);
    const payload = payloadJSON(d, message.headers);
    const repo = stringField(objectField(payload, 'repository'), 'full_name');
    context.repo = logSafe(repo);
    if (failure !== undefined) {
      host.count('failed', name);
      drop(context, failure);
      return;
    }
    host.count('verified', name);

    // Claimed only after verification, so a forgery can't block a real delivery by using its id first.
    const { duplicate, keys } = await claimDelivery(seen, name, d.delivery, d.payload);
    if (duplicate) {
      host.count('duplicate', name);
      log.info({ router: name, ...context }, 'github delivery is a duplicate; not re-published');
      return;
    }

    if (payload === undefined) return drop(context, 'payload is not JSON');
    if (repo === undefined) return drop(context, 'payload has no repository.full_name; not routed', 'info');
    if (!FULL_NAME_RE.test(repo) || !isSafeTopicPart(repo, true)) return drop(context, 'repository.full_name is not owner/name');
    if (!EVENT_RE.test(d.event)) return drop(context, 'missing or invalid X-GitHub-Event');

    const outputs = summaries(d.event, repo, payload);
    outputs.push({ topic: `github.com/repo/${repo}/event/${d.event}`, headers: message.headers, body: message.body });
    if (!(await publishAll(host, name, context, outputs))) await releaseAll(seen, keys);
  }

  return { name, topic: GITHUB_FEED, ...serialHandler(name, host, route, options.maxPending) };
}
