/**
 * The wire formats, byte for byte: each encoder turns a Message (and the
 * control events it can carry) into exactly the bytes a subscriber reads.
 */
import { describe, expect, it } from 'vitest';
import { Message } from '../src/protocol/message.js';
import { hookbotV1Encoder } from '../src/server/transports/hookbot-v1.js';
import { framedEncoder, rawEncoder } from '../src/server/transports/raw.js';
import { gosmeeEncoder } from '../src/server/transports/gosmee.js';
import { smeeEncoder } from '../src/server/transports/smee.js';
import { sseEncoder } from '../src/server/transports/sse-events.js';
import { frame, OPCODE_BINARY, OPCODE_TEXT } from '../src/server/transports/ws-frame.js';

const msg = (body: string | Buffer, topic = 'a/b', headers: Record<string, string> = {}) =>
  new Message('1700000000000-3', topic, headers, Buffer.isBuffer(body) ? body : Buffer.from(body), 1700000000000);

/** Splits an unmasked server frame into opcode and payload, checking the length header. */
function unframe(buf: Buffer): { fin: boolean; opcode: number; payload: Buffer } {
  const len7 = buf[1] & 0x7f;
  expect(buf[1] & 0x80).toBe(0); // servers never mask
  const [len, start] = len7 < 126 ? [len7, 2] : len7 === 126 ? [buf.readUInt16BE(2), 4] : [buf.readUInt32BE(2) * 2 ** 32 + buf.readUInt32BE(6), 10];
  expect(buf.length).toBe(start + len);
  return { fin: (buf[0] & 0x80) !== 0, opcode: buf[0] & 0x0f, payload: buf.subarray(start) };
}

describe('WebSocket frames', () => {
  it.each([0, 1, 125, 126, 65535, 65536, 70000])('carry %i bytes with the shortest length header', (n) => {
    const payload = Buffer.alloc(n, 0xab);
    const f = frame(payload);
    expect(f.length - n).toBe(n < 126 ? 2 : n < 65536 ? 4 : 10);
    const { fin, opcode, payload: out } = unframe(f);
    expect([fin, opcode]).toEqual([true, OPCODE_BINARY]);
    expect(out.equals(payload)).toBe(true);
  });
});

describe('raw encoders (the original protocol)', () => {
  it('raw: one binary frame of exactly the body; no control events', () => {
    const body = Buffer.from([0, 1, 2, 0xff, 0x0a]);
    const { opcode, payload } = unframe(rawEncoder.message(msg(body)));
    expect(opcode).toBe(OPCODE_BINARY);
    expect(payload.equals(body)).toBe(true);
    expect(rawEncoder.gap).toBeUndefined();
    expect(rawEncoder.live).toBeUndefined();
    expect(rawEncoder.preamble).toBeUndefined();
  });

  it('framed: topic NUL body, for recursive subscriptions', () => {
    const { payload } = unframe(framedEncoder.message(msg('hi\0there', '/unsafe/ü/x')));
    expect(payload.equals(Buffer.concat([Buffer.from('/unsafe/ü/x'), Buffer.from([0]), Buffer.from('hi\0there')]))).toBe(true);
  });
});

describe('hookbot.v1', () => {
  it('text frames of one JSON envelope; binary bodies in base64', () => {
    const text = JSON.parse(unframe(hookbotV1Encoder.message(msg('{"a":1}', 't', { 'x-github-event': 'push' }))).payload.toString());
    expect(text).toEqual({ type: 'message', id: '1700000000000-3', topic: 't', time: 1700000000000, headers: { 'x-github-event': 'push' }, body: '{"a":1}' });
    const bin = unframe(hookbotV1Encoder.message(msg(Buffer.from([0xff, 0x00]))));
    expect(bin.opcode).toBe(OPCODE_TEXT);
    expect(JSON.parse(bin.payload.toString())).toMatchObject({ body: '/wA=', encoding: 'base64' });
  });

  it('gap and live events', () => {
    expect(JSON.parse(unframe(hookbotV1Encoder.gap!('5-0')).payload.toString())).toEqual({ type: 'gap', since: '5-0' });
    expect(JSON.parse(unframe(hookbotV1Encoder.live!).payload.toString())).toEqual({ type: 'live' });
  });
});

describe('SSE', () => {
  it('text bodies: id, the topic as event, one data line per line', () => {
    expect(sseEncoder.message(msg('one\ntwo\n', 'a/b')).toString()).toBe('id: 1700000000000-3\nevent: a/b\ndata: one\ndata: two\ndata: \n\n');
    expect(sseEncoder.message(msg('')).toString()).toBe('id: 1700000000000-3\nevent: a/b\ndata: \n\n');
  });

  it('bodies with CR or that are not UTF-8 text: base64 under base64:<topic>', () => {
    expect(sseEncoder.message(msg('a\r\nb')).toString()).toBe(`id: 1700000000000-3\nevent: base64:a/b\ndata: ${Buffer.from('a\r\nb').toString('base64')}\n\n`);
    expect(sseEncoder.message(msg(Buffer.from([0xc3, 0x28]))).toString()).toBe('id: 1700000000000-3\nevent: base64:a/b\ndata: wyg=\n\n');
  });

  it('preamble, gap and ping', () => {
    expect(sseEncoder.preamble!.toString()).toBe('retry: 2000\n\n');
    expect(sseEncoder.gap!('5-0').toString()).toBe('event: gap\ndata: {"since":"5-0"}\n\n');
    expect(sseEncoder.ping!.toString()).toBe(': ping\n\n');
  });
});

/** A channel message as a channel publish keeps it: every end-to-end header, and the query under x-hookbot-query. */
const GITHUB_HEADERS = {
  'user-agent': 'GitHub-Hookshot/abc123',
  accept: '*/*',
  'content-type': 'application/json',
  'x-github-event': 'pull_request',
  'x-github-delivery': '11111111-2222-3333-4444-555555555555',
  'x-hub-signature-256': 'sha256=48b9',
};

/** The one data line of an event, parsed. */
const dataOf = (event: Buffer) => JSON.parse(event.toString().split('\n')[1].slice('data: '.length));

describe('smee (smee-client, Probot)', () => {
  it('each message: id, and one data line of the lower-cased headers, content-length, body, query and timestamp (a number), nothing else', () => {
    const body = '{"action":"opened","number":1,"a":"café é <&>","nested":{"b":[1,2,3]}}';
    const m = msg(body, 'smee/x', { ...GITHUB_HEADERS, 'x-hookbot-query': 'foo=bar&r=1&r=2&e=%C3%A9' });
    expect(smeeEncoder.message(m).toString()).toBe(
      'id: 1700000000000-3\ndata: {"user-agent":"GitHub-Hookshot/abc123","accept":"*/*","content-type":"application/json","x-github-event":"pull_request",' +
        '"x-github-delivery":"11111111-2222-3333-4444-555555555555","x-hub-signature-256":"sha256=48b9",' +
        `"content-length":"${Buffer.byteLength(body)}","body":${body},"query":{"foo":"bar","r":["1","2"],"e":"é"},"timestamp":1700000000000}\n\n`,
    );
  });

  it('body: the parsed JSON (re-serialised compact, as smee.io), else the body as a string; never a second line', () => {
    const data = (body: string | Buffer) => dataOf(smeeEncoder.message(msg(body, 'smee/x')));
    expect(data('{\n  "a": 1\r\n}').body).toEqual({ a: 1 });
    expect(smeeEncoder.message(msg('{\n  "a": 1\r\n}')).toString().split('\n')).toHaveLength(4);
    expect(data('[1, 2]').body).toEqual([1, 2]);
    expect(data('"s"').body).toBe('s');
    expect(data('payload=%7B%7D').body).toBe('payload=%7B%7D');
    expect(data('line one\nline two\r\n').body).toBe('line one\nline two\r\n');
    expect(data('').body).toBe('');
    expect(data(Buffer.from([0xff, 0x00, 0x41])).body).toBe('\ufffd\u0000A');
    expect(data('{}')).toEqual({ 'content-length': '2', body: {}, query: {}, timestamp: 1700000000000 });
  });

  it('headers named like its own keys cannot shadow them', () => {
    const m = msg('1', 'smee/x', { body: 'h', query: 'h', timestamp: 'h', 'content-length': '999', 'x-hookbot-query': 'a=1' });
    expect(dataOf(smeeEncoder.message(m))).toEqual({ 'content-length': '1', body: 1, query: { a: '1' }, timestamp: 1700000000000 });
  });

  it('ready first, with the stream\'s start as its id when it starts live; other named events without ids (an id would reset what an EventSource resumes from)', () => {
    expect(smeeEncoder.preamble!.toString()).toBe('retry: 2000\n\n');
    expect(smeeEncoder.start!('5-0')!.toString()).toBe('event: ready\ndata: {}\n\n');
    const before = Date.now();
    const start = /^id: (\d+)-0\nevent: ready\ndata: \{\}\n\n$/.exec(smeeEncoder.start!(undefined)!.toString());
    expect(Number(start![1])).toBeGreaterThanOrEqual(before);
    expect(Number(start![1])).toBeLessThanOrEqual(Date.now());
    expect(smeeEncoder.ping!.toString()).toBe('event: ping\ndata: {}\n\n');
    expect(smeeEncoder.gap!('5-0').toString()).toBe('event: gap\ndata: {"since":"5-0"}\n\n');
    expect(smeeEncoder.live).toBeUndefined();
  });
});

describe('gosmee', () => {
  it('each message: id, and one data line of sorted keys: headers, bodyB (base64 of the raw bytes), content-length, timestamp as a string', () => {
    const body = Buffer.from('{"action": "opened",\n "z": 1}\n');
    const m = new Message('1700000000000-3', 'smee/x', { ...GITHUB_HEADERS, 'x-hookbot-query': 'foo=bar' }, body, 1700000000000);
    expect(gosmeeEncoder.message(m).toString()).toBe(
      `id: 1700000000000-3\ndata: {"accept":"*/*","bodyB":"${body.toString('base64')}","content-length":"${body.length}","content-type":"application/json",` +
        '"timestamp":"1700000000000","user-agent":"GitHub-Hookshot/abc123","x-github-delivery":"11111111-2222-3333-4444-555555555555",' +
        '"x-github-event":"pull_request","x-hub-signature-256":"sha256=48b9"}\n\n',
    );
  });

  it('headers gosmee would take for its own keys are left out', () => {
    const m = msg(Buffer.from([0, 1, 2]), 'smee/x', { body: 'h', bodyb: 'h', timestamp: 'h', 'content-length': '9' });
    expect(dataOf(gosmeeEncoder.message(m))).toEqual({ bodyB: 'AAEC', 'content-length': '3', timestamp: '1700000000000' });
  });

  it('data: ready first (with the start id when live), gosmee-gap, keepalive comments', () => {
    expect(gosmeeEncoder.preamble).toBeUndefined();
    expect(gosmeeEncoder.start!('5-0')!.toString()).toBe('data: ready\n\n');
    expect(gosmeeEncoder.start!(undefined)!.toString()).toMatch(/^id: \d+-0\ndata: ready\n\n$/);
    expect(gosmeeEncoder.gap!('5-0').toString()).toBe('event: gosmee-gap\ndata: {"error":"missed_history","requested_id":"5-0"}\n\n');
    expect(gosmeeEncoder.ping!.toString()).toBe(': ping\n\n');
  });
});

describe('encode once per message', () => {
  it('every subscriber of a format gets the very same Buffer', () => {
    const m = msg('shared');
    for (const e of [rawEncoder, framedEncoder, hookbotV1Encoder, sseEncoder, smeeEncoder, gosmeeEncoder]) {

      expect(m.encoded(e.key, e.message)).toBe(m.encoded(e.key, e.message));
    }
    expect(m.encoded(rawEncoder.key, rawEncoder.message)).not.toBe(m.encoded(framedEncoder.key, framedEncoder.message));
  });
});
