import { describe, expect, it } from 'vitest';
import { HttpError } from '../src/protocol/errors.js';
import { parseEndpoint } from '../src/protocol/topics.js';
import { TopicIndex } from '../src/server/topic-index.js';

describe('TopicIndex', () => {
  it('matches the exact topic and each /-ending ancestor, nothing else', () => {
    const idx = new TopicIndex<string>();
    idx.add('foo/bar', 'exact');
    idx.add('foo/', 'rec-foo');
    idx.add('foo/bar/', 'rec-deeper');
    idx.add('foob', 'other');
    idx.add('/unsafe/foo/', 'unsafe-rec');
    const got: Array<[string, boolean]> = [];
    expect(idx.match('foo/bar', (s, r) => got.push([s, r]))).toBe(2);
    expect(got).toEqual([['exact', false], ['rec-foo', true]]);
    const deep: string[] = [];
    idx.match('foo/bar/baz', (s) => deep.push(s));
    expect(deep.sort()).toEqual(['rec-deeper', 'rec-foo']);
    const unsafe: string[] = [];
    idx.match('/unsafe/foo/bar', (s) => unsafe.push(s));
    expect(unsafe).toEqual(['unsafe-rec']);
    expect(idx.size).toBe(5);
    expect(idx.delete('foo/', 'rec-foo')).toBe(true);
    expect(idx.delete('foo/', 'rec-foo')).toBe(false);
    expect(idx.size).toBe(4);
  });
});

describe('parseEndpoint', () => {
  it('maps paths to topics as the original does', () => {
    expect(parseEndpoint('/pub/foo/bar')).toEqual({ action: 'pub', unsafe: false, topic: 'foo/bar', path: '/pub/foo/bar' });
    expect(parseEndpoint('/sub/foo/')).toMatchObject({ action: 'sub', topic: 'foo/' });
    expect(parseEndpoint('/unsafe/pub/foo')).toMatchObject({ action: 'pub', unsafe: true, topic: '/unsafe/foo' });
    expect(parseEndpoint('/unsafe/sub/foo/')).toMatchObject({ action: 'sub', unsafe: true, topic: '/unsafe/foo/' });
    expect(parseEndpoint('/foo/bar')).toMatchObject({ action: 'any', unsafe: false, topic: 'foo/bar' });
    expect(parseEndpoint('/pub/a%20b')).toMatchObject({ topic: 'a b', path: '/pub/a b' });
  });

  it('rejects malformed paths with a message naming the problem', () => {
    expect(() => parseEndpoint('/pub/%zz')).toThrow(/malformed percent-encoding/);
    expect(() => parseEndpoint('/pub/a%0ab')).toThrow(/control character/);
    expect(() => parseEndpoint('/pub/')).toThrow(/topic is empty/);
    expect(() => parseEndpoint('/pub/x')).not.toThrow();
    expect(() => parseEndpoint('/pub/%00')).toThrow(HttpError);
  });
});
