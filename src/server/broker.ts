/**
 * The broker joins a backend (ids, history, cross-node fan-out) to this node's
 * subscribers. Transports (WebSocket, SSE, in-server routers) implement
 * Subscriber; the broker never knows how bytes reach a client.
 */
import type { Backend, HistoryResult, PublishOptions } from './backends/backend.js';
import type { Logger } from './log.js';
import { compareIds, type Headers, type Message } from '../protocol/message.js';
import { TopicIndex } from './topic-index.js';

export interface Subscriber {
  /** The subscribed topic; ending in `/` makes it recursive. */
  readonly topic: string;
  /** Takes a message into the subscriber's own bounded queue. Must not throw. */
  send(message: Message): void;
  /** History no longer holds everything after `since`: the replay that follows is incomplete. */
  gap?(since: string): void;
  /** Replay is over; what follows is live. */
  live?(): void;
  /**
   * Live delivery missed messages after `since` (the node fell behind): the
   * subscriber must be told, with a gap event or by being closed so that it
   * resumes by id. Never left with a silent hole.
   */
  lost?(since: string): void;
  /**
   * Replay pacing: a promise (resolved once it has drained, or closed) while the
   * subscriber's queue is too full to take more history now, else undefined.
   * Without it a history larger than the subscriber's buffer would be written in
   * one go and the subscriber cut off as slow, on every reconnect.
   */
  drained?(): Promise<void> | undefined;
}

export interface BrokerStats {
  publishes: number;
  deliveries: number;
  /** Messages a subscriber could not take (it is disconnected). */
  drops: number;
  slowDisconnects: number;
}

/** Live messages a resuming subscriber may accumulate while its history is read. */
const MAX_PENDING_DURING_REPLAY = 100_000;

export class Broker {
  readonly stats: BrokerStats = { publishes: 0, deliveries: 0, drops: 0, slowDisconnects: 0 };
  readonly #backend: Backend;
  readonly #log: Logger;
  readonly #index = new TopicIndex<Subscriber>();
  /** Resumed subscribers and the stand-ins that sit in the index for them. */
  readonly #standIns = new Map<Subscriber, Subscriber>();
  #listeners: Array<(m: Message, delivered: number) => void> = [];

  constructor(backend: Backend, log: Logger) {
    this.#backend = backend;
    this.#log = log;
    backend.setListener((m) => this.#dispatch(m));
    backend.onLost?.((afterId) => this.#lost(afterId));
  }

  /** The backend may have missed messages after `afterId` on this node: every subscriber hears of it. */
  #lost(afterId: string): void {
    this.#log.warn({ afterId, subscriptions: this.#index.size }, 'this node fell behind the catch-up window; telling every subscriber about the gap');
    // Collected first: a subscriber told may close, and leave the index, at once.
    const all: Subscriber[] = [];
    for (const [, subs] of this.#index.entries()) all.push(...subs);
    for (const sub of all) sub.lost?.(afterId);
  }

  get backend(): Backend {
    return this.#backend;
  }

  /** Subscriptions currently live or replaying. */
  get subscriptions(): number {
    return this.#index.size;
  }

  topics(): IterableIterator<[string, number]> {
    return this.#index.topics();
  }

  /** Observe every dispatched message (metrics, inspector). */
  onDispatch(listener: (m: Message, delivered: number) => void): void {
    this.#listeners.push(listener);
  }

  #dispatch(message: Message): void {
    const n = this.#index.match(message.topic, (sub) => sub.send(message));
    this.stats.deliveries += n;
    for (const l of this.#listeners) l(message, n);
  }

  /**
   * Resolves once the backend accepted the message and (for this node) it was
   * handed to every matching subscriber's queue.
   */
  async publish(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Promise<Message> {
    const message = await this.#backend.publish(topic, headers, body, options);
    this.stats.publishes++;
    return message;
  }

  /**
   * publish() that answers synchronously when the backend can (in memory), so
   * the HTTP hot path needs no promise; otherwise the same promise.
   * Throws (sync case) or rejects exactly as publish() rejects.
   */
  publishNow(topic: string, headers: Headers, body: Buffer, options?: PublishOptions): Message | Promise<Message> {
    const backend = this.#backend;
    if (!backend.publishSync) return this.publish(topic, headers, body, options);
    const message = backend.publishSync(topic, headers, body, options);
    this.stats.publishes++;
    return message;
  }

  /**
   * Adds a subscriber. With `since`, first replays retained messages after that
   * id: live messages arriving meanwhile are held back and sent after the
   * replay, minus any the replay already covered, so the switch to live has no
   * gap and no duplicate. The stand-in stays as an id floor afterwards because
   * with a remote backend a message can be in history before its live copy
   * reaches this node.
   */
  async subscribe(sub: Subscriber, since?: string): Promise<void> {
    if (since === undefined) {
      this.#index.add(sub.topic, sub);
      sub.live?.();
      return;
    }
    const pending: Message[] = [];
    let replayed = false;
    let passthrough = false;
    let last = since;
    const standIn: Subscriber = {
      topic: sub.topic,
      send: (m) => {
        if (passthrough) return sub.send(m);
        if (!replayed) {
          if (pending.length < MAX_PENDING_DURING_REPLAY) pending.push(m);
          else this.stats.drops++;
        } else if (compareIds(m.id, last) > 0) {
          // Ids only grow from here on, so one comparison is enough.
          passthrough = true;
          sub.send(m);
        }
      },
      // The stand-in is what sits in the index, so it is what the node's loss notice reaches.
      lost: (id) => sub.lost?.(id),
    };
    this.#standIns.set(sub, standIn);
    this.#index.add(sub.topic, standIn);
    let history: HistoryResult;
    try {
      history = await this.#backend.history(sub.topic, since);
    } catch (err) {
      this.unsubscribe(sub);
      throw err;
    }
    // Unsubscribed while history was being read.
    if (this.#standIns.get(sub) !== standIn) return;
    if (history.gap) sub.gap?.(since);
    // Sends once the subscriber has room; false if it unsubscribed meanwhile.
    const sendPaced = async (m: Message): Promise<boolean> => {
      const wait = sub.drained?.();
      if (wait) {
        await wait;
        if (this.#standIns.get(sub) !== standIn) return false;
      }
      sub.send(m);
      last = m.id;
      return true;
    };
    for (const m of history.messages) if (!(await sendPaced(m))) return;
    this.stats.deliveries += history.messages.length;
    // Live messages keep arriving in `pending` while this loop waits, hence the index.
    for (let i = 0; i < pending.length; i++) {
      if (compareIds(pending[i].id, last) > 0 && !(await sendPaced(pending[i]))) return;
    }
    pending.length = 0;
    // No await between the last pending message and here, so nothing slips past.
    replayed = true;
    sub.live?.();
  }

  /**
   * A subscriber fell past its buffer bound: counted, dropped from the index
   * and logged here; the transport then closes its connection its own way.
   */
  slowDisconnect(sub: Subscriber): void {
    this.stats.slowDisconnects++;
    this.stats.drops++;
    this.unsubscribe(sub);
    this.#log.info({ topic: sub.topic }, 'slow subscriber disconnected');
  }

  unsubscribe(sub: Subscriber): void {
    const standIn = this.#standIns.get(sub);
    if (standIn) {
      this.#standIns.delete(sub);
      this.#index.delete(sub.topic, standIn);
    } else {
      this.#index.delete(sub.topic, sub);
    }
  }

  history(topic: string, since?: string, limit?: number): Promise<HistoryResult> {
    return this.#backend.history(topic, since, limit);
  }

  close(): Promise<void> {
    return this.#backend.close();
  }
}
