/**
 * Subscribe URLs as people paste them: ws(s):// or http(s)://, with the token
 * as the URL's user name or given separately. Parsed once, with errors that
 * never echo the token.
 */
import { isMessageId } from '../protocol/message.js';

/** An error that retrying will not fix: bad URL, 4xx on the handshake, wrong protocol. */
export class SubscribeError extends Error {
  /** HTTP status of a refused handshake, when there was one. */
  readonly status?: number;
  constructor(message: string, status?: number) {
    super(message);
    this.name = 'SubscribeError';
    this.status = status;
  }
}

export interface ParsedSubscribeUrl {
  /** ws:// or wss:// URL without user info, fragment or `since`. Safe to log. */
  url: string;
  /** `Authorization` header value, if a token was given. Never log it. */
  authorization?: string;
  /** The URL's `since` query parameter, if any. */
  since?: string;
  /** True when the path ends in `/`: messages are from many topics. */
  recursive: boolean;
}

/** Hides user info so a URL can go into an error message or a log line. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^/@]*@/, '//***@');
}

/**
 * Normalises a subscribe URL: http(s) becomes ws(s), the token moves from the
 * user info (or `token`) into an Authorization header.
 */
export function parseSubscribeUrl(input: string, token?: string): ParsedSubscribeUrl {
  let u: URL;
  try {
    u = new URL(input);
  } catch {
    throw new SubscribeError(`invalid URL ${JSON.stringify(redactUrl(input))}: expected ws[s]://TOKEN@host/sub/topic`);
  }
  const schemes: Record<string, string> = { 'ws:': 'ws:', 'wss:': 'wss:', 'http:': 'ws:', 'https:': 'wss:' };
  const scheme = schemes[u.protocol];
  if (!scheme) {
    throw new SubscribeError(`unsupported URL scheme ${JSON.stringify(u.protocol)}: use ws://, wss://, http:// or https://`);
  }
  if (u.pathname === '/' || u.pathname === '') {
    throw new SubscribeError(`URL ${redactUrl(input)} has no topic path (expected /sub/<topic>)`);
  }
  let authorization: string | undefined;
  if (token !== undefined) {
    if (!token || /\s/.test(token)) throw new SubscribeError('invalid token: empty or contains whitespace');
    authorization = `Bearer ${token}`;
  } else if (u.username) {
    let user: string;
    let pass: string;
    try {
      user = decodeURIComponent(u.username);
      pass = decodeURIComponent(u.password);
    } catch {
      throw new SubscribeError('invalid token in URL user info: bad percent-encoding');
    }
    authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
  }
  const since = u.searchParams.get('since') ?? undefined;
  if (since !== undefined) checkSince(since);
  u.searchParams.delete('since');
  u.username = '';
  u.password = '';
  u.hash = '';
  // Assigning a special scheme to another special one keeps the rest of the URL.
  u.protocol = scheme;
  return { url: u.toString(), authorization, since, recursive: u.pathname.endsWith('/') };
}

export function checkSince(since: string): void {
  if (since !== '0' && !isMessageId(since)) {
    throw new SubscribeError(`invalid since ${JSON.stringify(since)}: expected a message id like 1700000000000-0, or 0`);
  }
}
