#!/usr/bin/env node
// The "floor": the least a relay can do for the same wire traffic (plain node:http + ws,
// no auth, no history, exact topics only). The bench compares hookbot against it, so
// keep it minimal and honest: any feature added here moves every ratio.
//
//   node bench/floor-server.mjs [port]      (or PORT=...; 0 picks a free port)
//
// POST /pub/<topic>   body sent as one binary frame to each subscriber of <topic>; 200 "OK\n"
// GET  /sub/<topic>   WebSocket upgrade: subscribe to <topic>
// GET  /status        200 "OK\n" (readiness probe for the bench)
import http from 'node:http';
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);

/** @type {Map<string, Set<import('ws').WebSocket>>} */
const topics = new Map();

function topicOf(url, prefix) {
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (!path.startsWith(prefix)) return undefined;
  try {
    return decodeURIComponent(path.slice(prefix.length));
  } catch {
    return undefined;
  }
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

const server = http.createServer((req, res) => {
  if (req.method === 'POST') {
    const topic = topicOf(req.url, '/pub/');
    if (topic === undefined) {
      res.writeHead(404).end('404 Not Found\n');
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      const subs = topics.get(topic);
      if (subs) for (const ws of subs) ws.send(body, { binary: true });
      res.writeHead(200, { 'content-type': 'text/plain' }).end('OK\n');
    });
    return;
  }
  if (req.method === 'GET' && req.url === '/status') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('OK\n');
    return;
  }
  res.writeHead(404).end('404 Not Found\n');
});

server.on('upgrade', (req, socket, head) => {
  const topic = topicOf(req.url, '/sub/');
  if (topic === undefined) {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let subs = topics.get(topic);
    if (!subs) topics.set(topic, (subs = new Set()));
    subs.add(ws);
    ws.on('close', () => {
      subs.delete(ws);
      if (subs.size === 0 && topics.get(topic) === subs) topics.delete(topic);
    });
    ws.on('error', () => {});
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`Listening on ${server.address().port}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const ws of wss.clients) ws.terminate();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
