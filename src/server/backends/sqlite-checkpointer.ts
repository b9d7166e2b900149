/**
 * Copies the store's write-ahead log back into the database file from a
 * worker thread, so the event loop never waits on the fsyncs a checkpoint
 * makes. The main connection writes with synchronous=OFF and never
 * checkpoints itself; this connection checkpoints with synchronous=FULL, so
 * the log is synced before it is copied and the database file after, and an
 * OS crash or power loss can lose recent commits but never corrupt the store.
 *
 * Two kinds, both asked for by the store:
 * - 'passive' takes no lock a writer needs, so commits go on meanwhile; it
 *   copies the bulk of the log.
 * - 'truncate' also empties the log file. SQLite only starts a log over when
 *   a checkpoint finished with no commit since, which sustained writes never
 *   allow, so without it the log would grow for as long as publishes keep
 *   coming. The store holds its commits back (queueing them, never blocking
 *   the event loop) while one runs; it copies only what the last passive one
 *   left, so the pause is short.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

export type CheckpointMode = 'passive' | 'truncate';

/** The worker's source, inlined so it runs the same from src/ (tests) and dist/. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.file, { timeout: 5000 });
db.pragma('synchronous = FULL');
parentPort.on('message', (cmd) => {
  const result = { mode: cmd.mode };
  try {
    const [r] = db.pragma(cmd.mode === 'truncate' ? 'wal_checkpoint(TRUNCATE)' : 'wal_checkpoint(PASSIVE)');
    Object.assign(result, { log: r.log, checkpointed: r.checkpointed, busy: r.busy });
  } catch (err) {
    result.error = String((err && err.message) || err);
  }
  if (cmd.close) {
    db.close();
    result.closed = true;
  }
  parentPort.postMessage(result);
});
`;

export interface CheckpointResult {
  mode: CheckpointMode;
  /** Frames in the log, and how many of them are now in the database file (-1, -1 after a truncate). */
  log?: number;
  checkpointed?: number;
  /** 1 when the checkpoint could not get the locks it needed (it did what it could). */
  busy?: number;
  error?: string;
  closed?: boolean;
}

export class Checkpointer {
  readonly #worker: Worker;
  #inFlight = false;
  #closing: Promise<void> | undefined;
  #onClosed: (() => void) | undefined;

  constructor(file: string, onResult: (r: CheckpointResult) => void, onError: (err: Error) => void) {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#worker = new Worker(WORKER, { eval: true, workerData: { file, driver } });
    // A forgotten close() must not keep the process alive.
    this.#worker.unref();
    this.#worker.on('message', (r: CheckpointResult) => {
      this.#inFlight = false;
      if (r.closed) return this.#onClosed?.();
      onResult(r);
    });
    this.#worker.on('error', (err) => {
      this.#inFlight = false;
      onError(err);
      this.#onClosed?.();
    });
    this.#worker.on('exit', () => this.#onClosed?.());
  }

  /** A checkpoint is running (the store asks for the next one once it reports). */
  get busy(): boolean {
    return this.#inFlight;
  }

  /** Starts a checkpoint; false (and nothing done) while one runs or after close. */
  checkpoint(mode: CheckpointMode): boolean {
    if (this.#inFlight || this.#closing) return false;
    this.#inFlight = true;
    this.#worker.postMessage({ mode });
    return true;
  }

  /** A last passive checkpoint, then the worker's connection is closed. */
  close(): Promise<void> {
    return (this.#closing ??= new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.#worker.terminate(), 10_000);
      timer.unref();
      this.#onClosed = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#worker.postMessage({ mode: 'passive', close: true });
    }).then(() => this.#worker.terminate().then(() => undefined)));
  }
}
