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

describe("import from 'hookbot/client'", () => {
  /** The npm packages a fresh node process has loaded after importing `specifier` (CommonJS ones land in require.cache). */
  function packagesLoadedBy(specifier: string): string[] {
    const script = `
      await import(${JSON.stringify(specifier)});
      const { createRequire } = await import('node:module');
      const names = Object.keys(createRequire(import.meta.url).cache)
        .filter((p) => p.includes('/node_modules/'))
        .map((p) => p.split('/node_modules/').pop().split('/').slice(0, 2).filter((s, i, a) => i === 0 || a[0].startsWith('@')).join('/'));
      process.stdout.write(JSON.stringify([...new Set(names)]));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
    return JSON.parse(out) as string[];
  }

  const SERVER_ONLY = ['express', 'ioredis', 'pino', 'prom-client', 'better-sqlite3'];

  it('loads none of the server dependencies', () => {
    const loaded = packagesLoadedBy('hookbot/client');
    expect(loaded).toContain('ws');
    for (const name of SERVER_ONLY) expect(loaded, name).not.toContain(name);
  });

  it("while 'hookbot' does (so the check above can fail)", () => {
    const loaded = packagesLoadedBy('hookbot');
    for (const name of ['express', 'pino', 'prom-client']) expect(loaded, name).toContain(name);
  });

  it('exports the subscriber API', async () => {
    const client = await import('hookbot/client');
    expect(typeof client.subscribe).toBe('function');
    expect(typeof client.Message).toBe('function');
    expect(typeof client.SubscribeError).toBe('function');
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
