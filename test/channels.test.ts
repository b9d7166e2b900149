/**
 * smee channel ids and paths, as units: ids are unguessable, carry a tag of
 * the key, verify under the current and previous keys only, and a channel
 * path maps to its own topic only when channels are on.
 */
import { describe, expect, it } from 'vitest';
import { forwardHeaders, forwardTarget } from '../src/cli/forward.js';
import { CHANNEL_ID_LENGTH, CHANNEL_QUERY_HEADER, ChannelIds, channelTopic, isChannelId, mintChannelId } from '../src/protocol/channels.js';
import { Message } from '../src/protocol/message.js';
import { parseEndpoint } from '../src/protocol/topics.js';
import { makeToken } from '../src/protocol/tokens.js';

describe('channel ids', () => {
  it('are 40 lower-case base32 characters, different every time', () => {
    const ids = new ChannelIds(['k']);
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const id = ids.mint();
      expect(id).toMatch(/^[a-z2-7]{40}$/);
      seen.add(id);
    }
    expect(seen.size).toBe(1000);
    expect(CHANNEL_ID_LENGTH).toBe(40);
  });

  it('spell 16 random bytes then a tag of the key, so the same randomness under another key is another id', () => {
    const random = Buffer.alloc(16, 0x5a);
    const a = mintChannelId('key-a', random);
    const b = mintChannelId('key-b', random);
    // 16 bytes are 25.6 base32 digits: the first 25 are the random part alone.
    expect(a.slice(0, 25)).toBe(b.slice(0, 25));
    expect(a).not.toBe(b);
    expect(mintChannelId('key-a', random)).toBe(a);
  });

  it('verify exactly what the current or a previous key minted', () => {
    const old = new ChannelIds(['old']);
    const rotated = new ChannelIds(['new', 'old']);
    const afterRotation = new ChannelIds(['new']);
    const byOld = old.mint();
    const byNew = rotated.mint();
    expect(rotated.verify(byOld)).toBe(true);
    expect(rotated.verify(byNew)).toBe(true);
    expect(afterRotation.verify(byNew)).toBe(true);
    expect(afterRotation.verify(byOld)).toBe(false);
    expect(old.verify(byNew)).toBe(false);
  });

  it('refuse any change to an id, and anything that is not one', () => {
    const ids = new ChannelIds(['k']);
    const id = ids.mint();
    for (let i = 0; i < id.length; i++) {
      const c = id[i] === 'a' ? 'b' : 'a';
      expect(ids.verify(id.slice(0, i) + c + id.slice(i + 1)), `position ${i}`).toBe(false);
    }
    for (const bad of ['', id.slice(1), id + 'a', id.toUpperCase(), id.slice(0, 39) + '1', 'a'.repeat(40), '../' + id.slice(3)]) {
      expect(ids.verify(bad), bad).toBe(false);
    }
    expect(isChannelId('a'.repeat(40))).toBe(true);
    expect(isChannelId('0'.repeat(40))).toBe(false);
  });

  it('are no token, and no token is an id', () => {
    const id = new ChannelIds(['k']).mint();
    expect(makeToken('k', '/' + id)).not.toContain(id);
    expect(new ChannelIds(['k']).verify(makeToken('k', '/x').slice(0, 40))).toBe(false);
  });
});

describe('channel paths', () => {
  const id = new ChannelIds(['k']).mint();

  it('map /<id> (publish or subscribe) and /events/<id> (subscribe) to the topic smee/<id> when channels are on', () => {
    expect(channelTopic(id)).toBe(`smee/${id}`);
    expect(parseEndpoint(`/${id}`, true)).toEqual({ action: 'any', unsafe: false, topic: `smee/${id}`, path: `/${id}`, channel: id });
    expect(parseEndpoint(`/events/${id}`, true)).toEqual({ action: 'sub', unsafe: false, topic: `smee/${id}`, path: `/events/${id}`, channel: id });
  });

  it('leave every other path its old meaning, and every path when channels are off', () => {
    expect(parseEndpoint(`/${id}`)).toEqual({ action: 'any', unsafe: false, topic: id, path: `/${id}` });
    expect(parseEndpoint(`/events/${id}`)).toMatchObject({ action: 'any', topic: `events/${id}` });
    for (const path of [`/${id}/`, `/${id}x`, `/${id.slice(1)}`, `/sub/${id}`, `/pub/${id}`, `/smee/${id}`, `/events/${id}/x`, '/new']) {
      expect(parseEndpoint(path, true).channel, path).toBeUndefined();
    }
    expect(parseEndpoint(`/sub/smee/${id}`, true)).toMatchObject({ action: 'sub', topic: `smee/${id}` });
    expect(parseEndpoint(`/${id.toUpperCase()}`, true)).toMatchObject({ action: 'any', topic: id.toUpperCase() });
  });
});

describe('hookbot forward with a channel message', () => {
  const m = (query?: string) => new Message('1-0', 'smee/x', query ? { [CHANNEL_QUERY_HEADER]: query, 'x-a': '1' } : { 'x-a': '1' }, Buffer.alloc(0));

  it('puts the query string back into the target URL (byte for byte when the target has none) and never sends it as a header', () => {
    const target = new URL('http://127.0.0.1:3000/hook');
    expect(forwardTarget(target, m()).href).toBe('http://127.0.0.1:3000/hook');
    expect(forwardTarget(target, m('a%20b=c+d&a%20b=e')).href).toBe('http://127.0.0.1:3000/hook?a%20b=c+d&a%20b=e');
    expect(forwardTarget(new URL('http://h/hook?keep=1&a=0'), m('a=1&a=2')).href).toBe('http://h/hook?keep=1&a=1&a=2');
    expect(forwardHeaders(m('a=1'))).toEqual({ 'x-a': '1', 'content-length': '0', 'x-hookbot-message-id': '1-0' });
  });
});
