/**
 * The package as a user installs it: `npm pack`, then the tarball installed
 * into an empty directory with --omit=dev (exactly the Dockerfile's steps),
 * and from there `npx hookbot --version`, `npx hookbot serve` answering
 * /status and serving the inspector, and `import('hookbot/client')`.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, ROOT } from './helpers.js';

const NPM = 'npm';
let dir: string;

// Asynchronous: the install takes minutes, and a blocked worker misses vitest's own calls.
const run = promisify(execFile);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hookbot-pack-'));
  const packDir = join(dir, 'tarball');
  const app = join(dir, 'app');
  mkdirSync(packDir);
  mkdirSync(app);
  // dist/ is already built (npm test builds first); packing must not rebuild it under the other test files' feet.
  await run(NPM, ['pack', '--ignore-scripts', '--pack-destination', packDir, '--silent'], { cwd: ROOT });
  const tarball = readdirSync(packDir).find((f) => f.endsWith('.tgz'))!;
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'pack-test', version: '1.0.0', private: true, type: 'module' }));
  // Builds better-sqlite3 from source where no prebuilt binary can be fetched: minutes, not seconds.
  await run(NPM, ['install', '--omit=dev', '--no-audit', '--no-fund', join(packDir, tarball)], { cwd: app, maxBuffer: 64 * 1024 * 1024 });
}, 600_000);

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('the installed package', () => {
  const app = () => join(dir, 'app');

  it('ships only what it needs', () => {
    const installed = join(app(), 'node_modules', 'hookbot');
    expect(readdirSync(installed).sort()).toEqual(['README.md', 'bin', 'dist', 'package.json', 'public']);
    // Dev-only tools are not installed with --omit=dev.
    expect(readdirSync(join(app(), 'node_modules'))).not.toContain('vitest');
  });

  it('npx hookbot --version', () => {
    const out = execFileSync('npx', ['hookbot', '--version'], { cwd: app(), encoding: 'utf8' });
    expect(out).toMatch(/^hookbot version \d+\.\d+\.\d+\n$/);
  });

  it('npx hookbot serve answers /status and serves the inspector page, on the default durable store', async () => {
    const port = await freePort();
    // A process group of its own: npx runs hookbot as its child, and both must go at the end.
    const child = spawn('npx', ['hookbot', 'serve', '--bind', `127.0.0.1:${port}`], {
      cwd: app(),
      detached: true,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, HOOKBOT_KEY: 'pack-key', HOOKBOT_LOG_JSON: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`no Listening line: ${out}`)), 30_000);
        const read = (c: Buffer) => {
          out += c.toString();
          if (out.includes('Listening on')) {
            clearTimeout(timer);
            resolve();
          }
        };
        child.stdout.on('data', read);
        child.stderr.on('data', read);
        child.once('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
      });
      const status = await fetch(`http://127.0.0.1:${port}/status`);
      expect([status.status, await status.text()]).toEqual([200, 'OK\n']);
      const page = await fetch(`http://127.0.0.1:${port}/_/`);
      expect(page.status).toBe(200);
      expect(await page.text()).toMatch(/<html/i);
      expect(readdirSync(app())).toContain('hookbot-data');
    } finally {
      process.kill(-child.pid!, 'SIGTERM');
    }
  }, 60_000);

  it("import('hookbot/client') works", () => {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', "const c = await import('hookbot/client'); process.stdout.write(typeof c.subscribe);"], { cwd: app(), encoding: 'utf8' });
    expect(out).toBe('function');
  });
});
