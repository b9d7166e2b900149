/**
 * Copies the store's write-ahead log back into the database file from a
 * worker thread, so the event loop never waits on the fsyncs a checkpoint
 * makes. The main connection writes with synchronous=OFF and never
 * checkpoints itself; this connection checkpoints with synchronous=FULL, so
 * the log is synced before it is copied and the database file after, and an
 * OS crash or power loss can lose recent commits but never corrupt the store.
 *
 * Checkpoints are PASSIVE: they never take a lock the writer needs, so a
 * commit on the main thread never waits for one.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** The worker's source, inlined so it runs the same from src/ (tests) and dist/. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.file, { timeout: 1000 });
db.pragma('synchronous = FULL');
parentPort.on('message', (cmd) => {
  let result;
  try {
    const [r] = db.pragma('wal_checkpoint(PASSIVE)');
    result = { log: r.log, checkpointed: r.checkpointed };
  } catch (err) {
    result = { error: String(err && err.message || err) };
  }
  if (cmd === 'close') {
    db.close();
    result.closed = true;
  }
  parentPort.postMessage(result);
});
`;

export interface CheckpointResult {
  /** Frames in the log, and how many of them are now in the database file. */
  log?: number;
  checkpointed?: number;
  error?: string;
  closed?: boolean;
}

export class Checkpointer {
  readonly #worker: Worker;
  #inFlight = false;
  #again = false;
  #closing: Promise<void> | undefined;
  #onClosed: (() => void) | undefined;
  readonly #onResult: (r: CheckpointResult) => void;

  constructor(file: string, onResult: (r: CheckpointResult) => void, onError: (err: Error) => void) {
    this.#onResult = onResult;
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#worker = new Worker(WORKER, { eval: true, workerData: { file, driver } });
    // A forgotten close() must not keep the process alive.
    this.#worker.unref();
    this.#worker.on('message', (r: CheckpointResult) => {
      this.#inFlight = false;
      if (r.closed) return this.#onClosed?.();
      this.#onResult(r);
      if (this.#again && !this.#closing) {
        this.#again = false;
        this.checkpoint();
      }
    });
    this.#worker.on('error', (err) => {
      this.#inFlight = false;
      onError(err);
      this.#onClosed?.();
    });
    this.#worker.on('exit', () => this.#onClosed?.());
  }

  get busy(): boolean {
    return this.#inFlight;
  }

  /** Asks for a checkpoint; one asked for while another runs follows it. */
  checkpoint(): void {
    if (this.#closing) return;
    if (this.#inFlight) {
      this.#again = true;
      return;
    }
    this.#inFlight = true;
    this.#worker.postMessage('checkpoint');
  }

  /** A last checkpoint, then the worker's connection is closed. */
  close(): Promise<void> {
    return (this.#closing ??= new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.#worker.terminate(), 10_000);
      timer.unref();
      this.#onClosed = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#worker.postMessage('close');
    }).then(() => this.#worker.terminate().then(() => undefined)));
  }
}
