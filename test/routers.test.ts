/**
 * The github and gitlab routers end to end: webhooks posted to the real
 * server's unsafe endpoint, received by real WebSocket subscribers on the safe
 * per-repository topics; and `serve` refusing to start without credentials.
 */
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { Redis } from 'ioredis';
import { RedisSeenStore } from '../src/server/routers/dedupe.js';
import { startRedis, type RedisServer } from './redis-server.js';
import { bearer, Inbox, runCli, signature, startServeProcess, startTestServer, subscribe, wsConnect } from './helpers.js';

const SECRET = 'org webhook secret';
const OLD_SECRET = 'last year secret';
const GITLAB_TOKEN = 'gitlab hook token';

interface Example {
  name: string;
  examples: Record<string, unknown>[];
}
const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as Example[];
const branchPush = examples.find((e) => e.name === 'push')!.examples.find((p) => p.ref === 'refs/heads/master')!;
const tagPush = examples.find((e) => e.name === 'push')!.examples.find((p) => p.ref === 'refs/tags/simple-tag' && p.created)!;
const REPO = 'Codertocat/Hello-World';

let n = 0;

/** POSTs a webhook as GitHub does: no hookbot token, signed JSON body. */
async function githubHook(
  server: { url: string },
  payload: unknown,
  o: { event?: string; delivery?: string; secret?: string; sha1Only?: boolean } = {},
): Promise<Response> {
  const body = Buffer.from(JSON.stringify(payload, null, 2));
  const secret = o.secret ?? SECRET;
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': 'GitHub-Hookshot/044aadd',
    'x-github-event': o.event ?? 'push',
    'x-github-delivery': o.delivery ?? `delivery-${++n}`,
    'x-hub-signature': signature('sha1', secret, body),
  };
  if (!o.sha1Only) headers['x-hub-signature-256'] = signature('sha256', secret, body);
  const res = await fetch(`${server.url}/unsafe/pub/github.com/org/Codertocat?extra-metadata=github`, { method: 'POST', headers, body });
  expect(res.status).toBe(200);
  return res;
}

function withSha(sha: string): Record<string, unknown> {
  return { ...branchPush, after: sha };
}
const sha = (c: string) => c.repeat(40);

let server: HookbotServer;
beforeAll(async () => {
  server = await startTestServer({
    router: ['github', 'gitlab'],
    githubSecret: [`${SECRET},${OLD_SECRET}`],
    gitlabToken: [GITLAB_TOKEN],
  });
});
afterAll(async () => {
  await server?.close();
});

describe('github router end to end', () => {
  it('turns a signed org-hook push into the original summary on the repository branch topic', async () => {
    const inbox = new Inbox(await subscribe(server, `/sub/github.com/repo/${REPO}/branch/master`));
    await githubHook(server, withSha(sha('1')));
    const [m] = await inbox.waitFor(1);
    expect(m.binary).toBe(true);
    expect(m.data.toString()).toBe(`{"Branch":"master","Repo":"${REPO}","SHA":"${sha('1')}","Type":"push","Who":"Codertocat"}`);
  });

  it('publishes every verified event as a re-verifiable envelope on the event topic', async () => {
    const ws = await subscribe(server, `/sub/github.com/repo/${REPO}/event/push`, { protocol: 'hookbot.v1' });
    const inbox = new Inbox(ws);
    await githubHook(server, withSha(sha('2')), { delivery: 'ev-1' });
    // hookbot.v1 opens with {"type":"live"}; the message follows.
    const frames = await inbox.waitFor(2);
    const m = JSON.parse(frames[1].data.toString());
    expect(JSON.parse(frames[0].data.toString())).toEqual({ type: 'live' });
    expect(m.type).toBe('message');
    expect(m.topic).toBe(`github.com/repo/${REPO}/event/push`);
    expect(m.headers['x-github-delivery']).toBe('ev-1');
    const env = JSON.parse(m.body);
    expect(Object.keys(env)).toEqual(['Delivery', 'Event', 'Payload', 'Signature', 'Signature256']);
    const payload = Buffer.from(env.Payload, 'base64');
    expect(env.Signature256).toBe(signature('sha256', SECRET, payload));
    expect(m.headers['x-hub-signature-256']).toBe(signature('sha256', SECRET, payload));
    expect(JSON.parse(payload.toString()).after).toBe(sha('2'));
  });

  it('routes tag pushes and keeps slashes in branch names; a recursive subscriber sees the repository\'s topics in order', async () => {
    const inbox = new Inbox(await subscribe(server, `/sub/github.com/repo/${REPO}/`));
    await githubHook(server, { ...tagPush, after: sha('3') });
    await githubHook(server, { ...branchPush, ref: 'refs/heads/feature/x', after: sha('4') });
    const frames = await inbox.waitFor(4);
    const topics = frames.map((f) => f.data.subarray(0, f.data.indexOf(0)).toString());
    expect(topics).toEqual([
      `github.com/repo/${REPO}/tag/simple-tag`,
      `github.com/repo/${REPO}/event/push`,
      `github.com/repo/${REPO}/branch/feature/x`,
      `github.com/repo/${REPO}/event/push`,
    ]);
    const tag = JSON.parse(frames[0].data.subarray(frames[0].data.indexOf(0) + 1).toString());
    expect(tag).toEqual({ Repo: REPO, SHA: sha('3'), Tag: 'simple-tag', Type: 'push', Who: 'Codertocat' });
  });

  it('re-publishes nothing for a forged signature (the next good delivery arrives first)', async () => {
    const inbox = new Inbox(await subscribe(server, `/sub/github.com/repo/${REPO}/branch/master`));
    await githubHook(server, withSha(sha('f')), { secret: 'not the secret' });
    await githubHook(server, withSha(sha('f')), { secret: 'not the secret', sha1Only: true });
    // Unsigned, as anyone on the internet can post it.
    await fetch(`${server.url}/unsafe/pub/github.com/org/Codertocat?extra-metadata=github`, {
      method: 'POST',
      headers: { 'x-github-event': 'push', 'x-github-delivery': 'unsigned' },
      body: JSON.stringify(withSha(sha('f'))),
    });
    const metric = async (result: string) => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const m = new RegExp(`^hookbot_router_verifications_total\\{router="github",result="${result}"\\} (\\d+)$`, 'm').exec(text);
      return m ? Number(m[1]) : 0;
    };
    const [okBefore, failedBefore] = [await metric('ok'), await metric('failed')];
    await githubHook(server, withSha(sha('5')));
    const [m] = await inbox.waitFor(1);
    expect(JSON.parse(m.data.toString()).SHA).toBe(sha('5'));
    // The three forgeries and the good delivery are counted for /metrics.
    expect(failedBefore).toBeGreaterThanOrEqual(3);
    expect(await metric('ok')).toBe(okBefore + 1);
  });

  it('accepts the previous secret during a rotation, and sha1-only signatures', async () => {
    const inbox = new Inbox(await subscribe(server, `/sub/github.com/repo/${REPO}/branch/master`));
    await githubHook(server, withSha(sha('6')), { secret: OLD_SECRET });
    await githubHook(server, withSha(sha('7')), { sha1Only: true });
    const frames = await inbox.waitFor(2);
    expect(frames.map((f) => JSON.parse(f.data.toString()).SHA)).toEqual([sha('6'), sha('7')]);
  });

  it('re-publishes a redelivered X-GitHub-Delivery once', async () => {
    const inbox = new Inbox(await subscribe(server, `/sub/github.com/repo/${REPO}/branch/master`));
    await githubHook(server, withSha(sha('8')), { delivery: 'redelivered' });
    await githubHook(server, withSha(sha('9')), { delivery: 'redelivered' });
    await githubHook(server, withSha(sha('a')), { delivery: 'fresh' });
    const frames = await inbox.waitFor(2);
    expect(frames.map((f) => JSON.parse(f.data.toString()).SHA)).toEqual([sha('8'), sha('a')]);
  });

  it('leaves the unsafe feed itself as the original: the envelope on /unsafe/github.com/...', async () => {
    const ws = await wsConnect(`${server.url.replace(/^http/, 'ws')}/unsafe/sub/github.com/org/Codertocat`, {
      headers: { ...bearer('/unsafe/sub/github.com/org/Codertocat'), 'x-hookbot-unsafe-is-ok': 'I understand the security implications' },
    });
    const inbox = new Inbox(ws);
    await githubHook(server, withSha(sha('b')), { delivery: 'feed-1' });
    const env = JSON.parse((await inbox.waitFor(1))[0].data.toString());
    expect(env.Delivery).toBe('feed-1');
    expect(env.Event).toBe('push');
  });
});

const gitlabPush = {
  object_kind: 'push',
  event_name: 'push',
  before: '95790bf891e76fee5e1747ab589903a6a1f80f22',
  after: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
  ref: 'refs/heads/main',
  user_name: 'John Smith',
  user_username: 'jsmith',
  project: { id: 15, name: 'Diaspora', path_with_namespace: 'mike/diaspora' },
  commits: [],
};

async function gitlabHook(payload: unknown, o: { token?: string; event?: string; key?: string } = {}): Promise<void> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'x-gitlab-event': o.event ?? 'Push Hook',
    'x-gitlab-event-uuid': `uuid-${++n}`,
    'idempotency-key': o.key ?? `idem-${n}`,
  };
  if (o.token !== '') headers['x-gitlab-token'] = o.token ?? GITLAB_TOKEN;
  const res = await fetch(`${server.url}/unsafe/pub/gitlab.com/group/mike?extra-metadata=gitlab`, {
    method: 'POST',
    headers,
    body: JSON.stringify(payload),
  });
  expect(res.status).toBe(200);
}

describe('gitlab router end to end', () => {
  it('routes a Push Hook with the right token only, never passing the token on', async () => {
    const branch = new Inbox(await subscribe(server, '/sub/gitlab.com/repo/mike/diaspora/branch/main'));
    const all = new Inbox(await subscribe(server, '/sub/gitlab.com/repo/mike/diaspora/', { protocol: 'hookbot.v1' }));
    await gitlabHook({ ...gitlabPush, after: sha('1') }, { token: 'wrong' });
    await gitlabHook({ ...gitlabPush, after: sha('2') }, { token: '' });
    await gitlabHook({ ...gitlabPush, after: sha('3') });
    const [m] = await branch.waitFor(1);
    expect(m.data.toString()).toBe(`{"Branch":"main","Repo":"mike/diaspora","SHA":"${sha('3')}","Type":"push","Who":"jsmith"}`);
    const frames = (await all.waitFor(3)).map((f) => JSON.parse(f.data.toString())).filter((f) => f.type === 'message');
    expect(frames.map((f) => f.topic)).toEqual(['gitlab.com/repo/mike/diaspora/branch/main', 'gitlab.com/repo/mike/diaspora/event/push']);
    expect(JSON.stringify(frames)).not.toContain(GITLAB_TOKEN);
    const env = JSON.parse(frames[1].body);
    expect(env.Token).toBe('');
    expect(JSON.parse(Buffer.from(env.Payload, 'base64').toString()).after).toBe(sha('3'));
  });

  it('routes Tag Push Hooks to the tag topic and dedupes by Idempotency-Key', async () => {
    const tags = new Inbox(await subscribe(server, '/sub/gitlab.com/repo/mike/diaspora/tag/'));
    const tagPayload = { ...gitlabPush, object_kind: 'tag_push', ref: 'refs/tags/v1.0.0', after: sha('4') };
    await gitlabHook(tagPayload, { event: 'Tag Push Hook', key: 'same' });
    await gitlabHook({ ...tagPayload, after: sha('5') }, { event: 'Tag Push Hook', key: 'same' });
    await gitlabHook({ ...tagPayload, ref: 'refs/tags/v1.0.1', after: sha('6') }, { event: 'Tag Push Hook' });
    const frames = await tags.waitFor(2);
    expect(frames.map((f) => f.data.toString().split('\0')[0])).toEqual([
      'gitlab.com/repo/mike/diaspora/tag/v1.0.0',
      'gitlab.com/repo/mike/diaspora/tag/v1.0.1',
    ]);
    expect(JSON.parse(frames[0].data.toString().split('\0')[1]).Type).toBe('tag_push');
  });

  it('?extra-metadata=gitlab delivers the documented envelope', async () => {
    const inbox = new Inbox(await subscribe(server, '/sub/gl/x'));
    const res = await fetch(`${server.url}/pub/gl/x?extra-metadata=gitlab`, {
      method: 'POST',
      headers: { ...bearer('/pub/gl/x'), 'x-gitlab-token': 't<k>', 'x-gitlab-event': 'Push Hook', 'x-gitlab-event-uuid': 'u-1', 'idempotency-key': 'k-1' },
      body: '{}',
    });
    expect(res.status).toBe(200);
    expect((await inbox.waitFor(1))[0].data.toString()).toBe('{"Delivery":"k-1","Event":"Push Hook","Payload":"e30=","Token":"t\\u003ck\\u003e"}');
  });
});

describe('serve --router', () => {
  it('refuses to start the github router without a secret', async () => {
    const proc = runCli(['serve', '--bind', '127.0.0.1:0', '--router', 'github'], { HOOKBOT_KEY: 'k' });
    expect((await proc.exit).code).toBe(1);
    expect(proc.stderr()).toMatch(/--router github needs the GitHub webhook secret: set HOOKBOT_GITHUB_SECRET or pass --github-secret/);
  });

  it('refuses to start the gitlab router with an empty token, and unknown routers', async () => {
    const gitlab = runCli(['serve', '--bind', '127.0.0.1:0', '--router', 'gitlab'], { HOOKBOT_KEY: 'k', HOOKBOT_GITLAB_TOKEN: '' });
    const bogus = runCli(['serve', '--bind', '127.0.0.1:0', '--router', 'bitbucket'], { HOOKBOT_KEY: 'k' });
    expect((await gitlab.exit).code).toBe(1);
    expect(gitlab.stderr()).toMatch(/--router gitlab needs the GitLab webhook secret token/);
    expect((await bogus.exit).code).toBe(1);
    expect(bogus.stderr()).toMatch(/--router "bitbucket" is not a router; available: github, gitlab/);
  });

  it('runs the github router from the command line with the secret from the environment', async () => {
    const proc = await startServeProcess(['--router', 'github'], { HOOKBOT_GITHUB_SECRET: SECRET });
    try {
      await proc.waitForLine(/router github subscribed to \/unsafe\/github\.com\//);
      expect(proc.stdout() + proc.stderr()).not.toContain(SECRET);
      const inbox = new Inbox(
        await wsConnect(`ws://127.0.0.1:${proc.port}/sub/github.com/repo/${REPO}/branch/master`, { headers: bearer(`/sub/github.com/repo/${REPO}/branch/master`) }),
      );
      await githubHook({ url: proc.url }, withSha(sha('c')), { secret: 'forged' });
      await githubHook({ url: proc.url }, withSha(sha('d')));
      const [m] = await inbox.waitFor(1);
      expect(JSON.parse(m.data.toString()).SHA).toBe(sha('d'));
      // The forged delivery was logged with its reason, and without any signature.
      const line = await proc.waitForLine(/github delivery dropped/);
      expect(JSON.parse(line)).toMatchObject({ router: 'github', feed: '/unsafe/github.com/org/Codertocat', reason: 'sha256 signature does not match any secret' });
      // Verified first: the forged payload was never parsed, so no repository is claimed for it.
      expect(JSON.parse(line)).not.toHaveProperty('repo');
      expect(line).not.toMatch(/sha(1|256)=/);
    } finally {
      proc.child.kill('SIGTERM');
      await proc.exit;
    }
  });
});

describe('routers in a Redis cluster', () => {
  let redis: RedisServer;
  let nodes: HookbotServer[] = [];
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await Promise.all(nodes.map((s) => s.close()));
    await redis?.stop();
  });

  it('RedisSeenStore claims a key once per window, and release frees it', async () => {
    const client = new Redis(redis.url);
    try {
      const store = new RedisSeenStore(client, 60_000, 'test-seen:');
      expect(await store.claim('a')).toBe(false);
      expect(await store.claim('a')).toBe(true);
      expect(Number(await client.pttl('test-seen:a'))).toBeGreaterThan(50_000);
      await store.release('a');
      expect(await store.claim('a')).toBe(false);
    } finally {
      client.disconnect();
    }
  });

  it('re-publishes each delivery once across nodes, though every node\'s router sees it', async () => {
    const options = { redis: redis.url, router: ['github'], githubSecret: [SECRET] };
    nodes = [await startTestServer(options), await startTestServer(options)];
    const [a, b] = nodes;
    const inbox = new Inbox(await subscribe(b, `/sub/github.com/repo/${REPO}/branch/master`));
    await githubHook(a, withSha(sha('1')), { delivery: 'cluster-1' });
    await githubHook(b, withSha(sha('2')), { delivery: 'cluster-2' });
    await githubHook(a, withSha(sha('1')), { delivery: 'cluster-1' });
    await githubHook(a, withSha(sha('3')), { delivery: 'cluster-3' });
    const frames = await inbox.waitFor(3);
    expect(frames.map((f) => JSON.parse(f.data.toString()).SHA)).toEqual([sha('1'), sha('2'), sha('3')]);
  });
});
