/**
 * A smee channel's page, driven in Debian's Chromium through playwright-core:
 * recent and live events with headers and pretty-printed JSON, Redeliver
 * reaching a real subscriber, a strict Content-Security-Policy with nothing
 * blocked, and nothing served for an id this server did not mint.
 * Screenshots go to test/artifacts/ (not committed).
 */
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChannelIds } from '../src/protocol/channels.js';
import { SUBPROTOCOL } from '../src/protocol/message.js';
import type { HookbotServer } from '../src/server/server.js';
import { Inbox, launchChromium, startTestServer, wsConnect, wsUrl } from './helpers.js';

const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));

let server: HookbotServer;
let browser: Browser;

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startTestServer({ smee: true });
  browser = await launchChromium();
}, 30_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

/** A page that records console errors (CSP violations among them) and every request it makes. */
async function newPage(): Promise<{ page: Page; errors: string[]; requests: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const errors: string[] = [];
  const requests: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('request', (r) => requests.push(r.url()));
  return { page, errors, requests };
}

async function mint(): Promise<{ url: string; id: string }> {
  const url = (await fetch(server.url + '/new', { redirect: 'manual' })).headers.get('location')!;
  return { url, id: url.slice(url.lastIndexOf('/') + 1) };
}

function post(url: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, { method: 'POST', body: typeof body === 'string' ? body : new Uint8Array(body), headers });
}

describe('the channel page', () => {
  it('is static HTML with a strict CSP, no referrer, and varies on Accept', async () => {
    const { url } = await mint();
    const res = await fetch(url, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('content-security-policy')).toBe(
      "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    expect(res.headers.get('vary')).toBe('accept');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.text()).toContain('<script src="_/smee/channel.js" defer></script>');
    for (const file of ['channel.js', 'channel.css']) {
      const asset = await fetch(`${server.url}/_/smee/${file}`);
      expect(asset.status).toBe(200);
      expect(asset.headers.get('content-security-policy')).toContain("default-src 'none'");
    }
    expect((await fetch(`${server.url}/_/smee/index.html`)).status).toBe(404);
    const head = await fetch(url, { method: 'HEAD' });
    expect([head.status, head.headers.get('content-type')]).toEqual([200, 'text/html; charset=utf-8']);
  });

  it('shows recent and live events with headers and pretty JSON, and Redeliver reaches a subscriber', async () => {
    const { url, id } = await mint();
    const recent = { action: 'opened', number: 7 };
    expect((await post(url, JSON.stringify(recent), { 'content-type': 'application/json', 'x-github-event': 'pull_request' })).status).toBe(200);

    const { page, errors } = await newPage();
    try {
      await page.goto(url);
      expect(await page.textContent('#channel-url')).toBe(url);
      expect(await page.textContent('#commands')).toContain(`npx smee-client --url ${url} --target http://localhost:3000/webhook`);
      const first = page.locator('#events li.event');
      await first.first().waitFor();
      expect(await first.first().locator('pre.body').textContent()).toBe(JSON.stringify(recent, null, 2));
      await expect.poll(() => page.textContent('#status')).toMatch(/^live/);

      // A subscriber of the channel's own URL, as hookbot forward holds it (no token).
      const subscriber = new Inbox(await wsConnect(wsUrl(server, `/${id}`), { protocol: SUBPROTOCOL }));
      await subscriber.waitFor(1); // live

      const payload = { ref: 'refs/heads/main', after: 'deadbeef', repository: { full_name: 'octo/hello' }, commits: [{ id: 'abc', message: '<b>not html</b>' }] };
      const body = JSON.stringify(payload);
      const res = await post(`${url}?foo=bar`, body, {
        'content-type': 'application/json',
        'x-github-event': 'push',
        'x-hub-signature-256': 'sha256=0123abcd',
        'x-gitlab-token': 'super-secret-gitlab-token',
      });
      const messageId = res.headers.get('x-hookbot-message-id')!;
      await subscriber.waitFor(2);

      const item = page.locator(`#events li[data-id="${messageId}"]`);
      await item.waitFor();
      expect(await page.locator('#events li.event').first().getAttribute('data-id')).toBe(messageId);
      expect(await item.locator('.name').textContent()).toBe('push');
      expect(await item.locator('pre.body').textContent()).toBe(JSON.stringify(payload, null, 2));
      const headers = await item.locator('dl').textContent();
      for (const text of ['query', '?foo=bar', 'x-github-event', 'sha256=0123abcd', 'x-gitlab-token', '(hidden)']) expect(headers).toContain(text);
      expect(await page.content()).not.toContain('super-secret-gitlab-token');
      // Bodies are text, never markup.
      expect(await item.locator('pre.body b').count()).toBe(0);

      // A binary body is marked and shown as base64.
      await post(url, Buffer.from([0, 1, 2, 255, 254]), { 'content-type': 'application/octet-stream' });
      await page.locator('#events li.event').first().locator('.badge.binary').waitFor();
      expect(await page.locator('#events li.event').first().locator('pre.body').textContent()).toBe('AAEC//4=');
      await subscriber.waitFor(3);

      // Redeliver: the subscriber gets the same message again, under a new id, with its headers.
      await item.locator('button.redeliver').click();
      await expect.poll(() => item.locator('.result').textContent()).toMatch(/^redelivered as \d+-\d+$/);
      const copyId = (await item.locator('.result').textContent())!.replace('redelivered as ', '');
      const [, , , copyFrame] = await subscriber.waitFor(4);
      const copy = JSON.parse(copyFrame.data.toString());
      expect(copy).toMatchObject({ type: 'message', id: copyId, topic: `smee/${id}`, body });
      expect(copy.headers).toMatchObject({ 'x-github-event': 'push', 'x-hookbot-query': 'foo=bar', 'x-gitlab-token': 'super-secret-gitlab-token' });
      await page.locator(`#events li[data-id="${copyId}"]`).waitFor();
      expect(await page.textContent('#count')).toBe('(4)');

      await page.screenshot({ path: ARTIFACTS + 'smee-channel.png', fullPage: true });
      expect(errors).toEqual([]);
    } finally {
      await page.context().close();
    }
  }, 40_000);

  it('is not served for an id this server did not mint: 404, no script, no connection', async () => {
    const unminted = new ChannelIds(['not-this-server']).mint();
    const { page, requests } = await newPage();
    try {
      const res = await page.goto(`${server.url}/${unminted}`);
      expect(res!.status()).toBe(404);
      expect(await page.textContent('body')).toBe('404 Not Found: no such channel\n');
      expect(await page.locator('script').count()).toBe(0);
      expect(requests).toEqual([`${server.url}/${unminted}`]);
    } finally {
      await page.context().close();
    }
  });

  it('Redeliver is scoped to its channel: another channel\'s message id is not found', async () => {
    const a = await mint();
    const b = await mint();
    const id = (await post(a.url, 'only in a')).headers.get('x-hookbot-message-id')!;
    const redeliver = (channel: string) =>
      fetch(server.url + '/_/smee/redeliver', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel, id }) });
    expect((await redeliver(b.id)).status).toBe(404);
    const ok = await redeliver(a.id);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ topic: `smee/${a.id}`, original: id });
    const bad = await fetch(server.url + '/_/smee/redeliver', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel: a.id, id: 'nope' }) });
    expect(bad.status).toBe(400);
  });
});
