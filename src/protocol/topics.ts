/**
 * Topics and the request paths that name them.
 *
 * A path maps to an endpoint: publish or subscribe, safe or unsafe, and a
 * topic. Unsafe topics are prefixed with `/unsafe/` so that they can never
 * reach a safe subscriber of the same name.
 */
import { channelTopic, GOSMEE_EVENTS_PREFIX, isChannelId } from './channels.js';
import { HttpError, Status } from './errors.js';

/** The molly-guard header `/unsafe/sub/` requires, with the original's exact value and refusal. */
export const UNSAFE_HEADER = 'x-hookbot-unsafe-is-ok';
export const UNSAFE_HEADER_VALUE = 'I understand the security implications';
export const UNSAFE_HEADER_ERROR = '400 Bad Request. X-Hookbot-Unsafe-Is-Ok header required.';

/**
 * Bounds on a topic, checked before any token work: every cost that grows
 * with a path (token candidates, topic matching, history keys) is then
 * bounded for any request, anonymous or not.
 */
export const MAX_TOPIC_BYTES = 1024;
export const MAX_TOPIC_DEPTH = 64;
/** A request path longer than this cannot decode to a topic within MAX_TOPIC_BYTES (%XX is 3 bytes per byte). */
const MAX_RAW_PATH = 3 * MAX_TOPIC_BYTES + '/unsafe/pub/'.length;

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
  /**
   * Set on a smee channel's paths (`/<id>`, and gosmee's `/events/<id>`, whose
   * action is `sub`): the channel id, the capability that replaces the token.
   */
  channel?: string;
}

const badPath = (message: string) => new HttpError(Status.BAD_REQUEST, message);
const tooLong = () => new HttpError(Status.URI_TOO_LONG, `a topic is at most ${MAX_TOPIC_BYTES} bytes`);

/**
 * Maps a request path (no query) to its endpoint. Topics are taken from the
 * percent-decoded path, as the original does; unsafe topics are prefixed with
 * `/unsafe/` so they can never reach a safe subscriber of the same name, and
 * a safe topic may not begin with `/`, so none can spell an unsafe one.
 *
 * With `channels` (serve --smee), a path that is exactly a well-formed
 * channel id, `/<id>` or `/events/<id>`, is that channel, on topic
 * `smee/<id>`; whether this server minted it is the admission's question.
 * Every other path keeps its meaning.
 */
export function parseEndpoint(rawPath: string, channels = false): Endpoint {
  if (!rawPath.startsWith('/')) throw badPath('path must start with /');
  if (rawPath.length > MAX_RAW_PATH) throw tooLong();
  let path: string;
  try {
    path = rawPath.includes('%') ? decodeURIComponent(rawPath) : rawPath;
  } catch {
    throw badPath('malformed percent-encoding in path');
  }
   
  if (/[\u0000-\u001f\u007f]/.test(path)) throw badPath('control character in path');

  if (channels) {
    const events = path.startsWith(GOSMEE_EVENTS_PREFIX);
    const id = path.slice(events ? GOSMEE_EVENTS_PREFIX.length : 1);
    if (isChannelId(id)) return { action: events ? 'sub' : 'any', unsafe: false, topic: channelTopic(id), path, channel: id };
  }

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
  if (!unsafe && topic.startsWith('/')) throw badPath('a topic cannot begin with / (unsafe topics are reached through /unsafe/pub/ and /unsafe/sub/ only)');
  const named = unsafe ? topic.length - '/unsafe/'.length : topic.length;
  if (named > MAX_TOPIC_BYTES / 3 && Buffer.byteLength(topic) - (topic.length - named) > MAX_TOPIC_BYTES) throw tooLong();
  let depth = 1;
  for (let i = topic.indexOf('/', unsafe ? '/unsafe/'.length : 0); i !== -1; i = topic.indexOf('/', i + 1)) {
    if (++depth > MAX_TOPIC_DEPTH) throw badPath(`a topic has at most ${MAX_TOPIC_DEPTH} segments`);
  }
  return { action, unsafe, topic, path };
}
