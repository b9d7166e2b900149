/**
 * The inspector at /_/, driven in Debian's Chromium through playwright-core:
 * nothing without a token; with one, a message published by the test appears
 * live, and "Redeliver" re-publishes it to a real WebSocket subscriber.
 * Screenshots go to test/artifacts/ (not committed).
 */
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HookbotServer } from '../src/server/server.js';
import { bearer, eventually, Inbox, launchChromium, publish, startTestServer, subscribe, token } from './helpers.js';

const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));

let server: HookbotServer;
let browser: Browser;

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startTestServer({ keepHeader: ['x-request-id'] });
  browser = await launchChromium();
}, 30_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  return page;
}

async function signIn(page: Page, value: string): Promise<void> {
  await page.goto(server.url + '/_/');
  await page.fill('#token', value);
  await page.click('#login-submit');
}

describe('inspector API without a valid token', () => {
  it('answers 401 to every call, whatever token for another path is presented', async () => {
    const calls: Array<[string, RequestInit]> = [
      ['/_/api/topics', {}],
      ['/_/api/messages?topic=a', {}],
      ['/_/api/redeliver', { method: 'POST', body: '{"topic":"a","id":"1-0"}', headers: { 'content-type': 'application/json' } }],
      ['/_/api/anything', {}],
    ];
    for (const [path, init] of calls) {
      for (const auth of [{}, bearer('/pub/a'), bearer('/_/api/'), { authorization: 'Bearer ' + 'f'.repeat(40) }]) {
        const res = await fetch(server.url + path, { ...init, headers: { ...(init.headers as Record<string, string>), ...auth } });
        expect(res.status, `${path} ${JSON.stringify(auth)}`).toBe(401);
        expect((await res.json()).error).toMatch(/token for \/_\//);
      }
    }
  });

  it('serves the static page with a strict Content-Security-Policy, and /_ redirects to /_/', async () => {
    const res = await fetch(server.url + '/_/');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const redirect = await fetch(server.url + '/_', { redirect: 'manual' });
    expect(redirect.status).toBe(301);
    expect(redirect.headers.get('location')).toBe('/_/');
    for (const file of ['inspector.js', 'inspector.css']) expect((await fetch(server.url + '/_/' + file)).status).toBe(200);
    expect((await fetch(server.url + '/_/nope.js')).status).toBe(404);
  });

  it('shows only the sign-in form in the browser, and refuses a wrong token', async () => {
    await publish(server, '/pub/hidden/topic', 'not for strangers');
    const page = await newPage();
    try {
      await page.goto(server.url + '/_/');
      await page.waitForSelector('#login-form', { state: 'visible' });
      expect(await page.isVisible('#app')).toBe(false);
      expect(await page.textContent('body')).not.toContain('hidden/topic');

      await signIn(page, token('/pub/hidden/topic'));
      await expect.poll(() => page.textContent('#login-error')).toContain('not valid');
      expect(await page.isVisible('#app')).toBe(false);
      expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
      expect(await page.textContent('body')).not.toContain('not for strangers');
      await page.screenshot({ path: ARTIFACTS + 'inspector-login.png' });
    } finally {
      await page.context().close();
    }
  });
});

describe('inspector with a token', () => {
  it('shows a published message live, redacts secrets, pretty-prints JSON, and redelivers to a real subscriber', async () => {
    const page = await newPage();
    try {
      // Some other traffic, so the topic list and the chart have something in them.
      const watchers = await Promise.all([subscribe(server, '/sub/github.com/'), subscribe(server, '/sub/github.com/'), subscribe(server, '/sub/ci/builds')]);
      await publish(server, '/pub/ci/builds', JSON.stringify({ build: 41, status: 'passed' }), { 'content-type': 'application/json' });

      await signIn(page, token('/_/'));
      await page.waitForSelector('#app', { state: 'visible' });
      expect(await page.isVisible('#login')).toBe(false);
      // The token is kept for the tab's session only.
      expect(await page.evaluate(() => sessionStorage.getItem('hookbot.inspector.token'))).toBe(token('/_/'));
      await page.waitForSelector('#topics tr[data-topic="github.com/"]');
      expect(await page.textContent('#topics tr[data-topic="github.com/"] td:nth-child(2)')).toBe('2');

      // Choose the topic, then publish: the new message must appear without a reload.
      await page.click('#topics tr[data-topic="ci/builds"]');
      await page.waitForSelector('#messages li.message');
      const payload = { ref: 'refs/heads/main', after: 'deadbeef', repository: { full_name: 'octo/hello' }, pusher: { name: 'mona' } };
      const body = JSON.stringify(payload);
      const published = await publish(server, '/pub/ci/builds', body, {
        'content-type': 'application/json',
        'x-github-event': 'push',
        'x-hub-signature-256': 'sha256=0123abcd',
        'x-gitlab-token': 'super-secret-gitlab-token',
        'x-request-id': 'req-7',
      });
      expect(published.status).toBe(200);
      const id = published.headers.get('x-hookbot-message-id')!;
      for (let i = 0; i < 8; i++) await publish(server, '/pub/github.com/org/octo', `{"n":${i}}`, { 'content-type': 'application/json' });

      // It appears live, newest first, with its headers and a pretty-printed body.
      const item = page.locator(`#messages li[data-id="${id}"]`);
      await item.waitFor();
      expect(await page.locator('#messages li.message').first().getAttribute('data-id')).toBe(id);
      expect(await item.locator('pre.body').textContent()).toBe(JSON.stringify(payload, null, 2));
      const headerText = await item.locator('dl').textContent();
      expect(headerText).toContain('x-github-event');
      expect(headerText).toContain('push');
      expect(headerText).toContain('sha256=0123abcd');
      expect(headerText).toContain('[redacted]');
      expect(await page.content()).not.toContain('super-secret-gitlab-token');

      // A binary message is marked as base64.
      await publish(server, '/pub/ci/builds', Buffer.from([0, 1, 2, 255, 254]));
      await page.locator('#messages li.message').first().locator('.badge.binary').waitFor();
      expect(await page.locator('#messages li.message').first().locator('pre.body').textContent()).toBe(Buffer.from([0, 1, 2, 255, 254]).toString('base64'));

      // Redeliver: the real subscriber receives the same bytes again.
      const subscriber = new Inbox(watchers[2]);
      const before = subscriber.messages.length;
      await item.locator('button.redeliver').click();
      await expect.poll(() => item.locator('.result').textContent()).toMatch(/^redelivered as \d+-\d+$/);
      await subscriber.waitFor(before + 1);
      expect(subscriber.messages[before].data.toString()).toBe(body);
      // The copy keeps the original's headers (the secret one unredacted, as published).
      const copyId = (await item.locator('.result').textContent())!.replace('redelivered as ', '');
      const history = await server.broker.history('ci/builds');
      const copy = history.messages.find((m) => m.id === copyId)!;
      expect(copy.body.toString()).toBe(body);
      expect(copy.headers['x-gitlab-token']).toBe('super-secret-gitlab-token');
      expect(copy.headers['x-request-id']).toBe('req-7');
      await page.locator(`#messages li[data-id="${copyId}"]`).waitFor();

      // Let the rate chart draw a few points, then keep a screenshot.
      await eventually(async () => (await page.locator('#rate-now').textContent()) !== '', 5000, 'chart');
      await page.locator(`#messages li[data-id="${copyId}"]`).scrollIntoViewIfNeeded();
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: ARTIFACTS + 'inspector.png' });

      for (const w of watchers) w.close();
    } finally {
      await page.context().close();
    }
  }, 40_000);

  it('a master token opens it too; signing out forgets the token', async () => {
    const page = await newPage();
    try {
      await signIn(page, token('/'));
      await page.waitForSelector('#app', { state: 'visible' });
      await page.click('#logout');
      await page.waitForSelector('#login-form', { state: 'visible' });
      expect(await page.isVisible('#app')).toBe(false);
      expect(await page.evaluate(() => sessionStorage.getItem('hookbot.inspector.token'))).toBeNull();
    } finally {
      await page.context().close();
    }
  });

  it('redeliver API: 404 for an id no longer in history, 400 for bad input', async () => {
    const auth = { ...bearer('/_/'), 'content-type': 'application/json' };
    const post = (body: string) => fetch(server.url + '/_/api/redeliver', { method: 'POST', body, headers: auth });
    expect((await post('{"topic":"ci/builds","id":"1-0"}')).status).toBe(404);
    expect((await post('{"topic":"ci/builds","id":"nope"}')).status).toBe(400);
    expect((await post('{"id":"1-0"}')).status).toBe(400);
    expect((await post('{not json')).status).toBe(400);
    expect((await fetch(server.url + '/_/api/messages', { headers: auth })).status).toBe(400);
    expect((await fetch(server.url + '/_/api/messages?topic=a&since=x', { headers: auth })).status).toBe(400);
  });
});
