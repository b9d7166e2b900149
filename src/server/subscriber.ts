/**
 * The subscriber core: everything a connected subscriber does, written once
 * for every transport (centrifuge's model). A Session owns the subscriber's
 * bounded, batched outbox, its registration with the broker (resume included),
 * its stats, the slow-consumer disconnect and what happens when a resume
 * fails or the node missed messages. A transport supplies only an Encoder
 * (how a message and a control event look on its wire) and a Connection (how
 * its stream ends).
 */
import type { Socket } from 'node:net';
import type { Message } from '../protocol/message.js';
import type { Broker, Subscriber } from './broker.js';
import type { Logger } from './log.js';
import type { TransportName } from './ops/metrics.js';
import { Outbox, type OverflowListener } from './outbox.js';

/**
 * One wire format. `message` is memoised per message under `key`, so a
 * message is encoded once per format and the same Buffer written to every
 * subscriber of that format. A control event the format cannot carry is
 * left undefined.
 */
export interface Encoder {
  readonly key: string;
  readonly message: (m: Message) => Buffer;
  /** Written first, before any history. */
  readonly preamble?: Buffer;
  /**
   * Written as the session starts (after the preamble, before any history),
   * given the id it resumes after (undefined: live only). For EventSource
   * clients, which resume only from the last `id:` they were given: a stream
   * that starts live can tell them where it starts, so a reconnect before any
   * message arrived still resumes instead of going live and missing what was
   * published in between.
   */
  readonly start?: (since: string | undefined) => Buffer | undefined;
  /** The replay after `since` is incomplete (or, live, messages after it were missed). */
  readonly gap?: (since: string) => Buffer;
  /** The replay is over; live messages follow. */
  readonly live?: Buffer;
  /** Written every heartbeat, so proxies and clients can tell an idle stream is alive. */
  readonly ping?: Buffer;
}

/** Why a session ends, for the transport to say in its own way (a close code, or just the end of the stream). */
export type EndReason =
  /** Fell past --max-subscriber-buffer. */
  | 'slow'
  /** The server is shutting down. */
  | 'shutdown'
  /** History could not be read for the resume. */
  | 'resume-failed'
  /** The node missed messages and the format has no gap event: the client must reconnect and resume by id. */
  | 'missed';

/** How a transport's stream ends; writing goes through the session's outbox. */
export interface Connection {
  end(reason: EndReason): void;
  /** Optional: what the transport does every heartbeat besides the encoder's ping (WebSocket: a protocol ping and its liveness check). */
  heartbeat?(): void;
}

export interface SessionOptions {
  transport: TransportName;
  topic: string;
  encoder: Encoder;
  /** The socket the outbox writes to (for SSE, the socket under the response). */
  socket: Socket;
  connection: Connection;
}

/** A connected subscriber, whatever its transport. */
export class Session implements Subscriber, OverflowListener {
  readonly topic: string;
  readonly transport: TransportName;
  readonly #sessions: Sessions;
  readonly #encoder: Encoder;
  readonly #out: Outbox;
  readonly #connection: Connection;
  #ended = false;

  constructor(sessions: Sessions, options: SessionOptions) {
    this.#sessions = sessions;
    this.topic = options.topic;
    this.transport = options.transport;
    this.#encoder = options.encoder;
    this.#connection = options.connection;
    this.#out = new Outbox(options.socket, sessions.maxBuffer, this);
    if (options.encoder.preamble) this.#out.write(options.encoder.preamble);
  }

  send(message: Message): void {
    const e = this.#encoder;
    this.#out.write(message.encoded(e.key, e.message));
  }

  gap(since: string): void {
    const frame = this.#encoder.gap?.(since);
    if (frame) this.#out.write(frame);
  }

  live(): void {
    this.#out.live();
    const frame = this.#encoder.live;
    if (frame) this.#out.write(frame);
  }

  lost(since: string): void {
    if (this.#encoder.gap) return this.gap(since);
    this.#end('missed');
  }

  drained(): Promise<void> | undefined {
    return this.#out.drained();
  }

  heartbeat(): void {
    const ping = this.#encoder.ping;
    if (ping) this.#out.write(ping);
    this.#connection.heartbeat?.();
  }

  /** Subscribes with the broker, replaying history after `since` first. */
  start(since: string | undefined): void {
    const first = this.#encoder.start?.(since);
    if (first) this.#out.write(first);
    this.#sessions.broker.subscribe(this, since).catch((err: Error) => {
      this.#sessions.log.warn({ topic: this.topic, err: err.message }, 'resume failed');
      this.#end('resume-failed');
    });
  }

  /** Ends the session from the server's side (shutdown). */
  close(): void {
    this.#end('shutdown');
  }

  /** The transport's connection is gone, closed by either side: leave the broker and the registry. Idempotent. */
  disconnected(): void {
    this.#leave();
    this.#sessions.remove(this);
  }

  /** Its outbox fell past --max-subscriber-buffer: the slow-consumer disconnect. */
  overflowed(): void {
    this.#sessions.slowDisconnects[this.transport]++;
    this.#sessions.broker.slowDisconnect(this);
    this.#end('slow');
  }

  #end(reason: EndReason): void {
    if (this.#ended) return;
    this.#leave();
    this.#connection.end(reason);
  }

  /** Stops all writes and leaves the broker; the connection's own close then calls disconnected(). */
  #leave(): void {
    this.#ended = true;
    this.#out.closed = true;
    this.#sessions.broker.unsubscribe(this);
  }
}

/** Every session of a server: counts per transport, heartbeats, and closing them all at shutdown. */
export class Sessions {
  readonly broker: Broker;
  readonly log: Logger;
  readonly maxBuffer: number;
  /** Subscribers cut off past --max-subscriber-buffer, per transport (the broker counts them all). */
  readonly slowDisconnects: Record<TransportName, number> = { ws: 0, sse: 0 };
  readonly #all = new Set<Session>();
  readonly #counts: Record<TransportName, number> = { ws: 0, sse: 0 };

  constructor(broker: Broker, log: Logger, maxBuffer: number) {
    this.broker = broker;
    this.log = log;
    this.maxBuffer = maxBuffer;
  }

  open(options: SessionOptions): Session {
    const session = new Session(this, options);
    this.#all.add(session);
    this.#counts[session.transport]++;
    return session;
  }

  remove(session: Session): void {
    if (this.#all.delete(session)) this.#counts[session.transport]--;
  }

  /** Connected subscribers per transport. */
  counts(): Readonly<Record<TransportName, number>> {
    return this.#counts;
  }

  /** Calls `each` for every session of one transport (heartbeats, pings). */
  each(transport: TransportName, each: (session: Session) => void): void {
    for (const s of this.#all) if (s.transport === transport) each(s);
  }

  /** Ends every session (shutdown); clients reconnect elsewhere and resume by id. */
  closeAll(): void {
    for (const s of [...this.#all]) s.close();
  }
}
