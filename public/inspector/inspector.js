// The hookbot inspector: polls the server's JSON API once a second.
// Webhook contents come from anyone, so everything is put on the page with
// textContent, never as HTML.
'use strict';

(() => {
  const STORAGE_KEY = 'hookbot.inspector.token';
  const POLL_MS = 1000;
  const CHART_POINTS = 60;
  const KEPT_MESSAGES = 50;

  const { $, el, prettyBody } = window.hookbotDom;

  let token = sessionStorage.getItem(STORAGE_KEY);
  let timer;
  let previous; // last /topics answer, for rates
  let rates = new Map(); // topic -> msg/s
  const series = []; // total msg/s, oldest first
  let selected; // chosen topic
  let messages = []; // of the chosen topic, newest first
  let lastId; // newest message id seen for the chosen topic

  class Unauthorized extends Error {}

  async function api(path, init = {}) {
    const res = await fetch('/_/api' + path, {
      ...init,
      cache: 'no-store',
      headers: { ...(init.headers || {}), authorization: 'Bearer ' + token },
    });
    if (res.status === 401) throw new Unauthorized('That token is not valid for /_/.');
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    return body;
  }

  // --- sign in / out -------------------------------------------------------

  function showLogin(message = '') {
    clearTimeout(timer);
    $('app').hidden = true;
    $('logout').hidden = true;
    $('status').textContent = '';
    $('login').hidden = false;
    $('login-error').textContent = message;
    $('token').focus();
  }

  function signOut(message) {
    token = null;
    sessionStorage.removeItem(STORAGE_KEY);
    previous = undefined;
    selected = undefined;
    messages = [];
    lastId = undefined;
    series.length = 0;
    $('topics').tBodies[0].replaceChildren();
    $('messages').replaceChildren();
    showLogin(message);
  }

  async function start() {
    try {
      const topics = await api('/topics');
      sessionStorage.setItem(STORAGE_KEY, token);
      $('login').hidden = true;
      $('app').hidden = false;
      $('logout').hidden = false;
      onTopics(topics);
      schedule();
    } catch (err) {
      signOut(err instanceof Unauthorized ? err.message : `Could not reach the server: ${err.message}`);
    }
  }

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim().toLowerCase();
    if (!/^[0-9a-f]{40}$/.test(value)) {
      $('login-error').textContent = 'A token is 40 hexadecimal characters.';
      return;
    }
    token = value;
    $('token').value = '';
    start();
  });

  $('logout').addEventListener('click', () => signOut(''));

  // --- polling ---------------------------------------------------------------

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(tick, POLL_MS);
  }

  async function tick() {
    try {
      onTopics(await api('/topics'));
      if (selected !== undefined) await loadMessages();
      setStatus(`live · updated ${new Date().toLocaleTimeString()}`, false);
    } catch (err) {
      if (err instanceof Unauthorized) return signOut(err.message);
      setStatus(`connection problem: ${err.message} (retrying)`, true);
    }
    if (token) schedule();
  }

  function setStatus(text, bad) {
    $('status').textContent = text;
    $('status').classList.toggle('bad', bad);
  }

  // --- topics and rates --------------------------------------------------------

  function onTopics(data) {
    const now = data.time;
    if (previous && now > previous.time) {
      const seconds = (now - previous.time) / 1000;
      const before = new Map(previous.topics.map((t) => [t.topic, t.dispatched]));
      rates = new Map();
      for (const t of data.topics) rates.set(t.topic, Math.max(0, t.dispatched - (before.get(t.topic) ?? 0)) / seconds);
      series.push(Math.max(0, data.dispatched - previous.dispatched) / seconds);
      if (series.length > CHART_POINTS) series.shift();
    }
    previous = data;
    renderTopics(data);
    drawChart();
  }

  function renderTopics(data) {
    const rows = data.topics.map((t) => {
      const rate = rates.get(t.topic) ?? 0;
      const tr = el('tr', { 'data-topic': t.topic }, [
        el('td', { class: 'topic', text: t.topic }),
        el('td', { class: 'num', text: String(t.subscribers) }),
        el('td', { class: 'num', text: String(t.messages) }),
        el('td', { class: 'num', text: rate ? rate.toFixed(1) : '0' }),
      ]);
      if (t.topic === selected) tr.classList.add('selected');
      tr.addEventListener('click', () => select(t.topic));
      return tr;
    });
    $('topics').tBodies[0].replaceChildren(...rows);
    $('no-topics').hidden = rows.length > 0;
    $('topic-count').textContent = `(${data.topics.length}${data.truncated ? '+' : ''})`;
  }

  function drawChart() {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);

    const pad = { left: 36, right: 8, top: 10, bottom: 18 };
    const w = width - pad.left - pad.right;
    const h = height - pad.top - pad.bottom;
    const max = niceMax(Math.max(1, ...series));
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#6b7385';
    g.strokeStyle = '#e2e5eb';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.top + (h * i) / 4;
      g.beginPath();
      g.moveTo(pad.left, y + 0.5);
      g.lineTo(pad.left + w, y + 0.5);
      g.stroke();
      const label = (max * (4 - i)) / 4;
      g.fillText(label % 1 ? label.toFixed(1) : String(label), 4, y + 4);
    }
    g.fillText('60 s ago', pad.left, height - 4);
    g.fillText('now', pad.left + w - 20, height - 4);
    const current = series.length ? series[series.length - 1] : 0;
    $('rate-now').textContent = `(now ${current.toFixed(1)})`;
    if (series.length < 2) return;

    const x = (i) => pad.left + (w * (CHART_POINTS - series.length + i)) / (CHART_POINTS - 1);
    const y = (v) => pad.top + h - (h * v) / max;
    g.beginPath();
    series.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
    g.strokeStyle = '#2f6fed';
    g.lineWidth = 2;
    g.stroke();
    g.lineTo(x(series.length - 1), pad.top + h);
    g.lineTo(x(0), pad.top + h);
    g.closePath();
    g.fillStyle = 'rgba(47, 111, 237, 0.12)';
    g.fill();
  }

  function niceMax(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // --- messages of one topic -------------------------------------------------------

  async function select(topic) {
    selected = topic;
    messages = [];
    lastId = undefined;
    $('messages-title').textContent = `Recent messages of ${topic}`;
    $('messages-hint').textContent = 'Loading…';
    $('messages').replaceChildren();
    for (const tr of $('topics').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.topic === topic);
    try {
      await loadMessages();
    } catch (err) {
      if (err instanceof Unauthorized) return signOut(err.message);
      $('messages-hint').textContent = err.message;
    }
  }

  async function loadMessages() {
    const topic = selected;
    const query = new URLSearchParams({ topic });
    if (lastId) query.set('since', lastId);
    const data = await api('/messages?' + query);
    if (topic !== selected) return; // another topic was chosen meanwhile
    const fresh = data.messages.slice().reverse(); // newest first
    const live = lastId !== undefined;
    if (fresh.length) lastId = data.messages[data.messages.length - 1].id;
    messages = [...fresh, ...messages].slice(0, KEPT_MESSAGES);
    const list = $('messages');
    // Prepend only what is new, so expanded bodies and scroll positions stay put.
    for (const m of fresh.reverse()) list.prepend(renderMessage(m, live));
    while (list.children.length > KEPT_MESSAGES) list.lastElementChild.remove();
    $('messages-hint').textContent = messages.length ? '' : 'No messages in history for this topic yet (or history is off).';
  }

  function renderMessage(m, live) {
    const result = el('span', { class: 'result' });
    const button = el('button', { type: 'button', class: 'secondary redeliver', text: 'Redeliver' });
    button.addEventListener('click', () => redeliver(m, button, result));

    const binary = m.encoding === 'base64';
    const meta = el('div', { class: 'meta' }, [
      el('span', { class: 'id', text: m.id }),
      el('span', { class: 'topic', text: m.topic }),
      el('span', { class: 'muted', text: new Date(m.time).toLocaleString() }),
      el('span', { class: binary ? 'badge binary' : 'badge', text: binary ? `binary · base64 · ${m.size} bytes` : `${m.size} bytes` }),
      el('span', { class: 'spacer' }),
      result,
      button,
    ]);

    const headers = el('dl');
    const names = Object.keys(m.headers).sort();
    for (const name of names) {
      const value = m.headers[name];
      headers.append(el('dt', { text: name }), el('dd', { text: value, class: value === '[redacted]' ? 'redacted' : '' }));
    }
    if (!names.length) headers.append(el('dt', { text: '(no kept headers)' }), el('dd'));

    const li = el('li', { class: live ? 'message new' : 'message', 'data-id': m.id }, [meta, headers, el('pre', { class: 'body', text: prettyBody(m) })]);
    return li;
  }

  async function redeliver(m, button, result) {
    button.disabled = true;
    result.textContent = 'redelivering…';
    try {
      const out = await api('/redeliver', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topic: selected ?? m.topic, id: m.id }),
      });
      result.textContent = `redelivered as ${out.id}`;
    } catch (err) {
      if (err instanceof Unauthorized) return signOut(err.message);
      result.textContent = `failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  window.addEventListener('resize', drawChart);

  if (token) start();
  else showLogin();
})();
