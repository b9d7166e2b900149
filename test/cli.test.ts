/**
 * The CLI as users run it: real child processes of bin/hookbot.js.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'node:https';
import { WebSocket } from 'ws';
import { describe, expect, it } from 'vitest';
import { Inbox, runCli, startServeProcess, token, KEY } from './helpers.js';

describe('make-tokens', () => {
  it('prints exactly the protocol page examples', async () => {
    const a = runCli(['make-tokens', '--url-base', 'https://hookbot.example.com', '/pub/foo/bar'], { HOOKBOT_KEY: 'foo' });
    expect(await a.exit).toEqual({ code: 0, signal: null });
    expect(a.stdout()).toBe('https://2e1150434ba1d8c33bce7c82ee08b5d9850342c7@hookbot.example.com/pub/foo/bar\n');
    const b = runCli(['make-tokens', '/sub/foo/', '/foo/bar'], { HOOKBOT_KEY: 'foo' });
    await b.exit;
    expect(b.stdout()).toBe(
      'ws://025d52405676646b775882c3b6338bd9db0ae59c@localhost:8080/sub/foo/\nhttp://bc91d311e5ac5208a5142bd1016b8c862a2644a8@localhost:8080/foo/bar\n',
    );
  });

  it('--bare prints just the token; HOOKBOT_URL_BASE and the argument own scheme/host/query are honoured', async () => {
    const bare = runCli(['make-tokens', '--bare', '/pub/foo/bar'], { HOOKBOT_KEY: 'foo' });
    await bare.exit;
    expect(bare.stdout()).toBe('2e1150434ba1d8c33bce7c82ee08b5d9850342c7\n');
    const env = runCli(['make-tokens', '/unsafe/sub/x', '/pub/x?extra-metadata=github#frag'], { HOOKBOT_KEY: 'foo', HOOKBOT_URL_BASE: 'https://relay.example' });
    await env.exit;
    const [l1, l2] = env.stdout().trim().split('\n');
    expect(l1).toMatch(/^wss:\/\/[0-9a-f]{40}@relay\.example\/unsafe\/sub\/x$/);
    expect(l2).toMatch(/^https:\/\/[0-9a-f]{40}@relay\.example\/pub\/x\?extra-metadata=github#frag$/);
    const own = runCli(['make-tokens', 'wss://other.example:9000/sub/y'], { HOOKBOT_KEY: 'foo' });
    await own.exit;
    expect(own.stdout()).toMatch(/^wss:\/\/[0-9a-f]{40}@other\.example:9000\/sub\/y\n$/);
  });

  it('fails with exit 1 and a clear message without a key', async () => {
    const p = runCli(['make-tokens', '/pub/x'], { HOOKBOT_KEY: undefined });
    expect((await p.exit).code).toBe(1);
    expect(p.stderr()).toMatch(/HOOKBOT_KEY not set/);
  });
});

describe('serve', () => {
  it('refuses to start without a key: exit 1, HOOKBOT_KEY not set', async () => {
    const p = runCli(['serve', '--bind', '127.0.0.1:0'], { HOOKBOT_KEY: undefined });
    expect((await p.exit).code).toBe(1);
    expect(p.stderr()).toMatch(/HOOKBOT_KEY not set/);
  });

  it('names the bad option', async () => {
    for (const [args, re] of [
      [['--bind', 'nope'], /--bind must be host:port/],
      [['--max-body', 'lots'], /--max-body must be a size/],
      [['--sslkey', 'x.pem'], /--sslkey and --sslcrt must be given together/],
      [['--history-age', 'forever'], /--history-age must be a duration/],
    ] as const) {
      const p = runCli(['serve', ...args], { HOOKBOT_KEY: KEY });
      expect((await p.exit).code, args.join(' ')).toBe(1);
      expect(p.stderr()).toMatch(re);
    }
  });

  it('logs Listening on, a stats line, never a token; SIGTERM closes subscribers with 1001 and exits 0 within 5 s', async () => {
    const srv = await startServeProcess(['--stats-interval', '200ms', '--log-level', 'debug']);
    const subToken = token('/sub/cli');
    const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/sub/cli`, { headers: { authorization: `Bearer ${subToken}` } });
    const inbox = new Inbox(ws);
    await new Promise((r) => ws.once('open', r));
    const pubToken = token('/pub/cli');
    const res = await fetch(`${srv.url}/pub/cli`, { method: 'POST', body: 'hi', headers: { authorization: `Bearer ${pubToken}` } });
    expect(res.status).toBe(200);
    await inbox.waitFor(1);
    await fetch(`${srv.url}/pub/cli`, { method: 'POST', body: 'x', headers: { authorization: `Bearer ${'0'.repeat(40)}` } });
    await srv.waitForLine(/"msg":"stats"/);

    const started = Date.now();
    srv.child.kill('SIGTERM');
    const closed = await inbox.waitClose();
    expect(closed.code).toBe(1001);
    expect(await srv.exit).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(5000);

    const log = srv.stdout() + srv.stderr();
    expect(log).toMatch(/"msg":"Listening on 127\.0\.0\.1:\d+"/);
    for (const secret of [subToken, pubToken, KEY, 'Bearer']) expect(log).not.toContain(secret);
    for (const line of srv.stdout().trim().split('\n')) expect(() => JSON.parse(line)).not.toThrow();
  });

  it('serves HTTPS and WSS only with --sslkey and --sslcrt', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'crt.pem')], { stdio: 'ignore' });
    const srv = await startServeProcess(['--sslkey', join(dir, 'key.pem'), '--sslcrt', join(dir, 'crt.pem')]);
    try {
      const agent = new Agent({ rejectUnauthorized: false });
      const ws = new WebSocket(`wss://127.0.0.1:${srv.port}/sub/tls`, { headers: { authorization: `Bearer ${token('/sub/tls')}` }, agent });
      const inbox = new Inbox(ws);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      const { request } = await import('node:https');
      const status = await new Promise<number>((resolve, reject) => {
        const req = request(`https://127.0.0.1:${srv.port}/pub/tls`, { method: 'POST', agent, headers: { authorization: `Bearer ${token('/pub/tls')}` } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on('error', reject);
        req.end('secure');
      });
      expect(status).toBe(200);
      expect((await inbox.waitFor(1))[0].data.toString()).toBe('secure');
      // Plain HTTP on the TLS port is not served.
      const plain = await fetch(`http://127.0.0.1:${srv.port}/status`).then((r) => r.status, () => 'refused');
      expect(plain).not.toBe(200);
      ws.close();
    } finally {
      srv.child.kill('SIGTERM');
      await srv.exit;
    }
  });
});
