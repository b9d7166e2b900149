/**
 * The original hookbot's (v0.13.0) command lines, as its README and --help
 * document them, run against the built CLI (child processes of bin/hookbot.js):
 * global options before the command, short flags, aliases, -v, help/h, and
 * Go-style single-dash long flags.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, githubSignature, Inbox, KEY, ROOT, runCli, token, wsConnect, type Proc } from './helpers.js';

const VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;
/** The and the original README's make-tokens examples, key `foo`. */
const FOO_SUB = '025d52405676646b775882c3b6338bd9db0ae59c';
const FOO_PUB_X = 'c1a2477f2206ecf5fb8404ea97f3c554d0aba674';
const FOO_PUB_FOO_BAR = '2e1150434ba1d8c33bce7c82ee08b5d9850342c7';

async function run(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = runCli(args, env);
  const { code } = await p.exit;
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

const servers: Proc[] = [];
afterEach(async () => {
  for (const p of servers.splice(0)) {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
    await p.exit;
  }
});

/** Starts `hookbot` with the arguments `args(port)` builds; resolves once it listens. */
async function serve(args: (port: number) => string[], env: Record<string, string | undefined> = {}): Promise<{ proc: Proc; port: number }> {
  const port = await freePort();
  const proc = runCli(args(port), { HOOKBOT_KEY: undefined, ...env });
  servers.push(proc);
  await proc.waitForLine(/Listening on/);
  return { proc, port };
}

/** A publish and a delivery through the running server, with tokens made from `key`. */
async function roundTrip(port: number, key: string): Promise<void> {
  const ws = await wsConnect(`ws://127.0.0.1:${port}/sub/compat`, { headers: { authorization: `Bearer ${token('/sub/compat', key)}` } });
  const inbox = new Inbox(ws);
  const res = await fetch(`http://127.0.0.1:${port}/pub/compat`, { method: 'POST', body: 'hi', headers: { authorization: `Bearer ${token('/pub/compat', key)}` } });
  expect(res.status).toBe(200);
  expect((await inbox.waitFor(1))[0].data.toString()).toBe('hi');
  ws.close();
}

describe('make-tokens, as the original', () => {
  it('prints the issue example byte for byte: alias t, -U', async () => {
    const r = await run(['t', '-U', 'https://h.example.com', '/sub/foo/', '/pub/x'], { HOOKBOT_KEY: 'foo' });
    expect(r).toEqual({ code: 0, stdout: `wss://${FOO_SUB}@h.example.com/sub/foo/\nhttps://${FOO_PUB_X}@h.example.com/pub/x\n`, stderr: '' });
  });

  it('prints the original README examples', async () => {
    expect(await run(['make-tokens', '--url-base', 'https://hookbot.scraperwiki.com', '/pub/foo/bar'], { HOOKBOT_KEY: 'foo' })).toEqual({
      code: 0,
      stdout: `https://${FOO_PUB_FOO_BAR}@hookbot.scraperwiki.com/pub/foo/bar\n`,
      stderr: '',
    });
    expect((await run(['make-tokens', '/sub/foo/'], { HOOKBOT_KEY: 'foo' })).stdout).toBe(`ws://${FOO_SUB}@localhost:8080/sub/foo/\n`);
  });

  it('takes --key before the command (the original global option), after it, and HOOKBOT_URL_BASE', async () => {
    const want = `https://${FOO_PUB_X}@h.example.com/pub/x\n`;
    for (const args of [
      ['--key', 'foo', 'make-tokens', '-U', 'https://h.example.com', '/pub/x'],
      ['--key=foo', 't', '--url-base=https://h.example.com', '/pub/x'],
      ['make-tokens', '--key', 'foo', '--url-base', 'https://h.example.com', '/pub/x'],
      ['t', '/pub/x', '-U', 'https://h.example.com', '--key', 'foo'],
    ]) {
      expect(await run(args), args.join(' ')).toEqual({ code: 0, stdout: want, stderr: '' });
    }
    expect((await run(['--key', 'foo', 't', '/pub/x'], { HOOKBOT_URL_BASE: 'https://h.example.com' })).stdout).toBe(want);
    // The flag wins over the environment, as in the original.
    expect((await run(['--key', 'foo', 't', '/pub/x'], { HOOKBOT_KEY: 'other' })).stdout).toBe(`http://${FOO_PUB_X}@localhost:8080/pub/x\n`);
  });

  it('takes Go-style single-dash long flags, as the original flag parser does', async () => {
    expect(await run(['-key', 'foo', 'make-tokens', '-url-base', 'https://h.example.com', '/pub/x'])).toEqual({
      code: 0,
      stdout: `https://${FOO_PUB_X}@h.example.com/pub/x\n`,
      stderr: '',
    });
    expect((await run(['-key=foo', 't', '-bare', '/pub/foo/bar'])).stdout).toBe(`${FOO_PUB_FOO_BAR}\n`);
  });

  it('--bare prints only the tokens', async () => {
    expect(await run(['t', '--bare', '/pub/foo/bar', '/sub/foo/'], { HOOKBOT_KEY: 'foo' })).toEqual({ code: 0, stdout: `${FOO_PUB_FOO_BAR}\n${FOO_SUB}\n`, stderr: '' });
  });

  it('without a key: HOOKBOT_KEY not set on stderr, nothing on stdout, exit 1', async () => {
    for (const args of [['make-tokens', '/pub/x'], ['t', '--bare', '/pub/x'], ['serve', '-b', '127.0.0.1:0']]) {
      const r = await run(args, { HOOKBOT_KEY: undefined });
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^hookbot: HOOKBOT_KEY not set/);
    }
  });

  it('make-tokens without a path is a usage error, exit 1', async () => {
    const r = await run(['make-tokens'], { HOOKBOT_KEY: 'foo' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/missing required argument 'uri'/);
  });
});

describe('--version, --help, help and h', () => {
  it('-v and --version print `hookbot version <this package version>` (the original format)', async () => {
    for (const flag of ['-v', '--version']) expect(await run([flag])).toEqual({ code: 0, stdout: `hookbot version ${VERSION}\n`, stderr: '' });
  });

  it('help, h, --help, -h and no arguments print the program help on stdout, exit 0', async () => {
    const outputs = new Set<string>();
    for (const args of [['help'], ['h'], ['--help'], ['-h'], []]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/^Usage: hookbot \[options\] \[command\]\n/);
      // Commander wraps at 80 columns; compare the words.
      const flat = r.stdout.replace(/\s+/g, ' ');
      for (const needle of ['--key <key>', 'env: HOOKBOT_KEY', '--github-secret', 'env: HOOKBOT_GITHUB_SECRET', '-v, --version', 'serve', 'make-tokens|t', 'help [command]']) {
        expect(flat).toContain(needle);
      }
      outputs.add(r.stdout);
    }
    expect(outputs.size).toBe(1);
  });

  it('help <command>, h <command>, <command> --help print that command help, aliases included', async () => {
    for (const [args, usage] of [
      [['help', 'serve'], 'Usage: hookbot serve [options]'],
      [['h', 'serve'], 'Usage: hookbot serve [options]'],
      [['serve', '-h'], 'Usage: hookbot serve [options]'],
      [['help', 'make-tokens'], 'Usage: hookbot make-tokens|t [options] <uri...>'],
      [['h', 't'], 'Usage: hookbot make-tokens|t [options] <uri...>'],
      [['t', '--help'], 'Usage: hookbot make-tokens|t [options] <uri...>'],
    ] as const) {
      const r = await run([...args]);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout.startsWith(usage + '\n'), args.join(' ')).toBe(true);
    }
    const tokens = (await run(['help', 't'])).stdout;
    expect(tokens).toContain('-U, --url-base <url>');
    expect(tokens).toMatch(/default:\s+http:\/\/localhost:8080, env: HOOKBOT_URL_BASE/);
    // Global options are listed with the commands that read them.
    expect(tokens).toMatch(/Global Options:[\s\S]*--key <key>/);
  });

  it('an unknown command or option is a usage error, exit 1', async () => {
    const cmd = await run(['nosuch']);
    expect(cmd.code).toBe(1);
    expect(cmd.stderr).toMatch(/unknown command 'nosuch'/);
    const opt = await run(['serve', '--nosuch'], { HOOKBOT_KEY: KEY });
    expect(opt.code).toBe(1);
    expect(opt.stderr).toMatch(/unknown option '--nosuch'/);
  });
});

describe('serve, as the original', () => {
  it('global --key before the command, -b; and --key after it, --bind=; and HOOKBOT_KEY, -bind', async () => {
    for (const [args, env] of [
      [(port: number) => ['--key', 'compat-key', 'serve', '-b', `127.0.0.1:${port}`], {}],
      [(port: number) => ['serve', `--bind=127.0.0.1:${port}`, '--key', 'compat-key'], {}],
      [(port: number) => ['serve', '-bind', `127.0.0.1:${port}`], { HOOKBOT_KEY: 'compat-key' }],
    ] as const) {
      const { proc, port } = await serve(args, env);
      const status = await fetch(`http://127.0.0.1:${port}/status`);
      expect(status.status).toBe(200);
      expect(await status.text()).toBe('OK\n');
      await roundTrip(port, 'compat-key');
      proc.child.kill('SIGTERM');
      expect(await proc.exit).toEqual({ code: 0, signal: null });
    }
  });

  it('HOOKBOT_BIND and the other HOOKBOT_* variables configure serve', async () => {
    const port = await freePort();
    const { proc } = await serve(() => ['serve'], { HOOKBOT_KEY: 'compat-key', HOOKBOT_BIND: `127.0.0.1:${port}`, HOOKBOT_MAX_BODY: '4' });
    const res = await fetch(`http://127.0.0.1:${port}/pub/compat`, { method: 'POST', body: '12345', headers: { authorization: `Bearer ${token('/pub/compat', 'compat-key')}` } });
    expect(res.status).toBe(413);
    proc.child.kill('SIGTERM');
    await proc.exit;
  });

  it('a bad HOOKBOT_* value names the option and the variable, exit 1', async () => {
    const r = await run(['serve'], { HOOKBOT_KEY: KEY, HOOKBOT_HISTORY_AGE: 'forever' });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('hookbot: --history-age must be a duration such as 30s, 5m, 1h or 7d, got "forever" (from HOOKBOT_HISTORY_AGE)\n');
  });

  it('serves TLS with -k/-c and with the README form --sslkey=… --sslcrt=…', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-compat-tls-'));
    const key = join(dir, 'key.pem');
    const crt = join(dir, 'crt.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', crt], { stdio: 'ignore' });
    for (const args of [
      (port: number) => ['serve', '-b', `127.0.0.1:${port}`, '-k', key, '-c', crt],
      (port: number) => ['serve', `--bind=127.0.0.1:${port}`, `--sslkey=${key}`, `--sslcrt=${crt}`],
    ]) {
      const { proc, port } = await serve(args, { HOOKBOT_KEY: 'foo' });
      const body = await new Promise<string>((resolve, reject) => {
        const req = request(`https://127.0.0.1:${port}/status`, { rejectUnauthorized: false }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve(`${res.statusCode} ${text}`));
        });
        req.on('error', reject);
        req.end();
      });
      expect(body).toBe('200 OK\n');
      proc.child.kill('SIGTERM');
      await proc.exit;
    }
  });

  it('global --github-secret before the command reaches --router github: signed pushes are routed, forged ones not', async () => {
    const secret = 'compat github secret';
    const { port } = await serve((p) => ['--key', 'compat-key', '--github-secret', secret, 'serve', '--router', 'github', '-b', `127.0.0.1:${p}`]);
    const topic = '/sub/github.com/repo/Codertocat/Hello-World/branch/master';
    const inbox = new Inbox(await wsConnect(`ws://127.0.0.1:${port}${topic}`, { headers: { authorization: `Bearer ${token(topic, 'compat-key')}` } }));
    const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as Array<{ name: string; examples: Array<Record<string, unknown>> }>;
    const push = examples.find((e) => e.name === 'push')!.examples.find((p) => p.ref === 'refs/heads/master')!;
    const hook = (sha: string, signWith: string) => {
      const body = Buffer.from(JSON.stringify({ ...push, after: sha }));
      return fetch(`http://127.0.0.1:${port}/unsafe/pub/github.com/org/Codertocat?extra-metadata=github`, {
        method: 'POST',
        body,
        headers: {
          'content-type': 'application/json',
          'x-github-event': 'push',
          'x-github-delivery': `compat-${sha}`,
          'x-hub-signature-256': githubSignature(signWith, body),
        },
      });
    };
    expect((await hook('f'.repeat(40), 'not the secret')).status).toBe(200);
    expect((await hook('a'.repeat(40), secret)).status).toBe(200);
    const [m] = await inbox.waitFor(1);
    expect(m.data.toString()).toBe(`{"Branch":"master","Repo":"Codertocat/Hello-World","SHA":"${'a'.repeat(40)}","Type":"push","Who":"Codertocat"}`);
    // The forged one was published first; had it been routed it would have arrived first.
    expect(inbox.messages).toHaveLength(1);
  });
});
