/**
 * The one route pipeline every provider runs: locate → verify → dedupe →
 * summarise → publish. A provider is an Adapter: which headers carry its
 * event name and delivery id, how a delivery proves where it came from
 * (GitHub's HMAC signature, GitLab's token), where the repository is in its
 * payload, what it summarises, and what its event topic carries. The server's
 * routers and `hookbot route-github` run this same code.
 *
 * Verification comes first and is all a forgery can cost: until the proof
 * checks out, the payload is only located in the feed message (envelope.ts)
 * and streamed in bounded chunks (payload.ts), never decoded whole or parsed.
 */
import { createHash } from 'node:crypto';
import type { Headers, Message } from '../../protocol/message.js';
import { RecentIds } from './dedupe.js';
import { locateEnvelope, looksLikeObject } from './envelope.js';
import { INVALID_BASE64, Payload, PayloadError } from './payload.js';
import {
  type Output,
  type Router,
  type RouterHost,
  type SeenStore,
  claimDelivery,
  errorText,
  logSafe,
  publishAll,
  releaseAll,
} from './router.js';

/** A delivery as read from a feed message, before anything about it is trusted. */
export interface Delivery<Proof> {
  payload: Payload;
  event: string;
  /** The provider's delivery id ('' when it sent none). */
  id: string;
  /** What the delivery presents to prove its origin (signatures, a token). */
  proof: Proof;
  /** True when the feed message is an `?extra-metadata=` envelope, false for a raw payload. */
  enveloped: boolean;
}

export interface Adapter<Proof> {
  /** The router's name: `--router`, `?extra-metadata=`, log lines and metrics. */
  readonly name: string;
  /** The recursive feed topic the router reads, e.g. `/unsafe/github.com/`. */
  readonly feed: string;
  /** What the secrets are called, for the error when there are none ("webhook secret"). */
  readonly credential: string;
  /** Kept headers naming the event and the delivery id, when the envelope does not. */
  readonly eventHeader: string;
  readonly deliveryHeader: string;
  /** The event header as written in drop reasons ("X-GitHub-Event"). */
  readonly eventHeaderName: string;
  /** What a delivery presents as proof, from its envelope's fields (if any) and kept headers. */
  proof(envelope: ReadonlyMap<string, string> | undefined, headers: Headers): Proof;
  /**
   * undefined if the proof checks out under one of `secrets`, else why not.
   * May stream the payload (and throw PayloadError); must not decode it whole.
   */
  verify(proof: Proof, payload: Payload, secrets: readonly string[]): Promise<string | undefined>;
  /** A verified payload as JSON, or undefined. */
  parse(payload: Buffer, headers: Headers): unknown;
  /** Where the repository's name is in the payload ("repository.full_name"), for drop reasons. */
  readonly repoField: string;
  repo(payload: unknown): string | undefined;
  /** Whether a repository name may become part of a topic; else `repoInvalid` is the reason. */
  validRepo(repo: string): boolean;
  readonly repoInvalid: string;
  /** The event's name in topics (`.../event/<it>`), or undefined if the event name is unusable. */
  eventTopic(event: string): string | undefined;
  /** `<site>/repo/<repo>/event/<event>`. */
  topic(repo: string, event: string): string;
  /** The summaries on branch and tag topics (none for most events). */
  summaries(event: string, repo: string, payload: unknown): Output[];
  /** What the event topic carries: the feed message, minus anything secret. */
  forward(message: Message, delivery: Delivery<Proof>): { headers: Headers; body: Buffer };
}

export interface RouterOptions {
  /** Accepted secrets; any one verifies (several during a rotation). Must be non-empty. */
  secrets: readonly string[];
  /** How long a delivery id is remembered; default 1 hour. */
  dedupeWindowMs?: number;
  /** At most this many ids remembered; default 100 000. */
  maxIds?: number;
  /** Shared dedupe store (e.g. for a cluster); defaults to an in-process RecentIds. */
  seen?: SeenStore;
  /** Feed messages allowed to wait; more are dropped (counted as failed). Default 10 000. */
  maxPending?: number;
  /**
   * Bytes of feed messages allowed to wait (one message is always taken when
   * none waits); more are dropped (counted as failed). Default 64 MiB.
   */
  maxPendingBytes?: number;
}

export const DEFAULT_MAX_PENDING = 10_000;
export const DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024;

export function createRouter<Proof>(adapter: Adapter<Proof>, options: RouterOptions, host: RouterHost): Router {
  const { name } = adapter;
  const secrets = options.secrets.filter((s) => s !== '');
  if (secrets.length === 0) throw new Error(`the ${name} router needs at least one non-empty ${adapter.credential}`);
  const seen = options.seen ?? new RecentIds({ windowMs: options.dedupeWindowMs, maxEntries: options.maxIds });
  const log = host.log;

  function drop(context: object, reason: string, level: 'warn' | 'info' = 'warn'): void {
    log[level]({ router: name, ...context, reason }, `${name} delivery dropped`);
  }
  function fail(context: object, reason: string): void {
    host.count('failed', name);
    drop(context, reason);
  }

  /** Finds the delivery in a feed message: an envelope, or a raw payload with its headers. */
  function read(message: Message): Delivery<Proof> | string {
    const h = message.headers;
    const envelope = locateEnvelope(message.body);
    if (envelope?.payload !== undefined) {
      const { fields } = envelope;
      return {
        payload: Payload.base64(message.body, envelope.payload.start, envelope.payload.end),
        event: fields.get('Event') || (h[adapter.eventHeader] ?? ''),
        id: fields.get('Delivery') || (h[adapter.deliveryHeader] ?? ''),
        proof: adapter.proof(fields, h),
        enveloped: true,
      };
    }
    if (!looksLikeObject(message.body)) return `feed message is not JSON, or not an object (publish with ?extra-metadata=${name})`;
    // Published without ?extra-metadata: the body is the provider's own payload.
    if (h[adapter.eventHeader]) {
      return {
        payload: Payload.raw(message.body),
        event: h[adapter.eventHeader],
        id: h[adapter.deliveryHeader] ?? '',
        proof: adapter.proof(undefined, h),
        enveloped: false,
      };
    }
    return `feed message is not an extra-metadata=${name} envelope, nor a payload with its ${adapter.eventHeaderName} header`;
  }

  async function verify(d: Delivery<Proof>): Promise<string | undefined> {
    if (!d.payload.precheck()) return INVALID_BASE64;
    try {
      return await adapter.verify(d.proof, d.payload, secrets);
    } catch (err) {
      if (err instanceof PayloadError) return err.message;
      throw err;
    }
  }

  async function route(message: Message): Promise<void> {
    const context: Record<string, unknown> = { feed: message.topic, messageId: message.id };
    const d = read(message);
    if (typeof d === 'string') return fail(context, d);
    context.delivery = logSafe(d.id) || undefined;
    context.event = logSafe(d.event) || undefined;

    const failure = await verify(d);
    if (failure !== undefined) return fail(context, failure);
    host.count('verified', name);

    // Verified: from here on the payload may be decoded whole and parsed.
    const bytes = d.payload.bytes();
    if (bytes === undefined) return drop(context, INVALID_BASE64);
    const payload = adapter.parse(bytes, message.headers);
    const repo = adapter.repo(payload);
    context.repo = logSafe(repo);

    // Claimed only after verification, so a forgery can't block a real delivery by using its id first.
    const { duplicate, keys } = await claimDelivery(seen, name, d.id, bytes);
    if (duplicate) {
      host.count('duplicate', name);
      log.info({ router: name, ...context }, `${name} delivery is a duplicate; not re-published`);
      return;
    }

    if (payload === undefined) return drop(context, 'payload is not JSON');
    if (repo === undefined) return drop(context, `payload has no ${adapter.repoField}; not routed`, 'info');
    if (!adapter.validRepo(repo)) return drop(context, `${adapter.repoField} ${adapter.repoInvalid}`);
    const event = adapter.eventTopic(d.event);
    if (event === undefined) return drop(context, `missing or invalid ${adapter.eventHeaderName}`);

    const outputs = adapter.summaries(event, repo, payload);
    outputs.push({ topic: adapter.topic(repo, event), ...adapter.forward(message, d) });
    if (await publishAll(host, name, context, outputs, idempotencyKey(name, keys[0]))) {
      log.info({ router: name, ...context, to: outputs.map((o) => o.topic) }, `${name} delivery routed`);
    } else {
      await releaseAll(seen, keys);
    }
  }

  const queue = new SerialQueue(options.maxPending, options.maxPendingBytes);
  return { name, topic: adapter.feed, ...serialHandler(name, host, route, queue) };
}

/** Bounded and header-safe whatever the delivery id was (it is not covered by the signature). */
function idempotencyKey(provider: string, claim: string): string {
  return `${provider}:${createHash('sha256').update(claim).digest('base64url')}`;
}

/**
 * Runs async jobs strictly one after another, in submission order, with at
 * most `max` jobs and `maxBytes` of their messages waiting: an unsafe feed
 * can be flooded faster than signatures can be checked (30 forged 18 MiB
 * envelopes arrive faster than one core verifies them), and a router must not
 * turn that into unbounded memory. A job is always taken when none waits, so
 * any single message fits.
 */
export class SerialQueue {
  readonly max: number;
  readonly maxBytes: number;
  #tail: Promise<void> = Promise.resolve();
  #pending = 0;
  #pendingBytes = 0;

  constructor(max = DEFAULT_MAX_PENDING, maxBytes = DEFAULT_MAX_PENDING_BYTES) {
    this.max = max;
    this.maxBytes = maxBytes;
  }

  /** Why a job of `bytes` would not be taken now, or undefined if it would be. */
  refusal(bytes: number): string | undefined {
    if (this.#pending >= this.max) return `more than ${this.max} messages waiting`;
    if (this.#pending > 0 && this.#pendingBytes + bytes > this.maxBytes) return `more than ${(this.maxBytes / 1024 / 1024).toFixed(0)} MiB of messages waiting`;
    return undefined;
  }

  /** Resolves when `job` is done; undefined (job not run) when the queue is full (see refusal()). */
  run(job: () => Promise<void>, bytes = 0): Promise<void> | undefined {
    if (this.refusal(bytes) !== undefined) return undefined;
    this.#pending++;
    this.#pendingBytes += bytes;
    const done = () => {
      this.#pending--;
      this.#pendingBytes -= bytes;
    };
    // Jobs catch their own errors; the catch keeps a stray rejection from wedging the chain.
    this.#tail = this.#tail.then(job).catch(() => undefined).finally(done);
    return this.#tail;
  }

  /** Resolves once everything queued so far has run. */
  idle(): Promise<void> {
    return this.#tail;
  }
}

/**
 * The handle()/idle() pair of a router around its `route` function: one
 * message at a time, in order; a full queue or an unexpected error drops the
 * message with a log line instead of stopping the feed.
 */
function serialHandler(name: string, host: RouterHost, route: (message: Message) => Promise<void>, queue: SerialQueue): Pick<Router, 'handle' | 'idle'> {
  return {
    handle(message: Message): Promise<void> {
      const size = message.body.length;
      const refusal = queue.refusal(size);
      const done =
        refusal === undefined
          ? queue.run(async () => {
              try {
                await route(message);
              } catch (err) {
                // Only a failing SeenStore can get here.
                host.log.error({ router: name, messageId: message.id, err: errorText(err) }, `${name} router failed on a message`);
              }
            }, size)
          : undefined;
      if (done !== undefined) return done;
      host.count('failed', name);
      host.log.warn({ router: name, feed: message.topic, messageId: message.id, reason: refusal }, `${name} delivery dropped`);
      return Promise.resolve();
    },
    idle: () => queue.idle(),
  };
}
