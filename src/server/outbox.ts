/**
 * A subscriber's outgoing queue, shared by the WebSocket and SSE transports.
 *
 * - Bounded: a subscriber whose queue would pass `maxBuffer` is reported as
 *   slow (the transport disconnects it) instead of slowing anyone else. A
 *   message larger than the whole buffer still goes to one that is keeping up.
 * - Batched without waiting: writes are corked and a flusher sends each
 *   subscriber's queue in one writev, starting at the end of the turn that
 *   queued them. It flushes a slice of subscribers per event-loop turn and
 *   hands the loop back in between, so a publish arriving mid-fan-out is read
 *   at once and its message joins, in the same send, the queues the flusher
 *   has not reached yet. With no new input the flusher simply runs slice after
 *   slice: nothing is held back for a timer.
 * - A queue collects for the flusher through at most four turns and eight
 *   messages: the write that would pass either sends what is queued itself.
 *   This bounds the batch, and the latency it adds, when publishes outpace
 *   the flusher, and makes such publishers pay for the sends they cause.
 * - Paced during replay: until live(), history is metered by drained()
 *   instead of tripping the bound, so a replay larger than the buffer resumes.
 */
import type { Writable } from 'node:stream';

/**
 * What the flusher sends before it hands the event loop back: a socket send
 * costs some microseconds plus its bytes, so a slice stays around a
 * millisecond whatever the message size.
 */
const SLICE_SUBSCRIBERS = 64;
const SLICE_BYTES = 1024 * 1024;

/**
 * What a queue collects for the flusher before a write sends it. A few
 * messages per send take most of the per-send cost off each delivery; more
 * would mostly add latency. Every turn a message waits adds to its latency,
 * so turns get the tighter cap; messages of a burst read in one turn wait no
 * longer for sharing a send. The bytes cap (also at most half the
 * subscriber's bound) keeps our own queueing from looking like a slow consumer.
 */
const MAX_BATCH_TURNS = 4;
const MAX_BATCH_MESSAGES = 8;
const MAX_BATCH_BYTES = 64 * 1024;

/**
 * Sends corked outboxes in the order they were first written to. A pass is
 * the set waiting when it starts; an outbox written to again after its flush
 * waits for the next pass, so no subscriber is served twice while another
 * waits.
 */
class Flusher {
  /** Counts the flusher's turns: writes between two slices see the same value. */
  turn = 0;
  #pass: Outbox[] = [];
  #done = 0;
  #waiting: Outbox[] = [];
  #scheduled = false;
  readonly #run = () => this.#flushSlice();

  add(box: Outbox): void {
    this.#waiting.push(box);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#run);
    }
  }

  #flushSlice(): void {
    this.turn++;
    if (this.#done === this.#pass.length) {
      this.#pass = this.#waiting;
      this.#waiting = [];
      this.#done = 0;
    }
    const pass = this.#pass;
    const end = Math.min(pass.length, this.#done + SLICE_SUBSCRIBERS);
    let bytes = 0;
    while (this.#done < end && bytes < SLICE_BYTES) bytes += pass[this.#done++].flush();
    if (this.#done < pass.length || this.#waiting.length > 0) {
      setImmediate(this.#run);
    } else {
      this.#pass = [];
      this.#done = 0;
      this.#scheduled = false;
    }
  }
}

const flusher = new Flusher();

/** Told when a subscriber falls past --max-subscriber-buffer (an object, so a session needs no closure for it). */
export interface OverflowListener {
  overflowed(): void;
}

export class Outbox {
  readonly #stream: Writable;
  readonly #maxBuffer: number;
  readonly #batchBytes: number;
  readonly #owner: OverflowListener;
  #corked = false;
  // What was written since the last flush, ours to send rather than the
  // subscriber's backlog: over how many flusher turns, how many messages and bytes.
  #turns = 0;
  #lastTurn = -1;
  #messages = 0;
  #pending = 0;
  #replaying = true;
  closed = false;

  constructor(stream: Writable, maxBuffer: number, owner: OverflowListener) {
    this.#stream = stream;
    this.#maxBuffer = maxBuffer;
    this.#batchBytes = Math.max(1, Math.min(MAX_BATCH_BYTES, Math.floor(maxBuffer / 2)));
    this.#owner = owner;
  }

  write(data: Buffer): void {
    if (this.closed) return;
    const stream = this.#stream;
    const turn = flusher.turn;
    if (this.#corked) {
      // A full batch goes now, before the bound below, which must only see what the subscriber has not taken.
      const full =
        (turn !== this.#lastTurn && this.#turns === MAX_BATCH_TURNS) ||
        this.#messages === MAX_BATCH_MESSAGES ||
        (this.#pending > 0 && this.#pending + data.length > this.#batchBytes);
      if (full) {
        this.#uncork();
        if (this.closed) return;
        stream.cork();
      }
    } else {
      this.#corked = true;
      stream.cork();
      flusher.add(this);
    }
    const queued = stream.writableLength;
    if (!this.#replaying && queued > 0 && queued + data.length > this.#maxBuffer) {
      this.closed = true;
      this.#owner.overflowed();
      return;
    }
    if (turn !== this.#lastTurn) {
      this.#lastTurn = turn;
      this.#turns++;
    }
    this.#messages++;
    this.#pending += data.length;
    stream.write(data);
  }

  /** Sends everything corked so far in one writev; returns its size in bytes. */
  flush(): number {
    const n = this.#pending;
    this.#corked = false;
    this.#uncork();
    return n;
  }

  #uncork(): void {
    this.#turns = 0;
    this.#lastTurn = -1;
    this.#messages = 0;
    this.#pending = 0;
    try {
      this.#stream.uncork();
    } catch (err) {
      // One broken stream must not stop the flusher for everyone else.
      this.closed = true;
      this.#stream.destroy(err as Error);
    }
  }

  /** Replay is over: from now on the bound applies. */
  live(): void {
    this.#replaying = false;
  }

  /** While the queue is too full to take more history: a promise for its drain (or close). */
  drained(): Promise<void> | undefined {
    const socket = this.#stream;
    if (this.closed) return undefined;
    // At or above the high-water mark the last write returned false, so 'drain' is sure to come.
    if (socket.writableLength < Math.max(this.#maxBuffer / 2, socket.writableHighWaterMark)) return undefined;
    return new Promise((resolve) => {
      const done = () => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.on('drain', done);
      socket.on('close', done);
    });
  }
}
