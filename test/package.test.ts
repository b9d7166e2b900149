/**
 * The library as users import it: `import { subscribe, startServer } from 'hookbot'`
 * resolves through package.json "exports" to dist/ (built by `npm test`).
 */
import { describe, expect, it } from 'vitest';
import { makeToken, resolveServeConfig, startServer, subscribe } from 'hookbot';
import { removeDir, tempDir } from './helpers.js';

describe("import from 'hookbot'", () => {
  it('runs a server and a subscriber through the public API, resuming by id', async () => {
    const dataDir = tempDir();
    const server = await startServer(resolveServeConfig({ bind: '127.0.0.1:0', key: 'pkg-key', logLevel: 'silent', dataDir }, {}));
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
      removeDir(dataDir);
    }
  });
});
