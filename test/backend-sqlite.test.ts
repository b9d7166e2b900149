import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendUnavailableError, DEFAULT_RETENTION, storedSize, type Retention } from '../src/server/backends/backend.js';
import { SqliteBackend, type SqliteBackendOptions } from '../src/server/backends/sqlite.js';
import { LOCK_FILE, STORE_FILE, StoreOpenError } from '../src/server/backends/sqlite-file.js';
import { compareIds, idTime, isMessageId, type Message } from '../src/protocol/message.js';
import { backendContract } from './contract/backend.contract.js';
import { removeDir, tempDir } from './helpers.js';

for (const fsync of ['normal', 'always'] as const) {
  backendContract(
    `sqlite (fsync ${fsync})`,
    async (retention) => {
      const dir = tempDir('hookbot-sqlite-');
      const backend = new SqliteBackend(dir, retention, { fsync });
      return {
        backend,
        cleanup: async () => {
          await backend.close();
          removeDir(dir);
        },
      };
    },
  );
}

describe('SqliteBackend', () => {
  const dirs: string[] = [];
  const opened: SqliteBackend[] = [];
  afterEach(async () => {
    for (const b of opened.splice(0)) await b.close();
    for (const d of dirs.splice(0)) removeDir(d);
  });
  function dir(): string {
    const d = tempDir('hookbot-sqlite-');
    dirs.push(d);
    return d;
  }
  function open(d: string, retention: Partial<Retention> = {}, options: SqliteBackendOptions = {}): SqliteBackend {
    const b = new SqliteBackend(d, { ...DEFAULT_RETENTION, ...retention }, options);
    opened.push(b);
    return b;
  }
  async function reopen(b: SqliteBackend, retention: Partial<Retention> = {}, options: SqliteBackendOptions = {}): Promise<SqliteBackend> {
    await b.close();
    return open(b.dataDir, retention, options);
  }
  const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

  it('keeps history, trim marks, idempotency keys and router claims across a reopen; ids keep growing', async () => {
    const a = open(dir(), { count: 3 });
    const x: Message[] = [];
    for (let i = 0; i < 5; i++) x.push(await a.publish('r/x', { 'x-n': String(i) }, Buffer.from([i, 0, 255])));
    const keyed = await a.publish('r/y', {}, Buffer.from('once'), { idempotencyKey: 'delivery-1' });
    expect(a.seenStore(60_000).claim('github:delivery:abc')).toBe(false);

    const b = await reopen(a, { count: 3 });
    const h = await b.history('r/x');
    expect(h.messages.map((m) => m.id)).toEqual(x.slice(2).map((m) => m.id));
    expect(h.messages.map((m) => [...m.body])).toEqual([[2, 0, 255], [3, 0, 255], [4, 0, 255]]);
    expect(h.messages.map((m) => m.headers)).toEqual([{ 'x-n': '2' }, { 'x-n': '3' }, { 'x-n': '4' }]);
    expect(h.messages.map((m) => m.time)).toEqual(x.slice(2).map((m) => m.time));
    expect((await b.history('r/x', x[0].id)).gap).toBe(true);
    expect((await b.history('r/x', x[1].id)).gap).toBe(false);
    expect((await b.history('r/', x[1].id)).messages.map((m) => m.id)).toEqual([...x.slice(2), keyed].map((m) => m.id));

    const next = await b.publish('r/x', {}, Buffer.from('after'));
    expect(compareIds(next.id, keyed.id)).toBe(1);
    const retried = await b.publish('r/y', {}, Buffer.from('once, retried'), { idempotencyKey: 'delivery-1' });
    expect(retried.id).toBe(keyed.id);
    expect((await b.history('r/y')).messages.map((m) => m.body.toString())).toEqual(['once']);
    expect(b.seenStore(60_000).claim('github:delivery:abc')).toBe(true);
    expect(await b.historyTopics()).toEqual(
      expect.arrayContaining([{ topic: 'r/x', messages: 3, bytes: 2 * storedSize('r/x', { 'x-n': '3' }, Buffer.alloc(3)) + storedSize('r/x', {}, Buffer.from('after')) }]),
    );
  });

  it('releases a claim so a failed delivery can be retried, also after a reopen', async () => {
    const a = open(dir());
    const seen = a.seenStore(60_000);
    expect(seen.claim('k1')).toBe(false);
    expect(seen.claim('k1')).toBe(true);
    void seen.release('k1');
    expect(seen.claim('k1')).toBe(false);
    expect(seen.claim('k2')).toBe(false);
    await a.publish('c', {}, Buffer.from('commit the claims'));
    void seen.release('k2');
    const b = await reopen(a);
    expect(b.seenStore(60_000).claim('k1')).toBe(true);
    expect(b.seenStore(60_000).claim('k2')).toBe(false);
  });

  it('counts released claims out, so housekeeping at --max-keys never evicts one still in its window', async () => {
    let now = 1_800_000_000_000;
    const a = open(dir(), {}, { now: () => now, maxKeys: 2 });
    const seen = a.seenStore(60_000);
    const commit = () => a.publish('c', {}, Buffer.from('commit'));
    expect(seen.claim('a')).toBe(false);
    expect(seen.claim('b')).toBe(false);
    await commit();
    // Released twice over: once committed, once while still pending.
    void seen.release('b');
    await commit();
    expect(seen.claim('p')).toBe(false);
    void seen.release('p');
    // Released and claimed again in one batch: it stays claimed.
    void seen.release('a');
    expect(seen.claim('a')).toBe(false);
    expect(seen.claim('c')).toBe(false);
    now += 2000;
    await commit();
    // Two claims, a and c, within --max-keys 2: housekeeping keeps both.
    expect(seen.claim('a')).toBe(true);
    expect(seen.claim('c')).toBe(true);
    expect(seen.claim('b')).toBe(false);
  });

  it('keeps ids strictly increasing past 4096 in one millisecond and across a reopen in that millisecond', async () => {
    const now = 1_800_000_000_000;
    const a = open(dir(), { count: 0 }, { now: () => now });
    const ids = (await Promise.all(Array.from({ length: 5000 }, (_, i) => a.publish(`t${i % 3}`, {}, Buffer.from(String(i)))))).map((m) => m.id);
    for (const id of ids) expect(isMessageId(id)).toBe(true);
    for (let i = 1; i < ids.length; i++) expect(compareIds(ids[i - 1], ids[i])).toBe(-1);
    // History is off, so only the store's record of the last id carries them on.
    const b = await reopen(a, { count: 0 }, { now: () => now });
    const next = await b.publish('t0', {}, Buffer.from('next'));
    expect(compareIds(next.id, ids.at(-1)!)).toBe(1);
    // With history off, a resume from an old id is told it may have missed messages.
    expect((await b.history('t0', ids[10])).gap).toBe(true);
  });

  it('reports a gap for a resume from before the store existed, not for its own ids', async () => {
    const b = open(dir());
    const first = await b.publish('g', {}, Buffer.from('1'));
    expect((await b.history('g', `${idTime(first.id) - 60_000}-0`)).gap).toBe(true);
    expect(await b.history('g', '0-0')).toMatchObject({ gap: false });
    expect((await b.history('g', first.id)).gap).toBe(false);
  });

  it('applies retention flags changed between runs when it opens', async () => {
    const a = open(dir());
    const x: Message[] = [];
    for (let i = 0; i < 10; i++) x.push(await a.publish('shrink', {}, Buffer.from(`m${i}`)));
    const b = await reopen(a, { count: 2 });
    const h = await b.history('shrink', x[0].id);
    expect(h).toMatchObject({ gap: true });
    expect(h.messages.map((m) => m.id)).toEqual(x.slice(8).map((m) => m.id));
  });

  it('refuses a second store on the same directory, naming it; the first keeps working', async () => {
    const d = dir();
    const first = open(d);
    await first.publish('one', {}, Buffer.from('a'));
    expect(() => open(d)).toThrow(StoreOpenError);
    expect(() => open(d)).toThrow(`data directory ${d} is in use by another hookbot serve`);
    await first.publish('one', {}, Buffer.from('b'));
    expect((await first.history('one')).messages.map((m) => m.body.toString())).toEqual(['a', 'b']);
    // Once it is closed, the directory is free again.
    const second = await reopen(first);
    expect((await second.history('one')).messages.length).toBe(2);
  });

  it('creates a missing data directory, and names the path when it cannot', () => {
    const d = join(dir(), 'a', 'b');
    open(d);
    expect(readFileSync(join(d, STORE_FILE)).subarray(0, 15).toString()).toBe('SQLite format 3');
    // It holds every webhook: its owner's only.
    expect(statSync(d).mode & 0o777).toBe(0o700);
    const file = join(dir(), 'plain-file');
    writeFileSync(file, 'x');
    expect(() => open(join(file, 'data'))).toThrow(`cannot create data directory ${join(file, 'data')}: ENOTDIR`);
  });

  it('refuses a file that is not a store, another application’s database, or a corrupt store, and leaves each as it was', async () => {
    const notDb = dir();
    writeFileSync(join(notDb, STORE_FILE), 'these are somebody else’s notes, not a database\n'.repeat(200));
    const before = sha(join(notDb, STORE_FILE));
    expect(() => open(notDb)).toThrow(`${join(notDb, STORE_FILE)} is not a hookbot data file`);
    expect(sha(join(notDb, STORE_FILE))).toBe(before);

    const foreign = dir();
    const other = new Database(join(foreign, STORE_FILE));
    other.exec("CREATE TABLE accounts (name TEXT); INSERT INTO accounts VALUES ('alice')");
    other.close();
    const foreignBefore = sha(join(foreign, STORE_FILE));
    expect(() => open(foreign)).toThrow(/is an SQLite database of another application/);
    expect(sha(join(foreign, STORE_FILE))).toBe(foreignBefore);

    const damaged = dir();
    const good = open(damaged);
    for (let i = 0; i < 300; i++) await good.publish(`d/${i % 7}`, {}, Buffer.alloc(3000, i));
    await good.close();
    const file = join(damaged, STORE_FILE);
    const bytes = readFileSync(file);
    expect(bytes.length).toBeGreaterThan(40 * 4096);
    // Scribble over pages in the middle, as a bad disk or a stray write would.
    for (let i = 20 * 4096; i < 30 * 4096; i++) bytes[i] = (i * 31) & 0xff;
    writeFileSync(file, bytes);
    const damagedBefore = sha(file);
    expect(() => open(damaged)).toThrow(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is corrupt`));
    expect(sha(file)).toBe(damagedBefore);
  });

  it('can be backed up while it runs with SQLite’s online backup, and the copy opens as a store', async () => {
    const a = open(dir());
    const sent: string[] = [];
    for (let i = 0; i < 50; i++) sent.push((await a.publish(`b/${i % 3}`, {}, Buffer.alloc(500, i))).id);
    // What `sqlite3 hookbot.db ".backup copy.db"` does, from another connection, while the store is open and writing.
    const copyDir = dir();
    const reader = new Database(a.file, { readonly: true });
    const writing = Promise.all(Array.from({ length: 20 }, (_, i) => a.publish('b/during', {}, Buffer.from(String(i)))));
    await reader.backup(join(copyDir, STORE_FILE));
    reader.close();
    await writing;
    const copy = open(copyDir);
    expect((await copy.history('b/')).messages.map((m) => m.id).slice(0, 50)).toEqual(sent);
  });

  it('refuses a lock file that is not its own', () => {
    const d = dir();
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, LOCK_FILE), 'not a lock\n'.repeat(100));
    expect(() => open(d)).toThrow(`${join(d, LOCK_FILE)} is not a hookbot lock file`);
  });

  it('answers a full store with BackendUnavailableError (nothing stored) and recovers when space returns', async () => {
    const a = open(dir(), { totalBytes: 64 * 1024 * 1024 });
    const ready: boolean[] = [];
    a.onReadyChange((r) => ready.push(r));
    const received: string[] = [];
    a.setListener((m) => received.push(m.id));
    const accepted: string[] = [];
    accepted.push((await a.publish('full', {}, Buffer.alloc(1000, 1))).id);
    a.setMaxPageCount(a.pageCount() + 8);
    let refused: unknown;
    for (let i = 0; i < 200 && refused === undefined; i++) {
      await a.publish('full', {}, Buffer.alloc(16 * 1024, i)).then(
        (m) => accepted.push(m.id),
        (err: unknown) => (refused = err),
      );
    }
    expect(refused).toBeInstanceOf(BackendUnavailableError);
    expect((refused as Error).message).toMatch(/^storage full .*the message was not stored$/);
    expect(a.ready()).toBe(false);
    // Still full: refused again, and still readable.
    await expect(a.publish('full', {}, Buffer.alloc(16 * 1024))).rejects.toBeInstanceOf(BackendUnavailableError);
    expect((await a.history('full')).messages.map((m) => m.id)).toEqual(accepted);

    a.setMaxPageCount(1_000_000_000);
    accepted.push((await a.publish('full', {}, Buffer.alloc(16 * 1024, 7))).id);
    expect(a.ready()).toBe(true);
    expect(ready).toEqual([false, true]);
    expect(received).toEqual(accepted);
    const b = await reopen(a, { totalBytes: 64 * 1024 * 1024 });
    expect((await b.history('full')).messages.map((m) => m.id)).toEqual(accepted);
  });

  it('does not write the body of a message over the history limits to the file', async () => {
    // Writing it would hold the event loop about 1-3 ms per MiB, only for the same transaction to trim it.
    const b = open(dir(), { bytes: 64 * 1024 });
    await b.publish('big/x', {}, Buffer.from('warm up'));
    const pages = b.pageCount();
    const big = await b.publish('big/x', {}, Buffer.alloc(4 * 1024 * 1024, 1));
    // 4 MiB would be a thousand 4 KiB pages.
    expect(b.pageCount() - pages).toBeLessThan(16);
    expect(await b.history('big/x', big.id)).toEqual({ gap: false, messages: [] });
    expect((await b.history('big/x', '0-0')).gap).toBe(true);
  });

  it('applies a lower --history-topics at open to the least recently published, and bounds tombstones by it', async () => {
    let now = 1_800_000_000_000;
    const a = open(dir(), {}, { now: () => now });
    const ids: string[] = [];
    for (const t of ['p', 'q', 'r', 's']) ids.push((await a.publish(`few/${t}`, {}, Buffer.from(t))).id);
    await a.publish('few/p', {}, Buffer.from('p again'));
    // Recency is read back from the file: few/q and few/r were published least recently.
    const b = await reopen(a, { topics: 2 }, { now: () => now });
    expect((await b.historyTopics()).map((t) => t.topic).sort()).toEqual(['few/p', 'few/s']);
    expect((await b.history('few/q', '0-0')).gap).toBe(true);
    expect(await b.history('few/r', ids[2])).toEqual({ gap: false, messages: [] });
    expect((await b.history('few/r', ids[1])).gap).toBe(true);

    // Ten more topics push eight more out; a second later housekeeping keeps two tombstones.
    for (let i = 0; i < 10; i++) await b.publish(`many/${i}`, {}, Buffer.from(String(i)));
    now += 2000;
    await b.publish('many/last', {}, Buffer.from('last'));
    const file = new Database(b.file, { readonly: true });
    try {
      expect((file.prepare('SELECT count(*) AS n FROM tombstones').get() as { n: number }).n).toBe(2);
      expect((file.prepare('SELECT count(*) AS n FROM topics').get() as { n: number }).n).toBe(2);
    } finally {
      file.close();
    }
    // What was forgotten still reads as a gap.
    expect((await b.history('few/q', ids[0])).gap).toBe(true);
    expect((await b.history('many/', '0-0')).gap).toBe(true);
  });

  it('remembers the gap of a topic that emptied, across a reopen', async () => {
    const a = open(dir(), { ageMs: 60_000 });
    const first = await a.publish('tomb/a', {}, Buffer.from('1'));
    // Push tomb/a out by total size; its tombstone keeps the gap on record across a reopen.
    const b = await reopen(a, { totalBytes: 1 });
    expect(await b.history('tomb/a')).toEqual({ gap: false, messages: [] });
    expect((await b.history('tomb/a', '0-0')).gap).toBe(true);
    expect((await b.history('tomb/', '0-0')).gap).toBe(true);
    expect((await b.history('tomb/a', first.id)).gap).toBe(false);
    // Nothing is retained, yet ids go on from the trim marks.
    expect(compareIds((await b.publish('tomb/b', {}, Buffer.from('2'))).id, first.id)).toBe(1);
  });
});
