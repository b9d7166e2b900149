/**
 * smee.io-style channels: a URL that is its own credential.
 *
 * A channel id is 40 characters of lower-case base32 (RFC 4648's alphabet,
 * a-z and 2-7) spelling 25 bytes: 16 random bytes (128 bits, so an id cannot
 * be guessed) and a 9-byte tag, the start of HMAC-SHA256(key, TAG_DOMAIN ‖
 * random). The tag lets the server accept exactly the ids it minted without
 * storing any: an id from elsewhere, a typo, or a name picked by hand fails
 * it. Previous keys still verify, so rotating HOOKBOT_KEY keeps channels.
 *
 * The tag is a different MAC (SHA-256, its own domain string) over different
 * input than the path tokens (HMAC-SHA1 over a path), so a channel id never
 * tells anyone a token, nor a token an id.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

const RANDOM_BYTES = 16;
const TAG_BYTES = 9;
const ID_BYTES = RANDOM_BYTES + TAG_BYTES;
/** 25 bytes are exactly 40 base32 digits: no padding, every id the same length. */
export const CHANNEL_ID_LENGTH = (ID_BYTES * 8) / 5;
const TAG_DOMAIN = 'hookbot smee channel\0';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
const CHANNEL_ID_RE = new RegExp(`^[a-z2-7]{${CHANNEL_ID_LENGTH}}$`);

/** The hookbot topic a channel's messages live on: `smee/<id>`, so token holders reach it as any topic. */
export const CHANNEL_TOPIC_PREFIX = 'smee/';

/**
 * The publish's query string, kept with a channel message under this header
 * (raw, without the `?`): smee's format hands it back as `query`, and
 * `hookbot forward` appends it to its target, as smee-client does.
 */
export const CHANNEL_QUERY_HEADER = 'x-hookbot-query';

/**
 * Headers of one hop, or credentials, that a channel message must not carry
 * onward: the server drops them before storing, `hookbot forward` before
 * replaying. The query header is on the list because it goes back into the
 * target URL, never into a header.
 */
export const HOP_HEADERS: readonly string[] = [
  'host',
  'content-length',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'authorization',
  'proxy-authorization',
  CHANNEL_QUERY_HEADER,
];

/** `GET`/`HEAD` here mints a channel, as on smee.io. */
export const NEW_CHANNEL_PATH = '/new';

/** The prefix of gosmee's event-stream URL, `<base>/events/<id>`. */
export const GOSMEE_EVENTS_PREFIX = '/events/';

/** Whether `s` has the shape of a channel id (not whether this server minted it). */
export function isChannelId(s: string): boolean {
  return s.length === CHANNEL_ID_LENGTH && CHANNEL_ID_RE.test(s);
}

export function channelTopic(id: string): string {
  return CHANNEL_TOPIC_PREFIX + id;
}

function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(value >>> bits) & 31];
    }
    value &= (1 << bits) - 1;
  }
  return out;
}

/** The bytes of a well-formed id (isChannelId). */
function unbase32(id: string): Buffer {
  const out = Buffer.allocUnsafe(ID_BYTES);
  let bits = 0;
  let value = 0;
  let n = 0;
  for (let i = 0; i < id.length; i++) {
    value = (value << 5) | ALPHABET.indexOf(id[i]);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (value >>> bits) & 0xff;
      value &= (1 << bits) - 1;
    }
  }
  return out;
}

function tag(key: string, random: Buffer): Buffer {
  return createHmac('sha256', key).update(TAG_DOMAIN).update(random).digest().subarray(0, TAG_BYTES);
}

/** A fresh channel id under `key`; `random` only for tests. */
export function mintChannelId(key: string, random: Buffer = randomBytes(RANDOM_BYTES)): string {
  if (random.length !== RANDOM_BYTES) throw new Error(`a channel id needs ${RANDOM_BYTES} random bytes`);
  return base32(Buffer.concat([random, tag(key, random)]));
}

/** Mints with the current key and verifies against it and the previous ones. */
export class ChannelIds {
  readonly #keys: readonly string[];

  /** `keys`: the current key first, then previous keys still accepted. */
  constructor(keys: readonly string[]) {
    if (keys.length === 0) throw new Error('ChannelIds needs a key');
    this.#keys = keys;
  }

  mint(): string {
    return mintChannelId(this.#keys[0]);
  }

  /** True exactly for ids minted under one of the keys. */
  verify(id: string): boolean {
    if (!isChannelId(id)) return false;
    const bytes = unbase32(id);
    const random = bytes.subarray(0, RANDOM_BYTES);
    const given = bytes.subarray(RANDOM_BYTES);
    let ok = false;
    // Every key is tried, so the time taken says nothing about which one matched.
    for (const key of this.#keys) if (timingSafeEqual(tag(key, random), given)) ok = true;
    return ok;
  }
}
