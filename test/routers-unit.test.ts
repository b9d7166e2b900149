/**
 * The github and gitlab routers as pure modules: a fake host records what they
 * publish, count and log. GitHub payloads are GitHub's published examples
 * (@octokit/webhooks-examples), signed here.
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { signature } from './helpers.js';
import { Message, type Headers } from '../src/protocol/message.js';
import { RecentIds } from '../src/server/routers/dedupe.js';
import { createGithubRouter, githubEnvelope, GITHUB_FEED } from '../src/server/routers/github.js';
import { createGitlabRouter, gitlabEnvelope, gitlabEventSlug, GITLAB_FEED } from '../src/server/routers/gitlab.js';
import { claimAny, decodeBase64, goJSON, type RouterEvent, type RouterHost } from '../src/server/routers/router.js';
import { matchesAny, safeEqual } from '../src/util/safe-equal.js';

interface Example {
  name: string;
  examples: Record<string, unknown>[];
}
const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as Example[];
function example(event: string, pick: (p: Record<string, unknown>) => boolean): Record<string, unknown> {
  const found = examples.find((e) => e.name === event)?.examples.find(pick);
  if (!found) throw new Error(`no ${event} example`);
  return structuredClone(found);
}
const branchPush = example('push', (p) => p.ref === 'refs/heads/master');
const tagPush = example('push', (p) => p.ref === 'refs/tags/simple-tag' && p.created === true);
const pullRequest = example('pull_request', (p) => p.action === 'opened');
const repoPing = example('ping', (p) => p.repository !== undefined);
const orgPing = example('ping', (p) => p.repository === undefined);

const SECRET = 'It is a secret to everybody';
const OLD_SECRET = 'the previous secret';

// GitHub sends its payload pretty-printed; signing those exact bytes is what matters.
function raw(payload: unknown): Buffer {
  return Buffer.from(JSON.stringify(payload, null, 2));
}

let seq = 0;
interface GhOpts {
  event?: string;
  delivery?: string;
  secret?: string;
  sha256?: string | null;
  sha1?: string | null;
  contentType?: string;
}
/** The kept request headers of a GitHub delivery. */
function githubHeaders(body: Buffer, o: GhOpts = {}): Headers {
  const secret = o.secret ?? SECRET;
  const h: Headers = {
    'content-type': o.contentType ?? 'application/json',
    'user-agent': 'GitHub-Hookshot/abc123',
    'x-github-event': o.event ?? 'push',
    'x-github-delivery': o.delivery ?? `72d3162e-cc78-11e3-81ab-${String(++seq).padStart(12, '0')}`,
  };
  const s256 = o.sha256 === undefined ? signature('sha256', secret, body) : o.sha256;
  const s1 = o.sha1 === undefined ? signature('sha1', secret, body) : o.sha1;
  if (s256 !== null) h['x-hub-signature-256'] = s256;
  if (s1 !== null) h['x-hub-signature'] = s1;
  return h;
}
/** The feed message an `?extra-metadata=github` publish makes. */
function githubFeed(body: Buffer, o: GhOpts = {}): Message {
  const headers = githubHeaders(body, o);
  return new Message(`${Date.now()}-${++seq}`, '/unsafe/github.com/org/Codertocat', headers, githubEnvelope(headers, body));
}

interface Published {
  topic: string;
  headers: Headers;
  body: Buffer;
}
class FakeHost implements RouterHost {
  published: Published[] = [];
  counts: Record<string, number> = {};
  logs: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  failNextPublish = false;
  log = {
    debug: (obj: object, msg: string) => this.logs.push({ level: 'debug', obj: obj as Record<string, unknown>, msg }),
    info: (obj: object, msg: string) => this.logs.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    warn: (obj: object, msg: string) => this.logs.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
    error: (obj: object, msg: string) => this.logs.push({ level: 'error', obj: obj as Record<string, unknown>, msg }),
  };
  async publish(topic: string, headers: Headers, body: Buffer): Promise<unknown> {
    // Yield so that unawaited handle() calls would interleave if the router didn't serialise them.
    await new Promise((r) => setImmediate(r));
    if (this.failNextPublish) {
      this.failNextPublish = false;
      throw new Error('backend unavailable');
    }
    this.published.push({ topic, headers, body });
    return undefined;
  }
  count(event: RouterEvent, router: string): void {
    const k = `${router}.${event}`;
    this.counts[k] = (this.counts[k] ?? 0) + 1;
  }
  topics(): string[] {
    return this.published.map((p) => p.topic);
  }
  drops(): Record<string, unknown>[] {
    return this.logs.filter((l) => l.msg.endsWith('delivery dropped')).map((l) => l.obj);
  }
  allLogText(): string {
    return JSON.stringify(this.logs);
  }
}

function github(secrets = [SECRET], extra: Partial<Parameters<typeof createGithubRouter>[0]> = {}) {
  const host = new FakeHost();
  return { host, router: createGithubRouter({ secrets, ...extra }, host) };
}

describe('githubEnvelope', () => {
  it('is the original hookbot envelope byte for byte: Go-sorted keys, empty strings for absent headers', () => {
    const body = Buffer.from('{"a":"<&>"}');
    expect(githubEnvelope({}, body).toString()).toBe(
      `{"Delivery":"","Event":"","Payload":"${body.toString('base64')}","Signature":""}`,
    );
    const env = githubEnvelope(
      { 'x-hub-signature': 'sha1=ab', 'x-github-event': 'push', 'x-github-delivery': 'd-1', 'x-hub-signature-256': 'sha256=cd' },
      body,
    );
    expect(env.toString()).toBe(
      `{"Delivery":"d-1","Event":"push","Payload":"${body.toString('base64')}","Signature":"sha1=ab","Signature256":"sha256=cd"}`,
    );
  });

  it('takes the first value of a repeated header, as Go Header.Get does', () => {
    const env = JSON.parse(githubEnvelope({ 'x-github-event': ['push', 'ping'] }, Buffer.alloc(0)).toString());
    expect(env.Event).toBe('push');
  });
});

describe('router helpers', () => {
  it('goJSON escapes like Go encoding/json', () => {
    expect(goJSON({ b: '<unknown> & \u2028', a: 'é"\\\n' }).toString()).toBe(
      '{"a":"é\\"\\\\\\n","b":"\\u003cunknown\\u003e \\u0026 \\u2028"}',
    );
    expect(goJSON({ x: 'a\ud800b' }).toString()).toBe('{"x":"a\ufffdb"}');
  });

  it('decodeBase64 rejects what is not standard base64', () => {
    expect(decodeBase64('aGVsbG8=')?.toString()).toBe('hello');
    expect(decodeBase64('aGVs\nbG8=')?.toString()).toBe('hello');
    expect(decodeBase64('')?.length).toBe(0);
    expect(decodeBase64('aGVsbG8')).toBeUndefined();
    expect(decodeBase64('aGVs*G8=')).toBeUndefined();
    expect(decodeBase64('aGVsbG8-')).toBeUndefined();
  });

  it('compares secrets exactly', () => {
    expect(safeEqual('abc', 'abc')).toBe(true);
    expect(safeEqual('abc', 'abd')).toBe(false);
    expect(safeEqual('abc', 'abcd')).toBe(false);
    expect(safeEqual('', '')).toBe(true);
    expect(matchesAny('b', ['a', 'b', 'c'])).toBe(true);
    expect(matchesAny('d', ['a', 'b', 'c'])).toBe(false);
    expect(matchesAny('a', [])).toBe(false);
  });
});

describe('claimAny', () => {
  it('stops at the first key already claimed, so a racing node never takes the winner\'s next key', async () => {
    const store = new RecentIds({ windowMs: 60_000 });
    // Node A claimed the delivery id first; node B loses on it...
    expect(store.claim('delivery:x')).toBe(false);
    expect(await claimAny(store, ['delivery:x', 'payload:p'])).toBe(true);
    // ...and must have left the payload key for node A, which goes on to publish.
    expect(await claimAny(store, ['payload:p'])).toBe(false);
  });

  it('claims every key of a fresh delivery, and an earlier key stays claimed when a later one is a duplicate', async () => {
    const store = new RecentIds({ windowMs: 60_000 });
    expect(await claimAny(store, ['delivery:a', 'payload:p'])).toBe(false);
    // A replay of the same payload under a fresh id: duplicate by payload, and the fresh id is marked.
    expect(await claimAny(store, ['delivery:b', 'payload:p'])).toBe(true);
    expect(store.claim('delivery:b')).toBe(true);
  });
});

describe('RecentIds', () => {
  it('remembers ids for the window, then forgets them', () => {
    let now = 1_000;
    const ids = new RecentIds({ windowMs: 100, now: () => now });
    expect(ids.claim('a')).toBe(false);
    expect(ids.claim('a')).toBe(true);
    expect(ids.has('a')).toBe(true);
    now += 99;
    expect(ids.claim('a')).toBe(true);
    now += 1;
    expect(ids.has('a')).toBe(false);
    expect(ids.size).toBe(0);
    expect(ids.claim('a')).toBe(false);
  });

  it('is bounded: past maxEntries the oldest go first', () => {
    let now = 0;
    const ids = new RecentIds({ windowMs: 1_000_000, maxEntries: 3, now: () => now++ });
    for (const id of ['a', 'b', 'c', 'd']) expect(ids.claim(id)).toBe(false);
    expect(ids.size).toBe(3);
    expect(ids.has('a')).toBe(false);
    expect(ids.has('b')).toBe(true);
    expect(ids.has('d')).toBe(true);
  });

  it('expires from the front as time passes, so memory follows the rate, not the total', () => {
    let now = 0;
    const ids = new RecentIds({ windowMs: 10, maxEntries: 1_000_000, now: () => now });
    for (let i = 0; i < 10_000; i++) {
      now = i;
      ids.claim(`id-${i}`);
    }
    expect(ids.size).toBe(10);
  });

  it('release forgets a claim', () => {
    const ids = new RecentIds();
    ids.claim('x');
    ids.release('x');
    expect(ids.claim('x')).toBe(false);
  });

  it('defaults to a one hour window and 100 000 ids', () => {
    const ids = new RecentIds();
    expect(ids.windowMs).toBe(3_600_000);
    expect(ids.maxEntries).toBe(100_000);
  });
});

describe('github router', () => {
  it('has the original name and feed topic', () => {
    const { router } = github();
    expect(router.name).toBe('github');
    expect(router.topic).toBe(GITHUB_FEED);
    expect(GITHUB_FEED).toBe('/unsafe/github.com/');
  });

  it('refuses to be created without a secret', () => {
    expect(() => github([])).toThrow(/secret/);
    expect(() => github([''])).toThrow(/secret/);
  });

  it('routes a signed branch push: the original summary on the branch topic, the envelope on the event topic', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    const msg = githubFeed(body, { delivery: 'push-1' });
    await router.handle(msg);

    expect(host.topics()).toEqual([
      'github.com/repo/Codertocat/Hello-World/branch/master',
      'github.com/repo/Codertocat/Hello-World/event/push',
    ]);
    // Go's json.Marshal of the original's map[string]string: sorted keys.
    expect(host.published[0].body.toString()).toBe(
      '{"Branch":"master","Repo":"Codertocat/Hello-World","SHA":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","Type":"push","Who":"Codertocat"}',
    );
    expect(host.published[0].headers['content-type']).toBe('application/json');
    expect(host.published[1].body.equals(msg.body)).toBe(true);
    expect(host.published[1].headers).toEqual(msg.headers);
    expect(host.counts).toEqual({ 'github.verified': 1, 'github.published': 2 });

    // A receiver of the event topic can verify it again.
    const env = JSON.parse(host.published[1].body.toString());
    const payload = Buffer.from(env.Payload, 'base64');
    expect(payload.equals(body)).toBe(true);
    expect(env.Signature256).toBe(signature('sha256', SECRET, payload));
    expect(env.Signature).toBe(signature('sha1', SECRET, payload));
  });

  it('keeps slashes in branch names', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw({ ...branchPush, ref: 'refs/heads/feature/x' })));
    expect(host.topics()[0]).toBe('github.com/repo/Codertocat/Hello-World/branch/feature/x');
    expect(JSON.parse(host.published[0].body.toString()).Branch).toBe('feature/x');
  });

  it('routes a tag push to the tag topic', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw(tagPush)));
    expect(host.topics()).toEqual([
      'github.com/repo/Codertocat/Hello-World/tag/simple-tag',
      'github.com/repo/Codertocat/Hello-World/event/push',
    ]);
    expect(host.published[0].body.toString()).toBe(
      '{"Repo":"Codertocat/Hello-World","SHA":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","Tag":"simple-tag","Type":"push","Who":"Codertocat"}',
    );
  });

  it('writes Who as the original does when there is no pusher', async () => {
    const { host, router } = github();
    const { pusher: _pusher, ...noPusher } = branchPush;
    await router.handle(githubFeed(raw(noPusher)));
    expect(host.published[0].body.toString()).toContain('"Who":"\\u003cunknown\\u003e"');
  });

  it('routes pull_request and ping only to their event topics', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw(pullRequest), { event: 'pull_request' }));
    await router.handle(githubFeed(raw(repoPing), { event: 'ping' }));
    expect(host.topics()).toEqual([
      'github.com/repo/Codertocat/Hello-World/event/pull_request',
      'github.com/repo/Octocoders/Hello-World/event/ping',
    ]);
  });

  it('drops an org-level ping (no repository) with a log line, after verifying it', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw(orgPing), { event: 'ping', delivery: 'org-ping' }));
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'github.verified': 1 });
    expect(host.drops()).toEqual([
      expect.objectContaining({ router: 'github', delivery: 'org-ping', reason: expect.stringMatching(/no repository/) }),
    ]);
  });

  it('accepts sha1-only signatures (old GitHub Enterprise, the original envelope)', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw(branchPush), { sha256: null }));
    expect(host.published).toHaveLength(2);
    expect(host.counts['github.verified']).toBe(1);
  });

  it('accepts Signature256 carried only in the envelope', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    const env = githubEnvelope(
      { 'x-github-event': 'push', 'x-github-delivery': 'e256', 'x-hub-signature-256': signature('sha256', SECRET, body) },
      body,
    );
    await router.handle(new Message('1-1', '/unsafe/github.com/org/x', {}, env));
    expect(host.published).toHaveLength(2);
  });

  it('drops, logs and counts a forged signature, without logging the signature or the secret', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    const msg = githubFeed(body, { secret: 'attacker guess', delivery: 'forged-1' });
    await router.handle(msg);
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'github.failed': 1 });
    expect(host.drops()).toEqual([
      expect.objectContaining({
        router: 'github',
        delivery: 'forged-1',
        event: 'push',
        reason: 'sha256 signature does not match any secret',
      }),
    ]);
    // Verified first: a forgery's payload is never parsed, so the repository it claims is never logged.
    expect(host.drops()[0]).not.toHaveProperty('repo');
    const text = host.allLogText();
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain(msg.headers['x-hub-signature-256'].slice(7));
    expect(text).not.toContain(msg.headers['x-hub-signature'].slice(5));
  });

  it('does not fall back to sha1 when the sha256 signature is wrong', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    await router.handle(githubFeed(body, { sha256: signature('sha256', 'wrong', body) }));
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'github.failed': 1 });
  });

  it('drops missing and malformed signatures', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(raw(branchPush), { sha256: null, sha1: null, delivery: 'unsigned' }));
    await router.handle(githubFeed(raw(branchPush), { sha256: 'sha256=xyz', delivery: 'bad-256' }));
    await router.handle(githubFeed(raw(branchPush), { sha256: null, sha1: 'md5=00', delivery: 'bad-1' }));
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'github.failed': 3 });
    expect(host.drops().map((d) => [d.delivery, d.reason])).toEqual([
      ['unsigned', expect.stringMatching(/missing signature/)],
      ['bad-256', 'malformed X-Hub-Signature-256'],
      ['bad-1', 'malformed X-Hub-Signature'],
    ]);
  });

  it('accepts the old and the new secret during a rotation, and nothing else', async () => {
    const { host, router } = github([SECRET, OLD_SECRET]);
    await router.handle(githubFeed(raw({ ...branchPush, after: 'a'.repeat(40) }), { secret: OLD_SECRET }));
    await router.handle(githubFeed(raw({ ...branchPush, after: 'b'.repeat(40) }), { secret: SECRET }));
    await router.handle(githubFeed(raw({ ...branchPush, after: 'c'.repeat(40) }), { secret: 'third' }));
    await router.handle(githubFeed(raw({ ...branchPush, after: 'd'.repeat(40) }), { secret: OLD_SECRET, sha256: null }));
    expect(host.counts).toEqual({ 'github.verified': 3, 'github.failed': 1, 'github.published': 6 });
    const shas = host.published.filter((p) => p.topic.includes('/branch/')).map((p) => JSON.parse(p.body.toString()).SHA);
    expect(shas).toEqual(['a'.repeat(40), 'b'.repeat(40), 'd'.repeat(40)]);
  });

  it('re-publishes a redelivered id only once within the window, and again after it', async () => {
    let now = 0;
    const seen = new RecentIds({ windowMs: 3_600_000, now: () => now });
    const { host, router } = github([SECRET], { seen });
    const body = raw(branchPush);
    await router.handle(githubFeed(body, { delivery: 'same-id' }));
    await router.handle(githubFeed(body, { delivery: 'same-id' }));
    expect(host.published).toHaveLength(2);
    expect(host.counts).toEqual({ 'github.verified': 2, 'github.published': 2, 'github.duplicate': 1 });
    now += 3_600_000;
    await router.handle(githubFeed(body, { delivery: 'same-id' }));
    expect(host.published).toHaveLength(4);
  });

  it('treats the same signed payload under a fresh id as a replay', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    await router.handle(githubFeed(body, { delivery: 'one' }));
    await router.handle(githubFeed(body, { delivery: 'two', event: 'release' }));
    expect(host.topics()).toEqual([
      'github.com/repo/Codertocat/Hello-World/branch/master',
      'github.com/repo/Codertocat/Hello-World/event/push',
    ]);
    expect(host.counts['github.duplicate']).toBe(1);
  });

  it('a forgery using a real delivery id does not block the real delivery', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    await router.handle(githubFeed(body, { delivery: 'real-id', secret: 'forger' }));
    await router.handle(githubFeed(body, { delivery: 'real-id' }));
    expect(host.published).toHaveLength(2);
  });

  it('drops malformed feed messages with a log line and never throws', async () => {
    const { host, router } = github();
    const bad = [
      Buffer.from('{not json'),
      Buffer.from('[]'),
      Buffer.from('"just a string"'),
      Buffer.from('{"Event":"push","Payload":"%%%not base64"}'),
      Buffer.from('{"Event":"push","Payload":12}'),
      Buffer.from([0xff, 0xfe, 0x00]),
    ];
    for (const [i, body] of bad.entries()) {
      await expect(router.handle(new Message(`1-${i}`, '/unsafe/github.com/x', {}, body))).resolves.toBeUndefined();
    }
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'github.failed': bad.length });
    expect(host.drops()).toHaveLength(bad.length);
    expect(host.drops().map((d) => d.reason)).toContain('envelope Payload is not valid base64');
  });

  it('drops signed payloads that are not JSON, or have no usable repository', async () => {
    const { host, router } = github();
    await router.handle(githubFeed(Buffer.from('not json at all'), { delivery: 'nj' }));
    await router.handle(githubFeed(raw({ zen: 'Keep it logically awesome.' }), { delivery: 'norepo', event: 'ping' }));
    await router.handle(githubFeed(raw({ ...branchPush, repository: { full_name: '../../x' } }), { delivery: 'dots' }));
    await router.handle(githubFeed(raw({ ...branchPush, repository: { full_name: 'a/b/c' } }), { delivery: 'deep' }));
    await router.handle(githubFeed(raw({ ...branchPush, after: 'e'.repeat(40) }), { event: 'a/b', delivery: 'ev' }));
    expect(host.published).toEqual([]);
    expect(host.drops().map((d) => [d.delivery, d.reason])).toEqual([
      ['nj', 'payload is not JSON'],
      ['norepo', expect.stringMatching(/no repository/)],
      ['dots', 'repository.full_name is not owner/name'],
      ['deep', 'repository.full_name is not owner/name'],
      ['ev', 'missing or invalid X-GitHub-Event'],
    ]);
  });

  it('also accepts a raw payload published without ?extra-metadata=github, verified from its headers', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    const headers = githubHeaders(body);
    await router.handle(new Message('1-1', '/unsafe/github.com/org/x', headers, body));
    expect(host.topics()).toEqual([
      'github.com/repo/Codertocat/Hello-World/branch/master',
      'github.com/repo/Codertocat/Hello-World/event/push',
    ]);
    expect(host.published[1].body.equals(body)).toBe(true);
  });

  it('understands the form-encoded content type', async () => {
    const { host, router } = github();
    const body = Buffer.from(new URLSearchParams({ payload: JSON.stringify(branchPush) }).toString());
    await router.handle(githubFeed(body, { contentType: 'application/x-www-form-urlencoded' }));
    expect(host.topics()[0]).toBe('github.com/repo/Codertocat/Hello-World/branch/master');
  });

  it('releases the delivery id when publishing fails, so GitHub\'s retry gets through', async () => {
    const { host, router } = github();
    const body = raw(branchPush);
    host.failNextPublish = true;
    await router.handle(githubFeed(body, { delivery: 'retry-me' }));
    expect(host.published).toEqual([]);
    expect(host.logs.some((l) => l.level === 'error' && l.msg === 'router publish failed')).toBe(true);
    await router.handle(githubFeed(body, { delivery: 'retry-me' }));
    expect(host.published).toHaveLength(2);
  });

  it('handles messages one at a time in call order even when not awaited', async () => {
    const { host, router } = github();
    const pushes = ['one', 'two', 'three'].map((b) => githubFeed(raw({ ...branchPush, ref: `refs/heads/${b}` })));
    await Promise.all(pushes.map((m) => router.handle(m)));
    expect(host.topics().filter((t) => t.includes('/branch/'))).toEqual(
      ['one', 'two', 'three'].map((b) => `github.com/repo/Codertocat/Hello-World/branch/${b}`),
    );
  });
});

// GitLab's documented Push Hook / Tag Push Hook payloads, trimmed.
const gitlabPush = {
  object_kind: 'push',
  event_name: 'push',
  before: '95790bf891e76fee5e1747ab589903a6a1f80f22',
  after: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
  ref: 'refs/heads/main',
  ref_protected: true,
  checkout_sha: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
  user_id: 4,
  user_name: 'John Smith',
  user_username: 'jsmith',
  project_id: 15,
  project: {
    id: 15,
    name: 'Diaspora',
    path_with_namespace: 'mike/diaspora',
    default_branch: 'main',
    web_url: 'http://example.com/mike/diaspora',
  },
  commits: [],
  total_commits_count: 0,
};
const gitlabTagPush = {
  ...gitlabPush,
  object_kind: 'tag_push',
  event_name: 'tag_push',
  before: '0000000000000000000000000000000000000000',
  after: '82b3d5ae55f7080f1e6022629cdb57bfae7cccc7',
  ref: 'refs/tags/v1.0.0',
  project: { ...gitlabPush.project, path_with_namespace: 'jsmith/example' },
};
const TOKEN = 'gitlab-webhook-token';

function gitlabFeed(payload: unknown, o: { event?: string; token?: string | null; uuid?: string; idem?: string } = {}): Message {
  const body = Buffer.from(JSON.stringify(payload));
  const request: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': 'GitLab/17.5.0',
    'x-gitlab-event': o.event ?? 'Push Hook',
    'x-gitlab-event-uuid': o.uuid ?? `uuid-${++seq}`,
    'x-gitlab-instance': 'https://gitlab.com',
  };
  if (o.idem) request['idempotency-key'] = o.idem;
  if (o.token !== null) request['x-gitlab-token'] = o.token ?? TOKEN;
  // Idempotency-Key is not a kept header: only the envelope carries it.
  const { 'idempotency-key': _idem, ...kept } = request;
  return new Message(`${Date.now()}-${++seq}`, '/unsafe/gitlab.com/group/acme', kept, gitlabEnvelope(request, body));
}
function gitlab(tokens = [TOKEN]) {
  const host = new FakeHost();
  return { host, router: createGitlabRouter({ tokens }, host) };
}

describe('gitlabEnvelope', () => {
  it('has the github envelope\'s shape with Token instead of Signature', () => {
    const body = Buffer.from('{}');
    expect(gitlabEnvelope({}, body).toString()).toBe('{"Delivery":"","Event":"","Payload":"e30=","Token":""}');
    expect(
      gitlabEnvelope({ 'x-gitlab-token': 't', 'x-gitlab-event': 'Push Hook', 'x-gitlab-event-uuid': 'u', 'idempotency-key': 'k' }, body).toString(),
    ).toBe('{"Delivery":"k","Event":"Push Hook","Payload":"e30=","Token":"t"}');
    expect(JSON.parse(gitlabEnvelope({ 'x-gitlab-event-uuid': 'u' }, body).toString()).Delivery).toBe('u');
  });

  it('slugs event names', () => {
    expect(gitlabEventSlug('Push Hook')).toBe('push');
    expect(gitlabEventSlug('Tag Push Hook')).toBe('tag_push');
    expect(gitlabEventSlug('Merge Request Hook')).toBe('merge_request');
    expect(gitlabEventSlug('Pipeline Hook')).toBe('pipeline');
    expect(gitlabEventSlug('')).toBeUndefined();
    expect(gitlabEventSlug('../x')).toBeUndefined();
  });
});

describe('gitlab router', () => {
  it('has its feed topic and refuses an empty token', () => {
    expect(gitlab().router.topic).toBe(GITLAB_FEED);
    expect(GITLAB_FEED).toBe('/unsafe/gitlab.com/');
    expect(() => gitlab([])).toThrow(/token/);
    expect(() => gitlab([''])).toThrow(/token/);
  });

  it('routes a push with a good token, and never passes the token on', async () => {
    const { host, router } = gitlab();
    const msg = gitlabFeed(gitlabPush, { idem: 'idem-1' });
    await router.handle(msg);
    expect(host.topics()).toEqual(['gitlab.com/repo/mike/diaspora/branch/main', 'gitlab.com/repo/mike/diaspora/event/push']);
    expect(host.published[0].body.toString()).toBe(
      '{"Branch":"main","Repo":"mike/diaspora","SHA":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","Type":"push","Who":"jsmith"}',
    );
    const ev = host.published[1];
    expect(ev.headers['x-gitlab-token']).toBeUndefined();
    expect(ev.headers['x-gitlab-event']).toBe('Push Hook');
    const env = JSON.parse(ev.body.toString());
    expect(env).toEqual({ Token: '', Event: 'Push Hook', Delivery: 'idem-1', Payload: expect.any(String) });
    expect(JSON.parse(Buffer.from(env.Payload, 'base64').toString())).toEqual(gitlabPush);
    expect(JSON.stringify(host.published.map((p) => [p.headers, p.body.toString()]))).not.toContain(TOKEN);
    expect(host.counts).toEqual({ 'gitlab.verified': 1, 'gitlab.published': 2 });
  });

  it('routes a tag push to the tag topic, and nested group paths whole', async () => {
    const { host, router } = gitlab();
    await router.handle(gitlabFeed(gitlabTagPush, { event: 'Tag Push Hook' }));
    await router.handle(
      gitlabFeed({ ...gitlabPush, ref: 'refs/heads/feature/y', project: { path_with_namespace: 'org/sub/app' } }),
    );
    expect(host.topics()).toEqual([
      'gitlab.com/repo/jsmith/example/tag/v1.0.0',
      'gitlab.com/repo/jsmith/example/event/tag_push',
      'gitlab.com/repo/org/sub/app/branch/feature/y',
      'gitlab.com/repo/org/sub/app/event/push',
    ]);
    expect(host.published[0].body.toString()).toBe(
      '{"Repo":"jsmith/example","SHA":"82b3d5ae55f7080f1e6022629cdb57bfae7cccc7","Tag":"v1.0.0","Type":"tag_push","Who":"jsmith"}',
    );
  });

  it('drops bad and missing tokens, logging neither token', async () => {
    const { host, router } = gitlab();
    await router.handle(gitlabFeed(gitlabPush, { token: 'guess', uuid: 'bad-tok' }));
    await router.handle(gitlabFeed(gitlabPush, { token: null, uuid: 'no-tok' }));
    expect(host.published).toEqual([]);
    expect(host.counts).toEqual({ 'gitlab.failed': 2 });
    // Verified first: an unauthenticated payload is never parsed, so its project is unknown.
    expect(host.drops().map((d) => [d.delivery, d.repo, d.reason])).toEqual([
      ['bad-tok', undefined, 'X-Gitlab-Token does not match any configured token'],
      ['no-tok', undefined, expect.stringMatching(/missing X-Gitlab-Token/)],
    ]);
    expect(host.allLogText()).not.toContain('guess');
    expect(host.allLogText()).not.toContain(TOKEN);
  });

  it('accepts any configured token (rotation) and a token given only as a header (raw publish)', async () => {
    const { host, router } = gitlab(['new-token', TOKEN]);
    await router.handle(gitlabFeed(gitlabPush));
    const body = Buffer.from(JSON.stringify({ ...gitlabPush, after: 'f'.repeat(40) }));
    await router.handle(
      new Message('1-1', '/unsafe/gitlab.com/x', { 'x-gitlab-event': 'Push Hook', 'x-gitlab-token': 'new-token' }, body),
    );
    expect(host.counts).toEqual({ 'gitlab.verified': 2, 'gitlab.published': 4 });
    expect(host.published[3].headers).toEqual({ 'x-gitlab-event': 'Push Hook' });
    expect(host.published[3].body.equals(body)).toBe(true);
  });

  it('dedupes by delivery id', async () => {
    const { host, router } = gitlab();
    await router.handle(gitlabFeed(gitlabPush, { idem: 'k1' }));
    await router.handle(gitlabFeed({ ...gitlabPush, total_commits_count: 1 }, { idem: 'k1' }));
    expect(host.published).toHaveLength(2);
    expect(host.counts['gitlab.duplicate']).toBe(1);
  });

  it('drops malformed messages and payloads without a project', async () => {
    const { host, router } = gitlab();
    await router.handle(new Message('1-1', '/unsafe/gitlab.com/x', {}, Buffer.from('nope')));
    await router.handle(gitlabFeed({ object_kind: 'push', ref: 'refs/heads/main' }, { uuid: 'noproj' }));
    await router.handle(gitlabFeed(gitlabPush, { event: '', uuid: 'noevent' }));
    expect(host.published).toEqual([]);
    expect(host.drops().map((d) => d.reason)).toEqual([
      expect.stringMatching(/not JSON/),
      expect.stringMatching(/no project/),
      'missing or invalid X-Gitlab-Event',
    ]);
  });
});
