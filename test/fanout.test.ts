/**
 * Fan-out to more subscribers than one flush slice, against the real server:
 * publishes that arrive while earlier ones are still being flushed join the
 * same sends, and nothing is lost, duplicated or reordered on the way.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, Inbox, publish, startTestServer, subscribe } from './helpers.js';

let server: HookbotServer;

beforeAll(async () => {
  server = await startTestServer();
});

afterAll(async () => {
  await server.close();
});

/** The `data:` payloads of an SSE stream, in arrival order. */
async function sseData(path: string, count: number, signal: AbortSignal): Promise<string[]> {
  const res = await fetch(server.url + path, { headers: { accept: 'text/event-stream', ...bearer(path) }, signal });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const data = () => text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6));
  while (data().length < count) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  return data();
}

describe('fan-out across flush slices', () => {
  it('every subscriber gets every message once, in the one order the server accepted them', async () => {
    const raw = await Promise.all(Array.from({ length: 150 }, () => subscribe(server, '/sub/fan/topic')));
    const recursive = await Promise.all(Array.from({ length: 50 }, () => subscribe(server, '/sub/fan/')));
    const rawInboxes = raw.map((ws) => new Inbox(ws));
    const recursiveInboxes = recursive.map((ws) => new Inbox(ws));
    const abort = new AbortController();
    const sequential = 10;
    const concurrent = 30;
    const total = sequential + concurrent;
    const sse = Promise.all(Array.from({ length: 5 }, () => sseData('/sub/fan/topic', total, abort.signal)));
    try {
      const body = (i: number) => `message ${i} ${'x'.repeat(i * 37)}`;
      // One at a time (each answered before the next is sent), then a burst
      // that lands while earlier messages are still being flushed.
      for (let i = 0; i < sequential; i++) expect((await publish(server, '/pub/fan/topic', body(i))).status).toBe(200);
      const statuses = await Promise.all(
        Array.from({ length: concurrent }, (_, k) => publish(server, '/pub/fan/topic', body(sequential + k)).then((r) => r.status)),
      );
      expect(statuses).toEqual(Array(concurrent).fill(200));

      const first = (await rawInboxes[0].waitFor(total, 10_000)).map((m) => m.data.toString());
      // Exactly the published bodies; the one-at-a-time ones in publish order.
      expect([...first].sort()).toEqual(Array.from({ length: total }, (_, i) => body(i)).sort());
      expect(first.slice(0, sequential)).toEqual(Array.from({ length: sequential }, (_, i) => body(i)));
      for (const inbox of rawInboxes) {
        const got = await inbox.waitFor(total, 10_000);
        expect(got.every((m) => m.binary)).toBe(true);
        expect(got.map((m) => m.data.toString())).toEqual(first);
      }
      for (const inbox of recursiveInboxes) {
        expect((await inbox.waitFor(total, 10_000)).map((m) => m.data.toString())).toEqual(first.map((b) => `fan/topic\0${b}`));
      }
      for (const events of await sse) expect(events).toEqual(first);
      // Nothing extra trails behind.
      await publish(server, '/pub/fan/topic', 'last');
      for (const inbox of [...rawInboxes, ...recursiveInboxes]) {
        await inbox.waitFor(total + 1, 10_000);
        expect(inbox.messages.length).toBe(total + 1);
      }
      expect(server.broker.stats.slowDisconnects).toBe(0);
    } finally {
      abort.abort();
      for (const ws of [...raw, ...recursive]) ws.terminate();
    }
  }, 30_000);
});
