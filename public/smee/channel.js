// A hookbot smee channel's page: the channel's recent and live events.
//
// It subscribes to its own URL over WebSocket (hookbot.v1), from the oldest
// message the server keeps (?since=0), and resumes by the last id after a
// drop. Webhook contents come from anyone holding the URL, so everything is
// put on the page with textContent, never as HTML.
'use strict';

(() => {
  const KEPT_EVENTS = 100;
  const MAX_BACKOFF_MS = 15000;
  // Header values shown as hidden: credentials a webhook may carry (the stream still has them).
  const SECRET_HEADER = /token|secret|password|authorization|cookie|api-key|apikey/i;
  const QUERY_HEADER = 'x-hookbot-query';

  const { $, el, prettyBody } = window.hookbotDom;

  const path = location.pathname;
  const channel = path.slice(path.lastIndexOf('/') + 1);
  const channelUrl = location.origin + path;
  let lastId; // newest message id shown
  let shown = 0;
  let attempt = 0;

  $('channel-url').textContent = channelUrl;
  $('commands').textContent = [
    `npx smee-client --url ${channelUrl} --target http://localhost:3000/webhook`,
    `gosmee client ${channelUrl} http://localhost:3000/webhook`,
    `hookbot forward ${channelUrl} --to http://localhost:3000/webhook`,
  ].join('\n');

  function setStatus(text, bad) {
    $('status').textContent = text;
    $('status').className = bad ? 'bad' : '';
  }

  function compareIds(a, b) {
    const [am, as] = a.split('-').map(Number);
    const [bm, bs] = b.split('-').map(Number);
    return am !== bm ? am - bm : as - bs;
  }

  function connect() {
    const url = new URL(channelUrl);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('since', lastId ?? '0');
    const ws = new WebSocket(url, 'hookbot.v1');
    ws.onopen = () => {
      attempt = 0;
      setStatus('connected: catching up');
    };
    ws.onmessage = (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame.type === 'message') onMessage(frame);
      else if (frame.type === 'live') setStatus('live: new events appear as they arrive');
      else if (frame.type === 'gap') {
        $('gap').hidden = false;
        $('gap').textContent = `Some events after ${frame.since} are no longer kept by the server and are not shown.`;
      }
    };
    ws.onclose = () => {
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt++) * (0.5 + Math.random() / 2);
      setStatus(`disconnected; reconnecting in ${Math.round(delay / 1000)} s`, true);
      setTimeout(connect, delay);
    };
  }

  function onMessage(m) {
    if (lastId !== undefined && compareIds(m.id, lastId) <= 0) return;
    lastId = m.id;
    const list = $('events');
    list.prepend(renderEvent(m));
    while (list.children.length > KEPT_EVENTS) list.lastElementChild.remove();
    shown++;
    $('empty').hidden = true;
    $('count').textContent = shown > KEPT_EVENTS ? `(newest ${KEPT_EVENTS} of ${shown})` : `(${shown})`;
  }

  function bodyBytes(m) {
    if (m.encoding !== 'base64') return new TextEncoder().encode(m.body).length;
    return atob(m.body).length;
  }

  function renderEvent(m) {
    const headers = m.headers || {};
    const name = headers['x-github-event'] || headers['x-gitlab-event'] || headers['x-gitea-event'] || 'event';
    const binary = m.encoding === 'base64';
    const result = el('span', { class: 'result' });
    const button = el('button', { type: 'button', class: 'redeliver', text: 'Redeliver' });
    button.addEventListener('click', () => redeliver(m, button, result));
    const meta = el('div', { class: 'meta' }, [
      el('span', { class: 'name', text: name }),
      el('span', { class: 'muted', text: new Date(m.time).toLocaleString() }),
      el('span', { class: 'id', text: m.id }),
      el('span', { class: binary ? 'badge binary' : 'badge', text: binary ? `binary · base64 · ${bodyBytes(m)} bytes` : `${bodyBytes(m)} bytes` }),
      el('span', { class: 'spacer' }),
      result,
      button,
    ]);

    const list = el('dl');
    if (headers[QUERY_HEADER]) list.append(el('dt', { text: 'query' }), el('dd', { text: '?' + headers[QUERY_HEADER] }));
    const names = Object.keys(headers).filter((n) => n !== QUERY_HEADER).sort();
    for (const n of names) {
      const hidden = SECRET_HEADER.test(n);
      list.append(el('dt', { text: n }), el('dd', { text: hidden ? '(hidden)' : headers[n], class: hidden ? 'hidden-value' : '' }));
    }
    if (!names.length) list.append(el('dt', { text: '(no headers)' }), el('dd'));

    return el('li', { class: 'event new', 'data-id': m.id }, [meta, list, el('pre', { class: 'body', text: prettyBody(m) })]);
  }

  async function redeliver(m, button, result) {
    button.disabled = true;
    result.textContent = 'redelivering…';
    try {
      const res = await fetch('_/smee/redeliver', {
        method: 'POST',
        cache: 'no-store',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ channel, id: m.id }),
      });
      const out = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(out.error || `HTTP ${res.status}`);
      result.textContent = `redelivered as ${out.id}`;
    } catch (err) {
      result.textContent = `failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  connect();
})();
