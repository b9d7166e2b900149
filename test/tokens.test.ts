import { describe, expect, it } from 'vitest';
import { makeToken, presentedToken, subpaths, TokenVerifier } from '../src/protocol/tokens.js';

describe('tokens', () => {
  it('are hex HMAC-SHA1 of the path, as the protocol page examples', () => {
    expect(makeToken('foo', '/pub/foo/bar')).toBe('2e1150434ba1d8c33bce7c82ee08b5d9850342c7');
    expect(makeToken('foo', '/sub/foo/')).toBe('025d52405676646b775882c3b6338bd9db0ae59c');
    expect(makeToken('foo', '/foo/bar')).toBe('bc91d311e5ac5208a5142bd1016b8c862a2644a8');
  });

  it('subpaths are every /-ending prefix and the path itself', () => {
    expect(subpaths('/pub/foo/bar')).toEqual(['/', '/pub/', '/pub/foo/', '/pub/foo/bar']);
    expect(subpaths('/pub/foo/')).toEqual(['/', '/pub/', '/pub/foo/']);
  });

  it('reads Basic (token as user name, password ignored) and Bearer, nothing else', () => {
    const t = 'a'.repeat(40);
    expect(presentedToken(`Basic ${Buffer.from(`${t}:`).toString('base64')}`)).toBe(t);
    expect(presentedToken(`basic ${Buffer.from(`${t}:whatever`).toString('base64')}`)).toBe(t);
    expect(presentedToken(`Bearer ${t}`)).toBe(t);
    expect(presentedToken(`Token ${t}`)).toBeUndefined();
    expect(presentedToken(`Bearer`)).toBeUndefined();
    expect(presentedToken(`Bearer a b`)).toBeUndefined();
    expect(presentedToken(`Basic !!!notbase64`)).toBeUndefined();
    expect(presentedToken(`Basic ${Buffer.from('nocolon').toString('base64')}`)).toBeUndefined();
    expect(presentedToken(undefined)).toBeUndefined();
  });

  it('scopes: prefix tokens cover deeper paths, exact tokens only themselves', () => {
    const v = new TokenVerifier(['k']);
    const t = (p: string) => makeToken('k', p);
    expect(v.verify('/pub/foo/bar', t('/pub/foo/'))).toBe(true);
    expect(v.verify('/pub/foo/bar/baz', t('/pub/foo/'))).toBe(true);
    expect(v.verify('/pub/foobar', t('/pub/foo/'))).toBe(false);
    expect(v.verify('/pub/foo', t('/pub/foo'))).toBe(true);
    expect(v.verify('/pub/foo/bar', t('/pub/foo'))).toBe(false);
    expect(v.verify('/sub/anything/at/all', t('/'))).toBe(true);
    expect(v.verify('/pub/x', t('/pub/'))).toBe(true);
    expect(v.verify('/sub/x', t('/pub/'))).toBe(false);
    // /pub- and /sub-less tokens work for both sides.
    expect(v.verify('/pub/foo/bar', t('/foo/bar'))).toBe(true);
    expect(v.verify('/sub/foo/bar', t('/foo/bar'))).toBe(true);
    expect(v.verify('/sub/foo/bar', t('/foo/'))).toBe(true);
    expect(v.verify('/pub/foo/bar', t('/foo'))).toBe(false);
  });

  it('rejects malformed tokens and accepts previous keys', () => {
    const v = new TokenVerifier(['new', 'old']);
    expect(v.verify('/pub/x', makeToken('old', '/pub/x'))).toBe(true);
    expect(v.verify('/pub/x', makeToken('other', '/pub/x'))).toBe(false);
    expect(v.verify('/pub/x', makeToken('new', '/pub/x').toUpperCase())).toBe(false);
    expect(v.verify('/pub/x', 'zz')).toBe(false);
    expect(v.verify('/pub/x', undefined)).toBe(false);
    expect(v.token('/pub/x')).toBe(makeToken('new', '/pub/x'));
  });

  it('answers the same with a tiny cache, past its bound, and uncached', () => {
    const v = new TokenVerifier(['k', 'old'], 2);
    for (let round = 0; round < 3; round++) {
      for (const p of ['/pub/a', '/pub/b/c', '/pub/d/']) {
        expect(v.verify(p, makeToken('k', p))).toBe(true);
        expect(v.verify(p, makeToken('old', p), false)).toBe(true);
        expect(v.verify(p, makeToken('k', p + 'x'))).toBe(false);
        expect(v.verify(`${p}/deeper`.replace('//', '/'), makeToken('k', p))).toBe(p.endsWith('/'));
      }
    }
  });
});

describe('TokenVerifier against the plain definition', () => {
  /** The original's rule, written the slow, obvious way. */
  function naive(keys: string[], path: string, token: string): boolean {
    const strip = (p: string) => {
      if (p.startsWith('/pub')) p = p.slice(4);
      if (p.startsWith('/sub')) p = p.slice(4);
      return p;
    };
    return subpaths(path).some((sub) => keys.some((k) => makeToken(k, sub) === token || makeToken(k, strip(sub)) === token));
  }

  it('agrees for every candidate of quirky, deep and non-ASCII paths, under rotation', () => {
    const keys = ['k', 'a-much-longer-key-'.repeat(8)];
    const v = new TokenVerifier(keys, 4);
    const paths = ['/pub', '/pub/', '/pubx/y', '/pub/sub/x', '/sub/pub/x/', '/pub/sub', '/a', '/ü/é/🎉/x', '/pub/' + 'a/'.repeat(64) + 'z', '/sub/' + 'é/'.repeat(40) + '🎉', '/unsafe/pub/x/y'];
    for (const path of paths) {
      const tries = new Set<string>();
      for (const sub of [...subpaths(path), '', '/', 'x/', '/x', path + '/']) {
        for (const k of [...keys, 'other']) tries.add(makeToken(k, sub));
        tries.add(makeToken(keys[0], sub.replace(/^\/pub/, '').replace(/^\/sub/, '')));
      }
      for (const t of tries) {
        const expected = naive(keys, path, t);
        expect(v.verify(path, t), `${path} ${t}`).toBe(expected);
        // Again, now possibly from the cache.
        expect(v.verify(path, t), `${path} ${t} (again)`).toBe(expected);
      }
    }
  });

  it('reads Authorization with ASCII spaces and tabs only (RFC 7235)', () => {
    const t = 'b'.repeat(40);
    expect(presentedToken(`Bearer\t${t}`)).toBe(t);
    expect(presentedToken(`  Bearer   ${t}  `)).toBe(t);
    expect(presentedToken(`Bearer\u00a0${t}`)).toBeUndefined();
    expect(presentedToken(`Bearer\u2003${t}`)).toBeUndefined();
    expect(presentedToken(`Bearer ${t}\u00a0`)).toBeUndefined();
  });
});
