/**
 * Topics and the request paths that name them.
 *
 * A path maps to an endpoint: publish or subscribe, safe or unsafe, and a
 * topic. Unsafe topics are prefixed with `/unsafe/` so that they can never
 * reach a safe subscriber of the same name.
 */
import { HttpError, Status } from './errors.js';

/** The molly-guard header `/unsafe/sub/` requires, with the original's exact value and refusal. */
export const UNSAFE_HEADER = 'x-hookbot-unsafe-is-ok';
export const UNSAFE_HEADER_VALUE = 'I understand the security implications';
export const UNSAFE_HEADER_ERROR = '400 Bad Request. X-Hookbot-Unsafe-Is-Ok header required.';

export function isRecursive(topic: string): boolean {
  return topic.endsWith('/');
}

/** A request path mapped onto the protocol: what it does and on which topic. */
export interface Endpoint {
  /** `pub`/`sub` from `/pub/`, `/sub/` (and unsafe); `any` for a bare `/<topic>` (the method decides). */
  action: 'pub' | 'sub' | 'any';
  unsafe: boolean;
  topic: string;
  /** The percent-decoded path, which tokens are made for. */
  path: string;
}

/**
 * Maps a request path (no query) to its endpoint. Topics are taken from the
 * percent-decoded path, as the original does; unsafe topics are prefixed with
 * `/unsafe/` so they can never reach a safe subscriber of the same name.
 */
const badPath = (message: string) => new HttpError(Status.BAD_REQUEST, message);

export function parseEndpoint(rawPath: string): Endpoint {
  if (!rawPath.startsWith('/')) throw badPath('path must start with /');
  let path: string;
  try {
    path = rawPath.includes('%') ? decodeURIComponent(rawPath) : rawPath;
  } catch {
    throw badPath('malformed percent-encoding in path');
  }
   
  if (/[\u0000-\u001f\u007f]/.test(path)) throw badPath('control character in path');

  let action: Endpoint['action'];
  let unsafe = false;
  let topic: string;
  if (path.startsWith('/pub/') || path.startsWith('/sub/')) {
    action = path[1] === 'p' ? 'pub' : 'sub';
    topic = path.slice(5);
  } else if (path.startsWith('/unsafe/pub/') || path.startsWith('/unsafe/sub/')) {
    action = path[8] === 'p' ? 'pub' : 'sub';
    unsafe = true;
    topic = '/unsafe/' + path.slice(12);
  } else {
    action = 'any';
    topic = path.slice(1);
  }
  if (topic === '') throw badPath('topic is empty');
  return { action, unsafe, topic, path };
}
