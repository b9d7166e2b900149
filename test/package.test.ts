/**
 * The library as users import it: `import { subscribe, startServer } from 'hookbot'`
 * resolves through package.json "exports" to dist/ (built by `npm test`).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { makeToken, resolveServeConfig, startServer, subscribe } from 'hookbot';
import { ROOT } from './helpers.js';

describe("import from 'hookbot'", () => {
  it('runs a server and a subscriber through the public API, resuming by id', async () => {
    const server = await startServer(resolveServeConfig({ bind: '127.0.0.1:0', key: 'pkg-key', logLevel: 'silent' }, {}));
    try {
      const url = server.url.replace('http://', `ws://${makeToken('pkg-key', '/sub/pkg/')}@`) + '/sub/pkg/';
      const publish = (topic: string, body: string) =>
        fetch(`${server.url}/pub/${topic}`, { method: 'POST', body, headers: { authorization: `Bearer ${makeToken('pkg-key', `/pub/${topic}`)}` } });
      const first = await publish('pkg/a', 'one');
      const since = first.headers.get('x-hookbot-message-id')!;
      await publish('pkg/b', 'two');
      const sub = subscribe(url, { since });
      const got: Array<[string, string]> = [];
      for await (const m of sub) {
        got.push([m.topic, m.body.toString()]);
        if (got.length === 1) await publish('pkg/a', 'three');
        if (got.length === 2) break;
      }
      expect(got).toEqual([
        ['pkg/b', 'two'],
        ['pkg/a', 'three'],
      ]);
      await sub.close();
    } finally {
      await server.close();
    }
  });
});

describe('the npm package', () => {
  it("ships the Redis backend's Lua scripts beside its code in dist/", () => {
    const scripts = readdirSync(new URL('../src/server/backends/redis-lua/', import.meta.url)).filter((f) => f.endsWith('.lua'));
    expect(scripts.length).toBeGreaterThan(0);
    const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as Array<{ files: Array<{ path: string }> }>;
    const files = packed[0].files.map((f) => f.path);
    for (const name of scripts) expect(files).toContain(`dist/server/backends/redis-lua/${name}`);
  });
});
