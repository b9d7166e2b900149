/**
 * The wire formats, byte for byte: each encoder turns a Message (and the
 * control events it can carry) into exactly the bytes a subscriber reads.
 */
import { describe, expect, it } from 'vitest';
import { Message } from '../src/protocol/message.js';
import { hookbotV1Encoder } from '../src/server/transports/hookbot-v1.js';
import { framedEncoder, rawEncoder } from '../src/server/transports/raw.js';
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

describe('encode once per message', () => {
  it('every subscriber of a format gets the very same Buffer', () => {
    const m = msg('shared');
    for (const e of [rawEncoder, framedEncoder, hookbotV1Encoder, sseEncoder]) {
      expect(m.encoded(e.key, e.message)).toBe(m.encoded(e.key, e.message));
    }
    expect(m.encoded(rawEncoder.key, rawEncoder.message)).not.toBe(m.encoded(framedEncoder.key, framedEncoder.message));
  });
});
