/**
 * smee channels from the command line, as real child processes of the built
 * CLI: `hookbot new-channel` mints ids the server (same key) accepts, and
 * `hookbot forward` / `hookbot sub` take a channel URL as it is, with no
 * token, re-delivering the exact bytes and the query string.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { githubSignature, KEY, ROOT, runCli, startServeProcess, WebhookApp, type Proc } from './helpers.js';

const SECRET = 'cli-secret';
const FAST = ['--min-backoff', '50ms', '--max-backoff', '300ms'];

beforeAll(() => {
  if (!existsSync(join(ROOT, 'dist/cli/new-channel.js'))) throw new Error('run `npm run build` before this test');
});

const procs: Proc[] = [];
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  for (const c of closers.splice(0)) await c();
});

function cli(args: string[], env: Record<string, string | undefined> = {}): Proc {
  const p = runCli(args, { HOOKBOT_KEY: KEY, ...env });
  procs.push(p);
  return p;
}

async function serve(args: string[] = ['--smee'], env: Record<string, string> = {}) {
  const p = await startServeProcess(args, env);
  procs.push(p);
  return p;
}

describe('hookbot new-channel', () => {
  it('prints channel URLs under --public-url (or HOOKBOT_PUBLIC_URL), or bare ids, that a server with the same key accepts', async () => {
    const server = await serve([], { HOOKBOT_SMEE: 'true' });
    const one = cli(['new-channel', '--public-url', server.url]);
    expect((await one.exit).code).toBe(0);
    const url = one.stdout().trim();
    expect(url).toMatch(new RegExp(`^${server.url}/[a-z2-7]{40}$`));
    expect((await fetch(url, { method: 'POST', body: '{}' })).status).toBe(200);

    const several = cli(['new-channel', '-n', '3'], { HOOKBOT_PUBLIC_URL: 'https://hooks.example.com/relay' });
    await several.exit;
    const lines = several.stdout().trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(l).toMatch(/^https:\/\/hooks\.example\.com\/relay\/[a-z2-7]{40}$/);
    const bare = cli(['new-channel', '--bare']);
    await bare.exit;
    expect(bare.stdout()).toMatch(/^[a-z2-7]{40}\n$/);

    const otherKey = cli(['--key', 'some-other-key', 'new-channel', '--bare']);
    await otherKey.exit;
    expect((await fetch(`${server.url}/${otherKey.stdout().trim()}`, { method: 'POST', body: '{}' })).status).toBe(404);
    const noKey = cli(['new-channel'], { HOOKBOT_KEY: undefined });
    expect((await noKey.exit).code).toBe(1);
    expect(noKey.stderr()).toMatch(/HOOKBOT_KEY not set/);
  });
});

describe('hookbot forward and sub with a channel URL', () => {
  it('forward re-delivers the exact bytes, headers and query string without a token; sub prints the bodies', async () => {
    const server = await serve();
    const url = (await fetch(`${server.url}/new`, { redirect: 'manual' })).headers.get('location')!;
    const app = await WebhookApp.start(SECRET);
    closers.push(() => app.close());
    const fwd = cli(['forward', url, '--to', `${app.url}?existing=1`, ...FAST]);
    const sub = cli(['sub', url, ...FAST]);
    await Promise.all([fwd.waitForLine(/"msg":"connected"/), sub.waitForLine(/"msg":"connected"/)]);

    const bodies = [Buffer.from('{ "pretty" : true,\n  "n": 1 }\n'), Buffer.from('{"n":2}')];
    for (const [i, body] of bodies.entries()) {
      const res = await fetch(`${url}?n=${i + 1}&existing=2`, {
        method: 'POST',
        body: new Uint8Array(body),
        headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-hub-signature-256': githubSignature(SECRET, body) },
      });
      expect(res.status).toBe(200);
    }
    const got = await app.waitFor(2);
    expect(got.map((d) => d.body.toString())).toEqual(bodies.map((b) => b.toString()));
    // The message's parameters replace the target's of the same name.
    expect(got.map((d) => d.url)).toEqual(['/webhook?n=1&existing=2', '/webhook?n=2&existing=2']);
    expect(got[0].headers).toMatchObject({ 'content-type': 'application/json', 'x-github-event': 'push' });
    expect(got[0].headers).not.toHaveProperty('x-hookbot-query');
    await sub.waitForLine(/"n":2/);
    expect(sub.stdout()).toBe(bodies.map((b) => b.toString()).join('') + '\n');
  });

  it('exits 2 with a clear line when the channel is not one this server minted', async () => {
    const server = await serve();
    const fwd = cli(['forward', `${server.url}/${'a'.repeat(40)}`, '--to', 'http://127.0.0.1:9/x', ...FAST]);
    expect((await fwd.exit).code).toBe(2);
    expect(fwd.stderr()).toMatch(/refused: 404 Not Found: no such channel/);
  });
});
