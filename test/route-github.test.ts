/**
 * `hookbot route-github`, the original's out-of-process router, end to end:
 * a server without --router, route-github as a child process subscribed to
 * its unsafe github.com feed, webhooks posted as GitHub posts them, and real
 * subscribers on the per-repository topics. Run `npm run build` first.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveRouteGithub } from '../src/cli/route-github.js';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, githubSignature, Inbox, KEY, runCli, startServeProcess, startTestServer, subscribe, token, wsConnect, type Proc } from './helpers.js';

const SECRET = 'org webhook secret';
const FEED = '/unsafe/sub/github.com/';

let seq = 0;
function push(sha: string, repo = 'acme/api'): Buffer {
  return Buffer.from(
    JSON.stringify(
      { ref: 'refs/heads/main', before: '0'.repeat(40), after: sha, repository: { full_name: repo, name: repo.split('/')[1] }, pusher: { name: 'octocat', email: 'o@example.com' } },
      null,
      2,
    ),
  );
}

/** POSTs a delivery as GitHub does: no hookbot token, signed with `secret`. */
async function deliver(base: string, body: Buffer, o: { secret?: string; delivery?: string } = {}): Promise<void> {
  const res = await fetch(`${base}/unsafe/pub/github.com/org/acme?extra-metadata=github`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'user-agent': 'GitHub-Hookshot/044aadd',
      'x-github-event': 'push',
      'x-github-delivery': o.delivery ?? `delivery-${++seq}`,
      'x-hub-signature-256': githubSignature(o.secret ?? SECRET, body),
    },
    // The same bytes (the JSON is UTF-8); fetch's types take no Buffer.
    body: body.toString('utf8'),
  });
  expect(res.status).toBe(200);
}

const summary = (sha: string) => `{"Branch":"main","Repo":"acme/api","SHA":"${sha}","Type":"push","Who":"octocat"}`;
const sha = (n: number) => n.toString(16).padStart(40, '0');

const procs: Proc[] = [];
function routeGithub(args: string[], env: Record<string, string> = {}): Proc {
  const proc = runCli(['route-github', ...args], { HOOKBOT_KEY: KEY, HOOKBOT_GITHUB_SECRET: SECRET, ...env });
  procs.push(proc);
  return proc;
}
afterEach(async () => {
  for (const p of procs.splice(0)) {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await p.exit;
  }
});

let server: HookbotServer;
let feedUrl: string;
beforeAll(async () => {
  server = await startTestServer();
  feedUrl = `${server.url.replace(/^http/, 'ws')}${FEED}`.replace('//', `//${token(FEED)}@`);
});
afterAll(async () => {
  await server?.close();
});

describe('hookbot route-github', () => {
  it('republishes a signed push as the summary and the event envelope, and drops a forgery', async () => {
    const branch = new Inbox(await subscribe(server, '/sub/github.com/repo/acme/api/branch/main'));
    const events = new Inbox(await subscribe(server, '/sub/github.com/repo/acme/api/event/push', { protocol: 'hookbot.v1' }));
    const router = routeGithub(['-u', feedUrl]);
    await router.waitForLine(/"msg":"live"/);

    await deliver(server.url, push(sha(0xf)), { secret: 'not the secret', delivery: 'forged-1' });
    const body = push(sha(1));
    await deliver(server.url, body, { delivery: 'real-1' });

    const [m] = await branch.waitFor(1);
    expect(m.data.toString()).toBe(summary(sha(1)));
    const frames = (await events.waitFor(2)).map((f) => JSON.parse(f.data.toString()));
    const event = frames.find((f) => f.type === 'message');
    expect(event.topic).toBe('github.com/repo/acme/api/event/push');
    // The feed message's own headers, so a receiver can verify again.
    expect(event.headers).toMatchObject({ 'x-github-delivery': 'real-1', 'x-github-event': 'push', 'user-agent': 'GitHub-Hookshot/044aadd' });
    const envelope = JSON.parse(event.body);
    expect(Buffer.from(envelope.Payload, 'base64').equals(body)).toBe(true);
    expect(envelope.Signature256).toBe(event.headers['x-hub-signature-256']);

    const dropped = JSON.parse(await router.waitForLine(/github delivery dropped/));
    expect(dropped).toMatchObject({ router: 'github', delivery: 'forged-1', reason: 'sha256 signature does not match any secret' });
    const routed = JSON.parse(await router.waitForLine(/github delivery routed/));
    expect(routed).toMatchObject({ delivery: 'real-1', repo: 'acme/api', to: ['github.com/repo/acme/api/branch/main', 'github.com/repo/acme/api/event/push'] });
    const log = router.stdout() + router.stderr();
    for (const secret of [SECRET, KEY, token(FEED), token('/pub/github.com/repo/acme/api/branch/main'), 'Bearer']) expect(log).not.toContain(secret);
  });

  it('killed and restarted mid-stream, loses nothing the server retained and duplicates nothing', async () => {
    const stateFile = join(mkdtempSync(join(tmpdir(), 'hookbot-route-github-')), 'state');
    const branch = new Inbox(await subscribe(server, '/sub/github.com/repo/acme/api/branch/main'));
    const router = routeGithub(['-u', feedUrl, '--state-file', stateFile]);
    await router.waitForLine(/"msg":"live"/);

    const bodies = Array.from({ length: 24 }, (_, i) => push(sha(0x100 + i)));
    let sent = 0;
    const sending = (async () => {
      for (const body of bodies) {
        await deliver(server.url, body, { delivery: `stream-${sent}` });
        sent++;
      }
    })();
    // Killed while deliveries are still arriving and being routed.
    await branch.until(() => branch.messages.length >= 4, 10_000, '4 summaries');
    router.child.kill('SIGKILL');
    await router.exit;
    const routedBeforeKill = branch.messages.length;
    // The restarted router, killed by afterEach like the first.
    routeGithub(['-u', feedUrl, '--state-file', stateFile]);
    await sending;
    expect(sent).toBe(bodies.length);
    expect(routedBeforeKill).toBeLessThan(bodies.length);

    // GitHub's "Redeliver" of an early delivery: the restarted router has forgotten its id, the server's idempotency key has not.
    await deliver(server.url, bodies[0], { delivery: 'stream-0' });
    // A last delivery marks the end: anything duplicated would arrive before it.
    await deliver(server.url, push(sha(0xeee)), { delivery: 'marker' });
    await branch.waitFor(bodies.length + 1, 20_000);
    expect(branch.texts()).toEqual([...bodies.map((_, i) => summary(sha(0x100 + i))), summary(sha(0xeee))]);
  });

  it('a republish refused for its token (wrong --key) stops route-github with exit 1, and the delivery is routed after a restart with the right key', async () => {
    const stateFile = join(mkdtempSync(join(tmpdir(), 'hookbot-route-github-')), 'state');
    const branch = new Inbox(await subscribe(server, '/sub/github.com/repo/acme/api/branch/main'));
    // The feed URL carries its own token, so only the republishes use --key.
    const first = routeGithub(['-u', feedUrl, '--state-file', stateFile]);
    await first.waitForLine(/"msg":"live"/);
    await deliver(server.url, push(sha(0xa1)), { delivery: 'key-1' });
    await branch.waitFor(1, 10_000);
    // Marked routed once all its republishes (the summary, then the envelope) are accepted.
    await eventually(() => existsSync(stateFile), 10_000, 'the state file');
    first.child.kill('SIGTERM');
    expect((await first.exit).code).toBe(0);
    const routedId = readFileSync(stateFile, 'utf8').trim();

    const wrong = routeGithub(['-u', feedUrl, '--state-file', stateFile], { HOOKBOT_KEY: 'not-the-server-key' });
    await wrong.waitForLine(/"msg":"live"/);
    await deliver(server.url, push(sha(0xa2)), { delivery: 'key-2' });
    expect((await wrong.exit).code).toBe(1);
    expect(wrong.stdout() + wrong.stderr()).toMatch(/HTTP 401.*--key/);
    // Not marked routed: the state file still names the delivery before it.
    expect(readFileSync(stateFile, 'utf8').trim()).toBe(routedId);
    expect(branch.messages).toHaveLength(1);

    routeGithub(['-u', feedUrl, '--state-file', stateFile]);
    await branch.waitFor(2, 10_000);
    expect(branch.texts()).toEqual([summary(sha(0xa1)), summary(sha(0xa2))]);
  });

  it('sends the Origin, molly-guard and --header headers, and a token made from --key when the URL has none', async () => {
    const seen: IncomingHttpHeaders[] = [];
    const fake = createServer((_req, res) => res.end());
    fake.on('upgrade', (req, socket) => {
      seen.push(req.headers);
      // Refused, as a wrong token would be: route-github gives up.
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    });
    fake.listen(0, '127.0.0.1');
    await once(fake, 'listening');
    const port = (fake.address() as { port: number }).port;
    try {
      const router = routeGithub(['-u', `ws://127.0.0.1:${port}${FEED}`, '-H', 'X-Proxy-Auth: let me in', '--header', 'X-Second:two'], {});
      expect((await router.exit).code).toBe(1);
      expect(router.stdout() + router.stderr()).toMatch(/403/);
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatchObject({
        origin: `//127.0.0.1:${port}`,
        'x-hookbot-unsafe-is-ok': 'I understand the security implications',
        'x-proxy-auth': 'let me in',
        'x-second': 'two',
        authorization: `Bearer ${token(FEED)}`,
      });
      const custom = routeGithub(['-u', `ws://127.0.0.1:${port}${FEED}`], { HOOKBOT_ORIGIN: 'https://example.com', HOOKBOT_HEADER: 'X-A: 1, 2, X-B: 3' });
      expect((await custom.exit).code).toBe(1);
      expect(seen[1]).toMatchObject({ origin: 'https://example.com', 'x-a': '1, 2', 'x-b': '3' });
    } finally {
      fake.close();
    }
  });

  it('republishes over https for a wss:// feed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-route-github-tls-'));
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'crt.pem')],
      { stdio: 'ignore' },
    );
    const tls = await startServeProcess(['--sslkey', join(dir, 'key.pem'), '--sslcrt', join(dir, 'crt.pem')]);
    procs.push(tls);
    const ca = readFileSync(join(dir, 'crt.pem'));
    const branch = new Inbox(await wsConnect(`wss://localhost:${tls.port}/sub/github.com/repo/acme/api/branch/main`, { headers: bearer('/sub/github.com/repo/acme/api/branch/main'), ca }));
    const router = routeGithub(['-u', `wss://${token(FEED)}@localhost:${tls.port}${FEED}`], { NODE_EXTRA_CA_CERTS: join(dir, 'crt.pem') });
    await router.waitForLine(/"msg":"live"/);
    const body = push(sha(0x5));
    const status = await new Promise<number>((resolve, reject) => {
      const headers = { 'content-type': 'application/json', 'x-github-event': 'push', 'x-github-delivery': 'tls-1', 'x-hub-signature-256': githubSignature(SECRET, body) };
      httpsRequest(`https://localhost:${tls.port}/unsafe/pub/github.com/org/acme?extra-metadata=github`, { method: 'POST', ca, headers }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
        .on('error', reject)
        .end(body);
    });
    expect(status).toBe(200);
    expect((await branch.waitFor(1, 10_000))[0].data.toString()).toBe(summary(sha(0x5)));
  });

  it('--help lists every option with its environment variable and default; missing credentials are named', async () => {
    const help = runCli(['route-github', '--help']);
    expect((await help.exit).code).toBe(0);
    const text = help.stdout();
    for (const option of ['-u, --monitor-url <url>', '--origin <origin>', '-H, --header <header>', '--key <key>', '--github-secret <secrets>', '--state-file <file>', '--dedupe-window <duration>', '--log-level <level>']) {
      expect(text).toContain(option);
    }
    for (const env of ['HOOKBOT_MONITOR_URL', 'HOOKBOT_ORIGIN', 'HOOKBOT_HEADER', 'HOOKBOT_KEY', 'HOOKBOT_GITHUB_SECRET', 'HOOKBOT_LOG_LEVEL']) expect(text.replace(/\s+/g, ' ')).toContain(env);
    expect(text.replace(/\s+/g, ' ')).toContain('default: samehost');

    const noKey = runCli(['route-github', '-u', feedUrl], { HOOKBOT_GITHUB_SECRET: SECRET });
    expect((await noKey.exit).code).toBe(1);
    expect(noKey.stderr()).toMatch(/HOOKBOT_KEY not set/);
    const noSecret = runCli(['route-github', '-u', feedUrl], { HOOKBOT_KEY: KEY });
    expect((await noSecret.exit).code).toBe(1);
    expect(noSecret.stderr()).toMatch(/route-github needs the GitHub webhook secret: set HOOKBOT_GITHUB_SECRET or pass --github-secret/);
    const noUrl = runCli(['route-github'], { HOOKBOT_KEY: KEY, HOOKBOT_GITHUB_SECRET: SECRET });
    expect((await noUrl.exit).code).toBe(1);
    expect(noUrl.stderr()).toMatch(/--monitor-url/);
  });

  it('resolves the republish base from the feed URL: http for ws://, https for wss://', () => {
    const resolve = (url: string) => resolveRouteGithub({ monitorUrl: url, dedupeWindow: '1h' }, { HOOKBOT_KEY: KEY, HOOKBOT_GITHUB_SECRET: SECRET });
    expect(resolve('ws://h.example.com:8080/unsafe/sub/github.com/').publishBase.href).toBe('http://h.example.com:8080/');
    expect(resolve('wss://t@h.example.com/unsafe/sub/github.com/').publishBase.href).toBe('https://h.example.com/');
    expect(resolve('wss://t@h.example.com/unsafe/sub/github.com/').token).toBeUndefined();
    expect(resolve('ws://h/unsafe/sub/github.com/').token).toBe(token(FEED));
    expect(resolve('ws://h/unsafe/sub/github.com/').headers).toEqual({ Origin: '//h' });
    expect(() => resolve('ftp://h/x')).toThrow(/--monitor-url must be ws/);
  });
});
