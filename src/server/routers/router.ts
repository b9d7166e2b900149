/**
 * What a router and its host need from each other, and the helpers every
 * provider shares.
 *
 * A router subscribes to one recursive feed topic such as
 * `/unsafe/github.com/`, checks each message's provenance, and re-publishes
 * what it verified onto safe (token-protected) topics. Its host is the
 * server (broker.publish) or `hookbot route-github` (HTTP publishes).
 * Routers never throw for bad input: anything reaching an `/unsafe/` feed is
 * attacker-controlled.
 */
import { createHash } from 'node:crypto';
import type { Headers, Message } from '../../protocol/message.js';
import type { ClaimStore } from '../backends/backend.js';

export type RouterEvent = 'verified' | 'failed' | 'duplicate' | 'published';

/** The pino methods routers use; a pino Logger satisfies this. */
export interface RouterLog {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RouterHost {
  /**
   * Publish onto a (safe) topic; the server passes broker.publish. The
   * idempotency key is the same for every re-publish of one delivery (each
   * output goes to its own topic), so a host that may repeat a delivery
   * after a crash can have the server drop the repeat.
   */
  publish(topic: string, headers: Headers, body: Buffer, options: { idempotencyKey: string }): Promise<unknown>;
  log: RouterLog;
  /** Metrics hook: one call per delivery (or, for 'published', per message published). */
  count(event: RouterEvent, router: string): void;
}

export interface Router {
  readonly name: string;
  /** The recursive feed topic the server subscribes this router to, e.g. `/unsafe/github.com/`. */
  readonly topic: string;
  /**
   * Handles one feed message. Resolves when done (including its publishes);
   * never rejects. Calls are processed one at a time in call order even if
   * the caller does not await, so dedupe and output order stay deterministic.
   */
  handle(message: Message): Promise<void>;
  /** Resolves once every message handed to handle() so far is done (for shutdown). */
  idle(): Promise<void>;
}

/**
 * Remembers delivery ids so a redelivery is re-published once. Pluggable so a
 * cluster can share it (e.g. Redis `SET key 1 NX PX window`) and the durable
 * store can keep it; the default is the in-process RecentIds.
 */
export type SeenStore = ClaimStore;

/**
 * JSON the way Go's encoding/json writes a map[string]string or
 * map[string]interface{}: keys sorted, and `<`, `>`, `&`, U+2028, U+2029
 * escaped. The original hookbot's messages are byte-for-byte what existing
 * consumers have seen, so ours match.
 */
export function goJSON(fields: Record<string, string>): Buffer {
  const keys = Object.keys(fields).sort();
  const parts = keys.map((k) => `${goString(k)}:${goString(fields[k])}`);
  return Buffer.from(`{${parts.join(',')}}`, 'utf8');
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** One Go-encoded JSON string. */
export function goString(s: string): string {
  // Go replaces invalid UTF-16 (lone surrogates) with U+FFFD.
  return JSON.stringify(s.replace(LONE_SURROGATE, '\uFFFD'))
    .replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Standard base64 as Go's encoding/json decodes a []byte (CR/LF ignored),
 * or undefined if it is not valid base64. Node's decoder silently skips
 * garbage, which would make bad input look like an empty payload.
 */
export function decodeBase64(s: string): Buffer | undefined {
  const clean = s.includes('\r') || s.includes('\n') ? s.replace(/[\r\n]/g, '') : s;
  if (clean.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(clean)) return undefined;
  return Buffer.from(clean, 'base64');
}

/**
 * A topic segment derived from a (verified) payload: non-empty, no control
 * characters (NUL would break `topic NUL body` framing) and no `.`/`..` or
 * empty path segments, so a name can't climb into another repository's channel.
 */
export function isSafeTopicPart(s: string, allowSlash: boolean): boolean {
  if (s.length === 0 || s.length > 1024) return false;
  if (/[\u0000-\u001f\u007f]/.test(s)) return false;
  if (!allowSlash && s.includes('/')) return false;
  return s.split('/').every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}

/** One re-publish a router wants to make. */
export interface Output {
  topic: string;
  headers: Headers;
  body: Buffer;
}

/**
 * Publishes `outputs` in order. Returns false (after logging) on the first
 * failure so the caller can release its dedupe claims: a delivery that was
 * not fully re-published must stay eligible for GitHub's/GitLab's retry.
 */
export async function publishAll(
  host: RouterHost,
  router: string,
  context: object,
  outputs: readonly Output[],
  idempotencyKey: string,
): Promise<boolean> {
  for (const out of outputs) {
    try {
      await host.publish(out.topic, out.headers, out.body, { idempotencyKey });
    } catch (err) {
      host.log.error({ ...context, router, to: out.topic, err: errorText(err) }, 'router publish failed');
      return false;
    }
    host.count('published', router);
    host.log.debug({ ...context, router, to: out.topic }, 'router published');
  }
  return true;
}

/**
 * Claims keys in order; true at the first one already claimed (a duplicate),
 * leaving later keys alone. Stopping matters with a shared store: when two
 * nodes race for the same delivery, the loser must not go on to take the
 * winner's next key, or both would see a duplicate and nobody would publish.
 * Earlier keys stay claimed, so a replay under a fresh id (payload digest
 * second) still marks that id.
 */
export async function claimAny(store: SeenStore, keys: readonly string[]): Promise<boolean> {
  for (const key of keys) if (await store.claim(key)) return true;
  return false;
}

/**
 * Claims a verified delivery: its id, and the digest of its payload, which
 * catches a captured delivery replayed under a fresh id (providers sign or
 * authenticate only the body). Returns the keys, to release them if
 * re-publishing fails, and whether any was seen within the window.
 */
export async function claimDelivery(
  store: SeenStore,
  provider: string,
  delivery: string,
  payload: Buffer,
): Promise<{ duplicate: boolean; keys: string[] }> {
  const keys = [`${provider}:payload:${createHash('sha256').update(payload).digest('base64')}`];
  if (delivery !== '') keys.unshift(`${provider}:delivery:${delivery}`);
  return { duplicate: await claimAny(store, keys), keys };
}

/**
 * The original hookbot's push summary for a git ref: `refs/heads/<b>` on
 * `<site>/repo/<repo>/branch/<b>` with a Branch field, `refs/tags/<t>` on
 * `.../tag/<t>` with a Tag field; nothing for other refs or unusable names.
 */
export function refSummaries(site: string, repo: string, ref: string, fields: { Type: string; SHA: string; Who: string }): Output[] {
  for (const [prefix, kind, key] of [
    ['refs/heads/', 'branch', 'Branch'],
    ['refs/tags/', 'tag', 'Tag'],
  ] as const) {
    if (!ref.startsWith(prefix)) continue;
    const name = ref.slice(prefix.length);
    if (!isSafeTopicPart(name, true)) return [];
    return [
      {
        topic: `${site}/repo/${repo}/${kind}/${name}`,
        headers: { 'content-type': 'application/json' },
        body: goJSON({ Type: fields.Type, Repo: repo, [key]: name, SHA: fields.SHA, Who: fields.Who }),
      },
    ];
  }
  return [];
}

export async function releaseAll(store: SeenStore, keys: readonly string[]): Promise<void> {
  for (const key of keys) await store.release(key);
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A header value as Go's Header.Get gives it: the first value, or ''. */
export function headerValue(headers: Readonly<Record<string, string | string[] | undefined>>, name: string): string {
  const v = headers[name];
  return (Array.isArray(v) ? v[0] : v) ?? '';
}

/** `obj[key]` if it is a string, else undefined; for walking untrusted JSON. */
export function stringField(obj: unknown, key: string): string | undefined {
  if (obj === null || typeof obj !== 'object') return undefined;
  const v = (obj as Record<string, unknown>)[key];
  return typeof v === 'string' ? v : undefined;
}

export function objectField(obj: unknown, key: string): Record<string, unknown> | undefined {
  if (obj === null || typeof obj !== 'object') return undefined;
  const v = (obj as Record<string, unknown>)[key];
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

export function parseJSON(buf: Buffer): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(buf.toString('utf8')) };
  } catch {
    return { ok: false };
  }
}

/** Short, log-safe rendering of an untrusted string (repo names, ids in log lines). */
export function logSafe(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
}
