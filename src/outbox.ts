/**
 * A subscriber's outgoing queue, shared by the WebSocket and SSE transports.
 *
 * - Bounded: a subscriber whose queue would pass `maxBuffer` is reported as
 *   slow (the transport disconnects it) instead of slowing anyone else. A
 *   message larger than the whole buffer still goes to one that is keeping up.
 * - Corked per event-loop turn: every write in a turn (a burst of publishes,
 *   a replay) leaves in one writev when the turn's I/O callbacks are done.
 * - Paced during replay: until live(), history is metered by drained()
 *   instead of tripping the bound, so a replay larger than the buffer resumes.
 */
import type { Writable } from 'node:stream';

// Outboxes written to in this turn, uncorked together at its end.
let corked: Outbox[] = [];
function flushCorked(): void {
  const boxes = corked;
  corked = [];
  for (const b of boxes) b.uncork();
}

export class Outbox {
  readonly #stream: Writable;
  /** Where 'drain' is observed; the socket under an HTTP response. */
  readonly #drainable: () => Writable | null | undefined;
  readonly #maxBuffer: number;
  readonly #onOverflow: () => void;
  #corked = false;
  #replaying = true;
  closed = false;

  constructor(stream: Writable, maxBuffer: number, onOverflow: () => void, drainable: () => Writable | null | undefined = () => stream) {
    this.#stream = stream;
    this.#maxBuffer = maxBuffer;
    this.#onOverflow = onOverflow;
    this.#drainable = drainable;
  }

  write(data: Buffer): void {
    if (this.closed) return;
    const stream = this.#stream;
    const queued = stream.writableLength;
    if (!this.#replaying && queued > 0 && queued + data.length > this.#maxBuffer) {
      this.closed = true;
      this.#onOverflow();
      return;
    }
    if (!this.#corked) {
      this.#corked = true;
      stream.cork();
      if (corked.length === 0) setImmediate(flushCorked);
      corked.push(this);
    }
    stream.write(data);
  }

  uncork(): void {
    this.#corked = false;
    this.#stream.uncork();
  }

  /** Replay is over: from now on the bound applies. */
  live(): void {
    this.#replaying = false;
  }

  /** While the queue is too full to take more history: a promise for its drain (or close). */
  drained(): Promise<void> | undefined {
    const socket = this.#drainable();
    if (this.closed || !socket) return undefined;
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
