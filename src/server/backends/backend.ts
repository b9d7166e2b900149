/**
 * Where messages go between publish and fan-out. The broker talks only to this
 * interface; the SQLite backend (the default) keeps one process self-contained
 * and durable, the in-memory one keeps nothing on disk, and the Redis backend
 * lets several nodes share fan-out and history. All run the same contract
 * suite (test/contract/backend.contract.ts).
 */
import type { Headers, Message } from '../../protocol/message.js';

export interface Retention {
  /** Messages kept per topic; 0 disables history. */
  count: number;
  /** Bytes kept per topic (storedSize of each message); 0 disables history. */
  bytes: number;
  /** Milliseconds a message is kept; 0 disables history. */
  ageMs: number;
  /** Bytes kept across all topics (storedSize of each message), so memory stays bounded however many topics there are. */
  totalBytes: number;
  /**
   * Topics with history at most; past it the least recently published topic
   * loses its history (it is remembered as trimmed, so a resume learns of the
   * gap). Also bounds how many trimmed topics are remembered.
   */
  topics?: number;
}

export interface HistoryResult {
  /** True when messages after `since` were already trimmed away: the replay is incomplete. */
  gap: boolean;
  /** Retained messages with id > since, oldest first. */
  messages: Message[];
}

export interface PublishOptions {
  /**
   * A publisher's key for this message (`Idempotency-Key`, or a GitHub
   * delivery id). A publish repeating a key already stored for the same topic
   * within the dedupe window stores nothing and resolves with the original
   * message, so a sender retrying after a lost answer never makes a duplicate.
   */
  idempotencyKey?: string;
}

export interface Backend {
  readonly name: string;
  /**
   * Accepts a message: gives it an id, keeps it in history and dispatches it to
   * the listener of every node. Resolves only once the message is accepted
   * (for Redis: once Redis has it); rejects with BackendUnavailableError if it
   * cannot be, so a publisher is never told OK for a message that is lost.
   */
  publish(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Promise<Message>;
  /**
   * publish() without the promise, for backends that accept in-process; it
   * throws where publish() would reject. Saves the publish hot path two
   * microtask hops.
   */
  publishSync?(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Message;
  /**
   * The node's one listener: called once per message per node, in publish order
   * per topic, for every message published on any node. The memory backend
   * calls it before publish() resolves.
   */
  setListener(listener: (message: Message) => void): void;
  /**
   * Called when this node may have missed messages with ids above `afterId`
   * (it fell further behind than the backend can catch up on): every local
   * subscriber is then told, never left with a silent hole.
   */
  onLost?(listener: (afterId: string) => void): void;
  /**
   * Retained messages after `since` for an exact topic, or for every topic under
   * `topic` when it ends in `/`. `since` undefined means everything retained.
   * `limit` keeps the newest `limit` of them (and sets gap if that cuts any).
   */
  history(topic: string, since?: string, limit?: number): Promise<HistoryResult>;
  /** Topics that have history, with message counts (for the inspector). */
  historyTopics(): Promise<Array<{ topic: string; messages: number; bytes: number }>>;
  /**
   * A store for the routers' delivery ids kept by the backend itself (the
   * durable store keeps them in its file, so a redelivery after a restart is
   * still recognised); without it the routers remember ids in memory.
   */
  seenStore?(windowMs: number): ClaimStore;
  /** Whether publishes can be accepted right now. */
  ready(): boolean;
  /** Called with true/false when readiness changes (Redis up/down). */
  onReadyChange?(listener: (ready: boolean) => void): void;
  close(): Promise<void>;
}

/** What a router needs to remember delivery ids (its SeenStore); a backend may keep them with its messages. */
export interface ClaimStore {
  /** True if `key` was already claimed within the window; otherwise claims it and returns false. */
  claim(key: string): boolean | Promise<boolean>;
  /** Forgets a claim, so a delivery whose publish failed can be retried. */
  release(key: string): void | Promise<void>;
}

export class BackendUnavailableError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'BackendUnavailableError';
  }
}

export const DEFAULT_RETENTION: Retention = {
  count: 100,
  bytes: 8 * 1024 * 1024,
  ageMs: 24 * 60 * 60 * 1000,
  totalBytes: 256 * 1024 * 1024,
  topics: 10_000,
};

/** What one retained message costs beyond its topic, headers and body (ids, indexes, bookkeeping). */
export const MESSAGE_OVERHEAD = 64;

/**
 * The bytes a retained message is accounted as, against --history-bytes and
 * --history-total-bytes: everything stored, not only the body, so no mix of
 * long topics, big kept headers and empty bodies can grow memory or disk
 * unaccounted.
 */
export function storedSize(topic: string, headers: Headers, body: Buffer): number {
  let n = MESSAGE_OVERHEAD + Buffer.byteLength(topic) + body.length;
  for (const name in headers) n += name.length + Buffer.byteLength(headers[name]);
  return n;
}

/** Idempotency keys longer than this are refused (400): a key is an id, not a payload. */
export const MAX_IDEMPOTENCY_KEY = 256;

export function historyEnabled(r: Retention): boolean {
  return r.count > 0 && r.bytes > 0 && r.ageMs > 0 && r.totalBytes > 0;
}
