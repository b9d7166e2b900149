import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../src/server/backends/memory.js';
import { compareIds, idTime } from '../src/protocol/message.js';
import { backendContract } from './contract/backend.contract.js';

backendContract('memory', async (retention) => {
  const backend = new MemoryBackend(retention);
  return { backend, cleanup: () => backend.close() };
});

describe('MemoryBackend across a restart', () => {
  it('restarted within the same millisecond: new ids exceed the old ones, and a resume from an old id reports a gap', async () => {
    const retention = { count: 100, bytes: 1 << 20, ageMs: 60_000, totalBytes: 1 << 20 };
    let now = 1_800_000_000_000;
    const first = new MemoryBackend(retention, () => now);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await first.publish('t', {}, Buffer.from(String(i)))).id);
    await first.close();
    // The next process starts in the very millisecond of the last id.
    now = idTime(ids[2]);
    const second = new MemoryBackend(retention, () => now);
    const next = await second.publish('t', {}, Buffer.from('after'));
    expect(compareIds(next.id, ids[2])).toBe(1);
    const resumed = await second.history('t', ids[2]);
    expect(resumed.gap).toBe(true);
    expect(resumed.messages.map((m) => m.id)).toEqual([next.id]);
    // Its own ids resume without a gap.
    expect((await second.history('t', next.id)).gap).toBe(false);
    await second.close();
  });
});

describe('MemoryBackend options', () => {
  it('refuses a topic cap below 1, naming it, rather than evicting every topic it publishes to', () => {
    const retention = { count: 100, bytes: 1 << 20, ageMs: 60_000, totalBytes: 1 << 20 };
    expect(() => new MemoryBackend({ ...retention, topics: 0 })).toThrow(/^retention\.topics \(--history-topics\) must be at least 1, got 0$/);
    expect(() => new MemoryBackend({ ...retention, topics: 1 })).not.toThrow();
  });
});
