/**
 * The data directory of the durable store: created if missing, held by one
 * process at a time, and holding a store file that is ours and intact, or a
 * refusal that names the file. Nothing here ever overwrites a file it did not
 * make.
 *
 * The one-writer lock is a second, tiny SQLite file held in EXCLUSIVE locking
 * mode. SQLite locks with fcntl(), which the kernel releases when the process
 * dies however it dies, so a kill -9 leaves no stale lock behind to block the
 * restart (a PID file would).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export const STORE_FILE = 'hookbot.db';
export const LOCK_FILE = 'hookbot.lock';
/** PRAGMA application_id of a hookbot store ('hkbt'), so a foreign SQLite file is told apart. */
export const APPLICATION_ID = 0x686b6274;
export const SCHEMA_VERSION = 1;

export type Db = Database.Database;

/** The store cannot be opened; the message names the directory or file and what to do. */
export class StoreOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreOpenError';
  }
}

const SCHEMA = `
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- k is the message id as one integer (see sqlite.ts), so id order is rowid order.
-- The body is the last column: trimming reads only the row's first page.
CREATE TABLE messages (
  k INTEGER PRIMARY KEY,
  topic TEXT NOT NULL,
  time INTEGER NOT NULL,
  size INTEGER NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL
);
-- Covers per-topic trimming (topic, k, size) without touching the table.
CREATE INDEX messages_topic ON messages (topic, k, size);
-- Topics with retained messages; trimmed is the newest k removed from the topic (-1: none).
CREATE TABLE topics (topic TEXT PRIMARY KEY, messages INTEGER NOT NULL, bytes INTEGER NOT NULL, trimmed INTEGER NOT NULL) WITHOUT ROWID;
-- Topics whose history emptied, remembered (bounded) so a resume on them still learns of the gap.
CREATE TABLE tombstones (topic TEXT PRIMARY KEY, trimmed INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX tombstones_age ON tombstones (trimmed);
-- Publishers' idempotency keys (scope = topic NL key) and the routers' delivery claims.
CREATE TABLE idempotency (scope TEXT PRIMARY KEY, k INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency (at);
CREATE TABLE claims (key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX claims_age ON claims (at);
`;

/**
 * Creates the directory (and parents) if missing, readable by its owner only:
 * it holds every webhook's body and headers. The error names the path and why.
 */
export function ensureDataDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new StoreOpenError(`cannot create data directory ${dir}: ${e.code ?? e.message} (choose another --data-dir, or --memory to keep nothing on disk)`);
  }
}

/**
 * Takes the directory's writer lock, or throws naming the directory when
 * another process (or another store in this process) holds it. Closing the
 * returned handle releases it.
 */
export function lockDataDir(dir: string): Db {
  const file = join(dir, LOCK_FILE);
  let lock: Db | undefined;
  try {
    lock = new Database(file, { timeout: 0 });
    lock.pragma('locking_mode = EXCLUSIVE');
    // No journal file beside the lock: the lock file never holds data worth one.
    lock.pragma('journal_mode = MEMORY');
    // The first write takes the EXCLUSIVE lock, and EXCLUSIVE locking mode keeps it until close.
    lock.exec('BEGIN EXCLUSIVE; COMMIT');
    return lock;
  } catch (err) {
    lock?.close();
    const code = (err as { code?: string }).code;
    if (code === 'SQLITE_BUSY') throw new StoreOpenError(`data directory ${dir} is in use by another hookbot serve (it holds ${file}); one process per data directory`);
    if (code === 'SQLITE_NOTADB') throw new StoreOpenError(`${file} is not a hookbot lock file; refusing to start (move it away)`);
    throw new StoreOpenError(`cannot lock data directory ${dir} (${file}): ${describe(err)}`);
  }
}

/**
 * Opens (or creates) the store file and checks it is a hookbot store of a
 * version this code reads and passes SQLite's quick_check. Every check reads
 * before anything is written, so a foreign or damaged file is left as it was.
 */
export function openStoreFile(dir: string): { db: Db; file: string; created: boolean } {
  const file = join(dir, STORE_FILE);
  let db: Db;
  try {
    db = new Database(file, { timeout: 0 });
  } catch (err) {
    throw new StoreOpenError(`cannot open ${file}: ${describe(err)}`);
  }
  try {
    const refuse = (why: string) => new StoreOpenError(`${file} ${why}; refusing to start, and leaving it as it is (move it away or choose another --data-dir)`);
    let appId: number, version: number, pages: number, tables: number;
    try {
      appId = db.pragma('application_id', { simple: true }) as number;
      version = db.pragma('user_version', { simple: true }) as number;
      pages = db.pragma('page_count', { simple: true }) as number;
      tables = (db.prepare('SELECT count(*) AS n FROM sqlite_schema').get() as { n: number }).n;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'SQLITE_NOTADB') throw refuse('is not a hookbot data file (not an SQLite database)');
      if (code?.startsWith('SQLITE_CORRUPT')) throw refuse(`is corrupt (${describe(err)})`);
      throw err;
    }
    const created = pages === 0 || (appId === 0 && tables === 0 && version === 0);
    if (!created) {
      if (appId !== APPLICATION_ID) throw refuse(`is an SQLite database of another application (application_id ${appId}), not a hookbot store`);
      if (version > SCHEMA_VERSION) throw refuse(`was written by a newer hookbot (store version ${version}; this one reads up to ${SCHEMA_VERSION})`);
      if (version < 1) throw refuse(`has an unknown store version ${version}`);
      let check: string[];
      try {
        check = (db.pragma('quick_check(5)') as Array<{ quick_check: string }>).map((r) => r.quick_check);
      } catch (err) {
        throw refuse(`is corrupt (${describe(err)})`);
      }
      if (check.length !== 1 || check[0] !== 'ok') throw refuse(`is corrupt (quick_check: ${check.join('; ').slice(0, 300)})`);
    }
    db.pragma('journal_mode = WAL');
    if (created) {
      db.transaction(() => {
        db.exec(SCHEMA);
        db.pragma(`application_id = ${APPLICATION_ID}`);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      }).immediate();
    }
    return { db, file, created };
  } catch (err) {
    db.close();
    if (err instanceof StoreOpenError) throw err;
    throw new StoreOpenError(`cannot open ${file}: ${describe(err)}`);
  }
}

export function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  if (e.code && e.message) return `${e.code}: ${e.message}`;
  return e.message ?? String(err);
}
