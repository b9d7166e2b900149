/**
 * The github adapter: one org-wide GitHub webhook in, per-repository channels out.
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
import type { Headers } from '../../protocol/message.js';
import { matchesAny } from '../../util/safe-equal.js';
import { goEnvelope, type RequestHeaders } from './envelope.js';
import { hmacHex, type Payload } from './payload.js';
import { createRouter, type Adapter, type RouterOptions } from './pipeline.js';
import { type Router, type RouterHost, headerValue, isSafeTopicPart, objectField, parseJSON, refSummaries, stringField } from './router.js';

export const GITHUB_FEED = '/unsafe/github.com/';

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
  };
  const sig256 = headerValue(headers, 'x-hub-signature-256');
  if (sig256 !== '') fields.Signature256 = sig256;
  return goEnvelope(fields, body);
}

/** GitHub's signatures of the payload, as presented. */
interface Signatures {
  sig256: string;
  sig1: string;
}

const SIG256_RE = /^sha256=([0-9a-fA-F]{64})$/;
const SIG1_RE = /^sha1=([0-9a-fA-F]{40})$/;
const EVENT_RE = /^[A-Za-z0-9_.-]{1,100}$/;
const FULL_NAME_RE = /^[^/]+\/[^/]+$/;

/** Whether `presented` is the HMAC-`algo` of the payload under one of the secrets. */
async function signedBy(algo: 'sha256' | 'sha1', presented: string, payload: Payload, secrets: readonly string[]): Promise<boolean> {
  return matchesAny(presented.toLowerCase(), await hmacHex(algo, secrets, payload));
}

export const githubAdapter: Adapter<Signatures> = {
  name: 'github',
  feed: GITHUB_FEED,
  credential: 'webhook secret',
  eventHeader: 'x-github-event',
  deliveryHeader: 'x-github-delivery',
  eventHeaderName: 'X-GitHub-Event',

  proof(envelope, h) {
    return {
      // The header beats the envelope for sha256 only because the original
      // envelope has no such field; either way the HMAC decides.
      sig256: h['x-hub-signature-256'] || (envelope?.get('Signature256') ?? ''),
      sig1: envelope?.get('Signature') || (h['x-hub-signature'] ?? ''),
    };
  },

  async verify({ sig256, sig1 }, payload, secrets) {
    // sha256 is preferred: when GitHub sent it, sha1 is not consulted, so a
    // weaker signature can't stand in for a failed stronger one.
    if (sig256 !== '') {
      const m = SIG256_RE.exec(sig256);
      if (!m) return 'malformed X-Hub-Signature-256';
      return (await signedBy('sha256', m[1], payload, secrets)) ? undefined : 'sha256 signature does not match any secret';
    }
    if (sig1 !== '') {
      const m = SIG1_RE.exec(sig1);
      if (!m) return 'malformed X-Hub-Signature';
      return (await signedBy('sha1', m[1], payload, secrets)) ? undefined : 'sha1 signature does not match any secret';
    }
    return 'missing signature (is the webhook secret set in GitHub?)';
  },

  /** The payload as JSON; GitHub's form content type wraps it in `payload=`. */
  parse(raw: Buffer, headers: Headers) {
    const type = headers['content-type'] ?? '';
    if (type.includes('application/x-www-form-urlencoded') || raw.subarray(0, 8).toString() === 'payload=') {
      const form = new URLSearchParams(raw.toString('utf8')).get('payload');
      if (form !== null) raw = Buffer.from(form, 'utf8');
    }
    const parsed = parseJSON(raw);
    return parsed.ok ? parsed.value : undefined;
  },

  repoField: 'repository.full_name',
  repo: (payload) => stringField(objectField(payload, 'repository'), 'full_name'),
  validRepo: (repo) => FULL_NAME_RE.test(repo) && isSafeTopicPart(repo, true),
  repoInvalid: 'is not owner/name',
  eventTopic: (event) => (EVENT_RE.test(event) ? event : undefined),
  topic: (repo, event) => `github.com/repo/${repo}/event/${event}`,

  summaries(event, repo, payload) {
    if (event !== 'push') return [];
    const pusher = objectField(payload, 'pusher');
    // As the original: no pusher object → "<unknown>", a pusher without a name → "".
    const who = pusher === undefined ? '<unknown>' : (stringField(pusher, 'name') ?? '');
    return refSummaries('github.com', repo, stringField(payload, 'ref') ?? '', { Type: 'push', SHA: stringField(payload, 'after') ?? '', Who: who });
  },

  // The signature is over the payload only, so the feed message can go on as it is.
  forward: (message) => ({ headers: message.headers, body: message.body }),
};

export type GithubRouterOptions = RouterOptions;

export function createGithubRouter(options: GithubRouterOptions, host: RouterHost): Router {
  return createRouter(githubAdapter, options, host);
}
