/**
 * The route pipeline's parts: the envelope format and the payload streaming
 * it relies on to verify before it decodes or parses (building matches Go's
 * json.Marshal byte for byte, locating agrees with JSON.parse on what an
 * envelope says, a large payload is streamed in chunks with turns of the
 * event loop between them), verify-first itself, and the bounded queue.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Message } from '../src/protocol/message.js';
import { goEnvelope, locateEnvelope, looksLikeObject } from '../src/server/routers/envelope.js';
import { createGithubRouter, githubEnvelope } from '../src/server/routers/github.js';
import { hmacHex, Payload, PayloadError } from '../src/server/routers/payload.js';
import { SerialQueue } from '../src/server/routers/pipeline.js';
import { decodeBase64, goJSON, type RouterEvent, type RouterHost } from '../src/server/routers/router.js';

function located(body: string | Buffer) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const env = locateEnvelope(buf);
  if (!env) return undefined;
  const payload = env.payload === undefined ? undefined : buf.toString('latin1', env.payload.start, env.payload.end);
  return { fields: Object.fromEntries(env.fields), payload };
}

describe('goEnvelope', () => {
  it('is goJSON of the fields and the base64 payload, for every size around the chunk boundary', () => {
    const fields = { Signature: 'sha1=<&>', Event: 'push', Delivery: 'd\u2028"x"', Signature256: 'é' };
    for (const size of [0, 1, 2, 3, 4, 786_431, 786_432, 786_433, 786_432 * 2 + 2]) {
      const body = randomBytes(size);
      const expected = goJSON({ ...fields, Payload: body.toString('base64') });
      expect(goEnvelope(fields, body).equals(expected)).toBe(true);
      expect(goEnvelope(fields, Buffer.from(body.toString('base64')), true).equals(expected)).toBe(true);
    }
  });
});

describe('locateEnvelope', () => {
  it('finds the fields of what hookbot and the original build, leaving Payload encoded', () => {
    const body = Buffer.from('{"a":"<&>"}');
    const env = githubEnvelope({ 'x-github-event': 'push', 'x-github-delivery': 'd<1>', 'x-hub-signature': 'sha1=ab' }, body);
    expect(located(env)).toEqual({ fields: { Delivery: 'd<1>', Event: 'push', Signature: 'sha1=ab' }, payload: body.toString('base64') });
  });

  it('agrees with JSON.parse on flat objects of strings, whatever the spacing, escapes and order', () => {
    for (const text of [
      '{}',
      ' { "Payload" : "QQ==" , "Event":"push" } \n',
      '{"Event":"a\\"b\\\\","Payload":"","Event":"last wins"}',
      '{"Delivery":"\\u00e9\\n","Payload":"QUJD"}',
      '{"Event":"x"}',
    ]) {
      const parsed = JSON.parse(text) as Record<string, string>;
      const { Payload, ...rest } = parsed;
      expect(located(text)).toEqual({ fields: rest, payload: Payload });
    }
  });

  it('leaves a Payload holding a JSON escape to fail as base64 (base64 never needs one)', () => {
    const body = Buffer.from('{"Payload":"QUJ\\u0044","Event":"e"}');
    const env = locateEnvelope(body)!;
    expect(env.fields.get('Event')).toBe('e');
    expect(Payload.base64(body, env.payload!.start, env.payload!.end).bytes()).toBeUndefined();
  });

  it('reads the fields after a large Payload from the end, without scanning the Payload', () => {
    const payload = randomBytes(3 * 1024 * 1024);
    const env = githubEnvelope({ 'x-github-event': 'push', 'x-hub-signature': 'sha1=ab', 'x-hub-signature-256': 'sha256=\u00e9"' }, payload);
    const found = locateEnvelope(env)!;
    expect(Object.fromEntries(found.fields)).toEqual({ Delivery: '', Event: 'push', Signature: 'sha1=ab', Signature256: 'sha256=\u00e9"' });
    expect(Payload.base64(env, found.payload!.start, found.payload!.end).bytes()?.equals(payload)).toBe(true);
    // A field after the Payload longer than any header: taken for part of the Payload, which then is not base64.
    const junk = Buffer.from(`{"Payload":"${'A'.repeat(100_000)}","x":"${'B'.repeat(70_000)}"}`);
    const odd = locateEnvelope(junk)!;
    expect(Payload.base64(junk, odd.payload!.start, odd.payload!.end).bytes()).toBeUndefined();
    expect(locateEnvelope(Buffer.from(`{"Payload":"A"${' '.repeat(70_000)}}`))).toBeUndefined();
  });

  it('is not fooled by anything but a flat object of strings', () => {
    for (const text of ['', '[]', '"x"', '{', '{"a":1}', '{"a":"b"', '{"a":"b"} x', '{"a":"b",}', '{"a":{"b":"c"}}', '{"a" "b"}', '{"a":"\\x"}', 'nope', '{"Payload":"}', '{"Payload":"A","x":1}', '{"Payload":"A",,"x":"y"}', '{"Payload":"A","Payload":"B"}', '{"Payload":"A" "x":"y"}']) {
      expect(locateEnvelope(Buffer.from(text))).toBeUndefined();
    }
    expect(looksLikeObject(Buffer.from(' \n{"ref":1}'))).toBe(true);
    expect(looksLikeObject(Buffer.from('[{}]'))).toBe(false);
  });
});

describe('Payload', () => {
  const b64 = (s: string) => {
    const buf = Buffer.from(`{"Payload":"${s}"}`);
    return Payload.base64(buf, 12, 12 + Buffer.byteLength(s));
  };

  it('accepts exactly what JSON.parse then decodeBase64 (standard base64, as Go) accepts, JSON escapes included', () => {
    // What a JSON string of base64 may hold: line breaks (skipped, as Go does), an escaped slash, and what is wrong.
    const tokens = ['\\n', '\\r', '\\/', '\\t', '\\\\', '\\u0041', '\\', '\n', 'QQ', 'Zm9v'];
    let seed = 7;
    const next = (n: number) => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) % n;
    for (let i = 0; i < 20_000; i++) {
      let s = '';
      for (let j = 0; j < 1 + (i % 6); j++) s += tokens[next(10) < 7 ? next(3) + 7 : next(tokens.length)];
      let parsed: string | undefined;
      try {
        parsed = JSON.parse(`"${s}"`) as string;
      } catch {
        parsed = undefined;
      }
      // \u escapes are the one deviation: Go would decode \u0041 to A; no encoder writes base64 that way.
      const expected = parsed === undefined || s.includes('\\u') ? undefined : decodeBase64(parsed);
      expect(b64(s).bytes()?.toString('hex'), JSON.stringify(s)).toBe(expected?.toString('hex'));
    }
  });

  it('streams base64 wrapped at 76 characters as a JSON string, escapes across chunk boundaries included', async () => {
    const body = randomBytes(3 * 1024 * 1024 + 5);
    const lines = body.toString('base64').match(/.{1,76}/g)!;
    // Python's json.dumps(base64.encodebytes(...).decode()): every line ends in an escaped newline.
    const wrapped = lines.join('\\n') + '\\n';
    // And one escape split by the 1 MiB chunk boundary, the other kind of line break.
    const split = 'A'.repeat(1024 * 1024 - 1) + '\\r' + 'A' + 'QUJD';
    for (const [text, bytes] of [
      [wrapped, body],
      [split, Buffer.from('A'.repeat(1024 * 1024) + 'QUJD', 'base64')],
    ] as const) {
      const p = Payload.base64(Buffer.from(text), 0, text.length);
      expect(p.precheck()).toBe(true);
      const [mac] = await hmacHex('sha256', ['k'], p);
      expect(mac).toBe(createHmac('sha256', 'k').update(bytes).digest('hex'));
      expect(p.bytes()?.equals(bytes)).toBe(true);
    }
  });

  it('accepts exactly what decodeBase64 (standard base64, as Go) accepts', () => {
    const alphabet = 'AQgw+/=-_ *%\u00ff';
    // A fixed pseudo-random sequence, so a failure names a string that fails every run.
    let seed = 42;
    const next = (n: number) => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) % n;
    for (let i = 0; i < 20_000; i++) {
      let s = '';
      const len = 4 * (1 + (i % 3));
      for (let j = 0; j < len; j++) s += alphabet[next(10) < 9 ? next(7) : next(alphabet.length)];
      const expected = decodeBase64(s);
      const p = b64(s);
      expect(p.bytes()?.toString('hex'), JSON.stringify(s)).toBe(expected?.toString('hex'));
    }
  });

  it('streams a large payload in chunks, yielding to the event loop between them, with the same HMAC', async () => {
    const body = randomBytes(5 * 1024 * 1024 + 7);
    const p = Payload.base64(goEnvelope({}, body), 12, 12 + 4 * Math.ceil(body.length / 3));
    let turns = 0;
    const ticker = setInterval(() => turns++, 0);
    const [a, b] = await hmacHex('sha256', ['k1', 'k2'], p);
    clearInterval(ticker);
    expect(a).toBe(createHmac('sha256', 'k1').update(body).digest('hex'));
    expect(b).toBe(createHmac('sha256', 'k2').update(body).digest('hex'));
    expect(turns).toBeGreaterThan(0);
    expect(p.bytes()?.equals(body)).toBe(true);
    const raw = await hmacHex('sha1', ['k'], Payload.raw(body));
    expect(raw).toEqual([createHmac('sha1', 'k').update(body).digest('hex')]);
  });

  it('finds URL-safe characters and inner padding while streaming', async () => {
    for (const bad of [0x2d, 0x5f, 0x3d]) {
      const text = Buffer.from('QUJD'.repeat(600_000));
      text[1_500_000] = bad; // in the second chunk
      const p = Payload.base64(text, 0, text.length);
      await expect(hmacHex('sha256', ['k'], p)).rejects.toThrow(PayloadError);
      expect(p.bytes()).toBeUndefined();
    }
  });

  it('finds invalid base64 while streaming, in any chunk', async () => {
    const text = Buffer.from('QUJD'.repeat(500_000));
    text[1_900_001] = 0x2a; // '*', in the third chunk
    const p = Payload.base64(text, 0, text.length);
    expect(p.precheck()).toBe(true);
    await expect(hmacHex('sha256', ['k'], p)).rejects.toThrow(PayloadError);
    expect(p.bytes()).toBeUndefined();
  });
});

class Host implements RouterHost {
  published: string[] = [];
  drops: Record<string, unknown>[] = [];
  counts: Record<string, number> = {};
  log = {
    debug: () => {},
    info: () => {},
    warn: (obj: object, msg: string) => void (msg.endsWith('dropped') && this.drops.push(obj as Record<string, unknown>)),
    error: () => {},
  };
  async publish(topic: string): Promise<unknown> {
    this.published.push(topic);
    return undefined;
  }
  count(event: RouterEvent, router: string): void {
    this.counts[`${router}.${event}`] = (this.counts[`${router}.${event}`] ?? 0) + 1;
  }
}

describe('github router, verify first', () => {
  const SECRET = 's3cret';
  function delivery(payload: Buffer, secret: string): Message {
    const headers = {
      'content-type': 'application/json',
      'x-github-event': 'push',
      'x-github-delivery': `big-${secret}`,
      'x-hub-signature-256': `sha256=${createHmac('sha256', secret).update(payload).digest('hex')}`,
    };
    return new Message('1-1', '/unsafe/github.com/org/acme', headers, githubEnvelope(headers, payload));
  }
  // A payload that would be costly to parse: many small objects.
  const big = Buffer.from(
    JSON.stringify({ ref: 'refs/heads/main', after: 'a'.repeat(40), repository: { full_name: 'org/acme' }, pusher: { name: 'p' }, pad: Array.from({ length: 200_000 }, (_, i) => ({ i })) }),
  );

  it('drops a large forgery without parsing it, and routes the same payload correctly signed', async () => {
    const host = new Host();
    const router = createGithubRouter({ secrets: [SECRET] }, host);
    const parse = JSON.parse;
    let parsedLarge = 0;
    JSON.parse = ((text: string, reviver?: Parameters<typeof parse>[1]) => {
      if (text.length > 100_000) parsedLarge++;
      return parse(text, reviver);
    }) as typeof JSON.parse;
    try {
      await router.handle(delivery(big, 'forger'));
      expect(parsedLarge).toBe(0);
      expect(host.counts).toEqual({ 'github.failed': 1 });
      expect(host.drops[0]).toMatchObject({ delivery: 'big-forger', reason: 'sha256 signature does not match any secret' });
      await router.handle(delivery(big, SECRET));
      expect(parsedLarge).toBe(1);
    } finally {
      JSON.parse = parse;
    }
    expect(host.published).toEqual(['github.com/repo/org/acme/branch/main', 'github.com/repo/org/acme/event/push']);
  });

  it('reports invalid base64 found while streaming as the drop reason', async () => {
    const host = new Host();
    const router = createGithubRouter({ secrets: [SECRET] }, host);
    const m = delivery(big, SECRET);
    m.body[m.body.indexOf('"Payload":"') + 11 + 1_000_001] = 0x20;
    await router.handle(m);
    expect(host.drops.map((d) => d.reason)).toEqual(['envelope Payload is not valid base64']);
    expect(host.counts).toEqual({ 'github.failed': 1 });
  });
});

describe('SerialQueue', () => {
  it('bounds waiting bytes as well as waiting jobs, and always takes a job when none waits', async () => {
    const queue = new SerialQueue(10, 100);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const order: number[] = [];
    // Larger than the whole budget, but nothing waits: taken.
    expect(queue.run(() => gate.then(() => void order.push(1)), 150)).toBeDefined();
    expect(queue.refusal(1)).toBe('more than 0 MiB of messages waiting');
    expect(queue.run(async () => void order.push(2), 1)).toBeUndefined();
    release();
    await queue.idle();
    expect(queue.run(async () => void order.push(3), 60)).toBeDefined();
    expect(queue.run(async () => void order.push(4), 40)).toBeDefined();
    expect(queue.run(async () => void order.push(5), 1)).toBeUndefined();
    await queue.idle();
    expect(order).toEqual([1, 3, 4]);
    expect(queue.refusal(100)).toBeUndefined();
  });

  it('bounds waiting jobs', () => {
    const queue = new SerialQueue(2, 1000);
    const never = () => new Promise<void>(() => {});
    expect(queue.run(never)).toBeDefined();
    expect(queue.run(never)).toBeDefined();
    expect(queue.refusal(0)).toBe('more than 2 messages waiting');
  });
});
