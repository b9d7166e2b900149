/**
 * The behaviour every Backend must have, run against each implementation
 * (test/backend-memory.test.ts, test/backend-redis.test.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BackendUnavailableError, DEFAULT_RETENTION, storedSize, type Backend, type Retention } from '../../src/server/backends/backend.js';
import { compareIds, isMessageId, type Message } from '../../src/protocol/message.js';
import { waitFor } from '../helpers.js';

export interface MadeBackend {
  backend: Backend;
  cleanup(): Promise<void>;
}

/** Builds a fresh, ready backend with the given retention (and an empty history). */
export type MakeBackend = (retention: Retention) => Promise<MadeBackend>;

const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const notUtf8 = Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80, 0x0a, 0x00]);

/** What a backend may leave out, each documented in the README. */
export interface ContractOptions {
  /** --history-topics is enforced (not by Redis, whose memory the byte limits and maxmemory bound). */
  capsTopics?: boolean;
}

export function backendContract(name: string, make: MakeBackend, { capsTopics = true }: ContractOptions = {}): void {
  // What one retained message counts against the byte limits, in every backend.
  const size = storedSize;
  describe(`Backend contract: ${name}`, () => {
    const made: MadeBackend[] = [];
    afterEach(async () => {
      for (const m of made.splice(0)) await m.cleanup();
    });

    async function open(retention: Partial<Retention> = {}): Promise<{ backend: Backend; received: Message[] }> {
      const m = await make({ ...DEFAULT_RETENTION, ...retention });
      made.push(m);
      const received: Message[] = [];
      m.backend.setListener((msg) => received.push(msg));
      expect(m.backend.ready()).toBe(true);
      return { backend: m.backend, received };
    }

    it('gives unique, strictly increasing ids across topics', async () => {
      const { backend } = await open();
      const ids: string[] = [];
      for (let i = 0; i < 200; i++) ids.push((await backend.publish(`t${i % 7}`, {}, Buffer.from(String(i)))).id);
      for (const id of ids) expect(isMessageId(id)).toBe(true);
      for (let i = 1; i < ids.length; i++) expect(compareIds(ids[i - 1], ids[i])).toBe(-1);
      expect(new Set(ids).size).toBe(ids.length);
    });

    it('calls the listener once per message with the same id, topic, headers and bytes', async () => {
      const { backend, received } = await open();
      const headers = { 'content-type': 'application/octet-stream', 'x-github-event': 'push', 'x-custom': 'ünïcode ✓' };
      const published = [
        await backend.publish('a/b', headers, allBytes),
        await backend.publish('/unsafe/a/b', {}, notUtf8),
        await backend.publish('weird {x} *?[] topic/ü', { 'user-agent': 'x' }, Buffer.from('text\n')),
        await backend.publish('empty', {}, Buffer.alloc(0)),
      ];
      await waitFor(() => received.length >= published.length, 5000, 'listener calls');
      await new Promise((r) => setImmediate(r));
      expect(received.length).toBe(published.length);
      received.forEach((m, i) => {
        const p = published[i];
        expect(m.id).toBe(p.id);
        expect(m.topic).toBe(p.topic);
        expect(m.headers).toEqual(p.headers);
        expect(Buffer.compare(m.body, p.body)).toBe(0);
        expect(m.time).toBe(p.time);
      });
      expect(published[0].headers).toEqual(headers);
      expect(Buffer.compare(received[0].body, allBytes)).toBe(0);
      expect(Buffer.compare(received[1].body, notUtf8)).toBe(0);
    });

    it('delivers concurrent publishes in id order, per topic and overall', async () => {
      const { backend, received } = await open();
      const published = await Promise.all(
        Array.from({ length: 100 }, (_, i) => backend.publish(i % 2 ? 'odd' : 'even', {}, Buffer.from(String(i)))),
      );
      await waitFor(() => received.length >= 100, 5000, '100 deliveries');
      for (let i = 1; i < received.length; i++) expect(compareIds(received[i - 1].id, received[i].id)).toBe(-1);
      expect(received.map((m) => m.id).sort(compareIds)).toEqual(published.map((m) => m.id).sort(compareIds));
      for (const topic of ['odd', 'even']) {
        // Publishes to one topic were issued in this order, so they must arrive in it.
        const sent = published.filter((m) => m.topic === topic).map((m) => m.body.toString());
        const got = received.filter((m) => m.topic === topic).map((m) => m.body.toString());
        expect(got).toEqual(sent);
      }
    });

    it('returns exact-topic history with since and limit', async () => {
      const { backend } = await open();
      const x: Message[] = [];
      for (let i = 0; i < 5; i++) {
        x.push(await backend.publish('h/x', { n: String(i) }, Buffer.from(`x${i}`)));
        await backend.publish('h/y', {}, Buffer.from(`y${i}`));
        await backend.publish('h/x/deeper', {}, Buffer.from(`d${i}`));
      }
      const all = await backend.history('h/x');
      expect(all.gap).toBe(false);
      expect(all.messages.map((m) => m.id)).toEqual(x.map((m) => m.id));
      expect(all.messages.map((m) => m.body.toString())).toEqual(['x0', 'x1', 'x2', 'x3', 'x4']);
      expect(all.messages[3].headers).toEqual({ n: '3' });

      const since = await backend.history('h/x', x[1].id);
      expect(since).toMatchObject({ gap: false });
      expect(since.messages.map((m) => m.id)).toEqual(x.slice(2).map((m) => m.id));

      expect(await backend.history('h/x', x[4].id)).toEqual({ gap: false, messages: [] });
      expect(await backend.history('h/none')).toEqual({ gap: false, messages: [] });
      expect(await backend.history('h/none', x[0].id)).toEqual({ gap: false, messages: [] });

      const limited = await backend.history('h/x', x[0].id, 2);
      expect(limited.gap).toBe(true);
      expect(limited.messages.map((m) => m.id)).toEqual([x[3].id, x[4].id]);
      const exact = await backend.history('h/x', x[2].id, 2);
      expect(exact.gap).toBe(false);
      expect(exact.messages.map((m) => m.id)).toEqual([x[3].id, x[4].id]);
      const zero = await backend.history('h/x', x[2].id, 0);
      expect(zero).toEqual({ gap: true, messages: [] });

      // A since newer than anything, or between messages of other topics, is fine.
      const between = await backend.history('h/x', (await backend.publish('h/y', {}, Buffer.from('late'))).id);
      expect(between).toEqual({ gap: false, messages: [] });
    });

    it('returns recursive (prefix) history across topics in id order', async () => {
      const { backend } = await open();
      const sent: Message[] = [];
      for (let i = 0; i < 3; i++) {
        sent.push(await backend.publish('p/a', {}, Buffer.from(`a${i}`)));
        await backend.publish('pq', {}, Buffer.from(`pq${i}`));
        sent.push(await backend.publish('p/b/c', {}, Buffer.from(`c${i}`)));
        await backend.publish('other/p/', {}, Buffer.from(`o${i}`));
      }
      const all = await backend.history('p/');
      expect(all.gap).toBe(false);
      expect(all.messages.map((m) => m.id)).toEqual(sent.map((m) => m.id));
      expect(all.messages.map((m) => m.topic)).toEqual(['p/a', 'p/b/c', 'p/a', 'p/b/c', 'p/a', 'p/b/c']);

      const since = await backend.history('p/', sent[2].id);
      expect(since.gap).toBe(false);
      expect(since.messages.map((m) => m.id)).toEqual(sent.slice(3).map((m) => m.id));

      const limited = await backend.history('p/', sent[0].id, 3);
      expect(limited.gap).toBe(true);
      expect(limited.messages.map((m) => m.id)).toEqual(sent.slice(3).map((m) => m.id));

      const deeper = await backend.history('p/b/');
      expect(deeper.messages.map((m) => m.body.toString())).toEqual(['c0', 'c1', 'c2']);
      expect(await backend.history('nothing/here/')).toEqual({ gap: false, messages: [] });
    });

    it('trims by count and reports the gap', async () => {
      const { backend } = await open({ count: 3 });
      const x: Message[] = [];
      for (let i = 0; i < 5; i++) x.push(await backend.publish('c/x', {}, Buffer.from(`x${i}`)));
      const other = await backend.publish('c/y', {}, Buffer.from('y'));

      const all = await backend.history('c/x');
      expect(all.messages.map((m) => m.body.toString())).toEqual(['x2', 'x3', 'x4']);
      expect(all.gap).toBe(false);
      // x1 was trimmed: a resume from x0 missed it; a resume from x1 missed nothing.
      expect((await backend.history('c/x', x[0].id)).gap).toBe(true);
      const fromX1 = await backend.history('c/x', x[1].id);
      expect(fromX1.gap).toBe(false);
      expect(fromX1.messages.map((m) => m.id)).toEqual(x.slice(2).map((m) => m.id));

      const rec = await backend.history('c/', x[0].id);
      expect(rec.gap).toBe(true);
      expect(rec.messages.map((m) => m.id)).toEqual([...x.slice(2), other].map((m) => m.id));
      expect((await backend.history('c/', x[1].id)).gap).toBe(false);
      // Another topic's trimming is not this topic's gap.
      expect((await backend.history('c/y', x[0].id)).gap).toBe(false);
    });

    it('trims by bytes per topic and in total', async () => {
      // Limits in the backend's own accounting: two of b/x's four fit, then three b/t* fill the total.
      const x = (i: number) => size('b/x', {}, Buffer.from(`abc${i}`));
      const t = (i: number) => size(`b/t${i}`, {}, Buffer.from(`12345${i}`));
      const perTopic = 2 * x(0) + 1;
      const total = t(0) + t(1) + t(2);
      const { backend } = await open({ bytes: perTopic, totalBytes: total });
      for (let i = 0; i < 4; i++) await backend.publish('b/x', {}, Buffer.from(`abc${i}`));
      const kept = await backend.history('b/x');
      expect(kept.messages.map((m) => m.body.toString())).toEqual(['abc2', 'abc3']);

      // The total counts every topic, so the oldest go first wherever they are.
      for (let i = 0; i < 3; i++) await backend.publish(`b/t${i}`, {}, Buffer.from(`12345${i}`));
      const rec = await backend.history('b/');
      const bytes = rec.messages.reduce((n, m) => n + size(m.topic, m.headers, m.body), 0);
      expect(bytes).toBeLessThanOrEqual(total);
      // b/x's two no longer fit beside the three newer ones: both go, oldest first.
      expect(rec.messages.map((m) => m.body.toString())).toEqual(['123450', '123451', '123452']);
      expect((await backend.history('b/x', '0-0')).gap).toBe(true);

      // A single message over the per-topic limit is not kept.
      await backend.publish('b/big', {}, Buffer.alloc(perTopic - size('b/big', {}, Buffer.alloc(0)) + 1, 1));
      expect((await backend.history('b/big')).messages).toEqual([]);
    });

    it('delivers a message over the per-topic or the total limit live, keeps none of it, and reports the gap', async () => {
      const { backend, received } = await open({ bytes: 1024, totalBytes: 4096 });
      const small = await backend.publish('o/x', {}, Buffer.from('kept'));
      const big = await backend.publish('o/x', { h: '1' }, Buffer.alloc(2000, 7));
      await waitFor(() => received.length === 2, 5000, 'deliveries');
      expect(Buffer.compare(received[1].body, Buffer.alloc(2000, 7))).toBe(0);
      expect(received[1]).toMatchObject({ id: big.id, topic: 'o/x', headers: { h: '1' } });
      // Trimming goes oldest first, so the one before it goes too.
      expect(await backend.history('o/x')).toEqual({ gap: false, messages: [] });
      expect((await backend.history('o/x', small.id)).gap).toBe(true);
      expect(await backend.history('o/x', big.id)).toEqual({ gap: false, messages: [] });
      const after = await backend.publish('o/x', {}, Buffer.from('kept again'));
      expect((await backend.history('o/x', big.id)).messages.map((m) => m.id)).toEqual([after.id]);

      // Within its topic's limit but over the total: everything older goes, and it does too.
      const t = await open({ bytes: 1024 * 1024, totalBytes: 4096 });
      const x = await t.backend.publish('o/x', {}, Buffer.from('x'));
      const y = await t.backend.publish('o/y', {}, Buffer.from('y'));
      const huge = Buffer.alloc(5000, 9);
      const z = await t.backend.publish('o/z', {}, huge);
      await waitFor(() => t.received.length === 3, 5000, 'deliveries');
      expect(Buffer.compare(t.received[2].body, huge)).toBe(0);
      expect((await t.backend.history('o/')).messages).toEqual([]);
      expect((await t.backend.history('o/y', x.id)).gap).toBe(true);
      expect((await t.backend.history('o/', y.id)).gap).toBe(true);
      expect(await t.backend.history('o/', z.id)).toEqual({ gap: false, messages: [] });
    });

    it.skipIf(!capsTopics)('keeps history for --history-topics topics: the least recently published loses it, and a resume on it is told', async () => {
      const { backend } = await open({ topics: 3 });
      const body = (m: Message) => m.body.toString();
      await backend.publish('cap/a', {}, Buffer.from('a1'));
      const b = await backend.publish('cap/b', {}, Buffer.from('b'));
      await backend.publish('cap/c', {}, Buffer.from('c'));
      // cap/a is published again, so cap/b is now the least recently published.
      await backend.publish('cap/a', {}, Buffer.from('a2'));
      await backend.publish('cap/d', {}, Buffer.from('d'));

      expect(await backend.history('cap/b')).toEqual({ gap: false, messages: [] });
      expect((await backend.history('cap/b', '0-0')).gap).toBe(true);
      expect(await backend.history('cap/b', b.id)).toEqual({ gap: false, messages: [] });
      const all = await backend.history('cap/');
      expect(all.messages.map(body)).toEqual(['a1', 'c', 'a2', 'd']);
      expect((await backend.history('cap/', '0-0')).gap).toBe(true);
      expect((await backend.historyTopics()).map((t) => t.topic).sort()).toEqual(['cap/a', 'cap/c', 'cap/d']);

      // A topic that lost its history keeps new messages as any other.
      const again = await backend.publish('cap/b', {}, Buffer.from('b again'));
      expect((await backend.history('cap/b', b.id)).messages.map((m) => m.id)).toEqual([again.id]);
      expect((await backend.historyTopics()).map((t) => t.topic).sort()).toEqual(['cap/a', 'cap/b', 'cap/d']);
    });

    it('expires by age and reports the gap', async () => {
      const { backend, received } = await open({ ageMs: 300 });
      const first = await backend.publish('age/x', {}, Buffer.from('old'));
      await backend.publish('age/y', {}, Buffer.from('old too'));
      expect((await backend.history('age/x')).messages.length).toBe(1);
      await waitFor(async () => (await backend.history('age/')).messages.length === 0, 5000, 'age expiry');
      expect(await backend.history('age/x')).toEqual({ gap: false, messages: [] });
      expect((await backend.history('age/x', '0-0')).gap).toBe(true);
      expect((await backend.history('age/', '0-0')).gap).toBe(true);
      expect((await backend.history('age/x', first.id)).gap).toBe(false);
      const fresh = await backend.publish('age/x', {}, Buffer.from('new'));
      const after = await backend.history('age/x', first.id);
      expect(after).toMatchObject({ gap: false });
      expect(after.messages.map((m) => m.id)).toEqual([fresh.id]);
      await waitFor(() => received.length === 3, 5000, 'deliveries');
    });

    it('keeps binary bodies byte for byte in history', async () => {
      const { backend } = await open();
      const big = Buffer.alloc(256 * 1024);
      for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
      await backend.publish('bin', {}, allBytes);
      await backend.publish('bin', {}, notUtf8);
      await backend.publish('bin', {}, big);
      const h = await backend.history('bin');
      expect(h.messages.length).toBe(3);
      expect(Buffer.compare(h.messages[0].body, allBytes)).toBe(0);
      expect(Buffer.compare(h.messages[1].body, notUtf8)).toBe(0);
      expect(Buffer.compare(h.messages[2].body, big)).toBe(0);
      const r = await backend.history('/unsafe/', undefined);
      expect(r.messages).toEqual([]);
    });

    it('keeps nothing with history disabled but still delivers', async () => {
      const { backend, received } = await open({ count: 0 });
      const a = await backend.publish('off/x', {}, Buffer.from('1'));
      await backend.publish('off/x', {}, Buffer.from('2'));
      await waitFor(() => received.length === 2, 5000, 'deliveries');
      expect(received.map((m) => m.body.toString())).toEqual(['1', '2']);
      expect(await backend.history('off/x')).toEqual({ gap: false, messages: [] });
      expect((await backend.history('off/', a.id)).messages).toEqual([]);
      expect(await backend.historyTopics()).toEqual([]);
    });

    it('lists topics with history', async () => {
      const { backend } = await open({ count: 2 });
      await backend.publish('l/a', {}, Buffer.from('12'));
      for (let i = 0; i < 3; i++) await backend.publish('/unsafe/l/b', {}, Buffer.from('123'));
      const topics = (await backend.historyTopics()).sort((p, q) => p.topic.localeCompare(q.topic));
      expect(topics).toEqual([
        { topic: '/unsafe/l/b', messages: 2, bytes: 2 * size('/unsafe/l/b', {}, Buffer.from('123')) },
        { topic: 'l/a', messages: 1, bytes: size('l/a', {}, Buffer.from('12')) },
      ]);
    });

    it('answers a repeated idempotency key with the original id and stores nothing', async () => {
      const { backend, received } = await open();
      const first = await backend.publish('i/x', { n: '1' }, Buffer.from('one'), { idempotencyKey: 'delivery-1' });
      const again = await backend.publish('i/x', { n: '2' }, Buffer.from('one, retried'), { idempotencyKey: 'delivery-1' });
      expect(again.id).toBe(first.id);
      // The same key on another topic, or another key, is a new message.
      const other = await backend.publish('i/y', {}, Buffer.from('two'), { idempotencyKey: 'delivery-1' });
      const fresh = await backend.publish('i/x', {}, Buffer.from('three'), { idempotencyKey: 'delivery-2' });
      const plain = await backend.publish('i/x', {}, Buffer.from('four'));
      expect(new Set([first.id, other.id, fresh.id, plain.id]).size).toBe(4);
      // The listener receives in id order: once the marker is in, a retried copy delivered anyway would be too.
      const marker = await backend.publish('i/x', {}, Buffer.from('end'));
      await waitFor(() => received.some((m) => m.id === marker.id), 5000, 'marker');
      expect(received.map((m) => m.body.toString())).toEqual(['one', 'two', 'three', 'four', 'end']);
      const h = await backend.history('i/x');
      expect(h.messages.map((m) => m.body.toString())).toEqual(['one', 'three', 'four', 'end']);
      expect(h.messages[0].headers).toEqual({ n: '1' });
    });

    it('gives publishes in flight together with one idempotency key one message', async () => {
      const { backend, received } = await open();
      const all = await Promise.all(
        Array.from({ length: 20 }, (_, i) => backend.publish('i/burst', {}, Buffer.from(`copy ${i}`), { idempotencyKey: i % 2 ? 'odd' : 'even' })),
      );
      expect(new Set(all.filter((_, i) => i % 2 === 0).map((m) => m.id)).size).toBe(1);
      expect(new Set(all.filter((_, i) => i % 2 === 1).map((m) => m.id)).size).toBe(1);
      expect(all[0].id).not.toBe(all[1].id);
      // The listener receives in id order: once the marker is in, any extra copy delivered would be too.
      const marker = await backend.publish('i/burst', {}, Buffer.from('end'));
      await waitFor(() => received.some((m) => m.id === marker.id), 5000, 'marker');
      expect(received.map((m) => m.body.toString())).toEqual(['copy 0', 'copy 1', 'end']);
      expect((await backend.history('i/burst')).messages.map((m) => m.id)).toEqual([all[0].id, all[1].id, marker.id]);
    });

    it('stores a publish repeating an idempotency key once and answers with the original id', async () => {
      const { backend, received } = await open();
      const first = await backend.publish('idem/x', { 'content-type': 'text/plain' }, Buffer.from('one'), { idempotencyKey: 'delivery-1' });
      const again = await backend.publish('idem/x', { 'content-type': 'text/plain' }, Buffer.from('one'), { idempotencyKey: 'delivery-1' });
      expect(again.id).toBe(first.id);
      // Keys are per topic; publishes without one are never merged.
      const elsewhere = await backend.publish('idem/y', {}, Buffer.from('one'), { idempotencyKey: 'delivery-1' });
      const plain = [await backend.publish('idem/x', {}, Buffer.from('p')), await backend.publish('idem/x', {}, Buffer.from('p'))];
      expect(new Set([first.id, elsewhere.id, plain[0].id, plain[1].id]).size).toBe(4);
      // The listener receives in id order: once the marker is in, a repeat delivered anyway would be too.
      const marker = await backend.publish('idem/x', {}, Buffer.from('end'));
      await waitFor(() => received.some((m) => m.id === marker.id), 5000, 'marker');
      expect(received.map((m) => m.id)).toEqual([first.id, elsewhere.id, plain[0].id, plain[1].id, marker.id]);
      expect((await backend.history('idem/x')).messages.map((m) => m.id)).toEqual([first.id, plain[0].id, plain[1].id, marker.id]);
    });

    it('rejects publishes after close', async () => {
      const { backend } = await open();
      await backend.publish('z', {}, Buffer.from('before'));
      await backend.close();
      expect(backend.ready()).toBe(false);
      await expect(backend.publish('z', {}, Buffer.from('after'))).rejects.toBeInstanceOf(BackendUnavailableError);
      await backend.close(); // twice is harmless
    });
  });
}
