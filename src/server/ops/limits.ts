/**
 * Limits for running on the public internet: publishes per second per client
 * address (token bucket), concurrent subscribers per client address, and
 * subscriptions per server. Every refusal carries a Retry-After so a
 * well-behaved client knows when to come back.
 *
 * Memory stays bounded: idle rate buckets are swept (a bucket that has refilled
 * is the same as no bucket), the bucket map has a hard cap, and per-address
 * subscriber counts are deleted when they reach zero.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP, isIPv6, type Socket } from 'node:net';
import { HttpError, Status } from '../../protocol/errors.js';

export interface LimitsConfig {
  /** Publishes per second per client address; 0 disables. */
  rateLimit: number;
  /** Publishes a client may make at once before the per-second rate applies. */
  rateLimitBurst: number;
  /** Concurrent subscribers (WebSocket + SSE) per client address; 0 disables. */
  maxSubscribersPerIp: number;
  /** Concurrent subscriptions on this server; 0 disables. */
  maxSubscriptions: number;
  /** Concurrent connections per client (socket) address; 0 disables. */
  maxConnectionsPerIp: number;
  /** Publish body bytes being received at once, server-wide; 0 disables. */
  maxBodyInFlight: number;
  /**
   * Proxies in front of the server whose `X-Forwarded-For` entries are trusted;
   * 0 uses the socket address and ignores the header.
   */
  trustProxy: number;
  /**
   * Client addresses (or CIDR ranges) the per-address limits never apply to.
   * Loopback by default: a reverse proxy on the same host, without
   * --trust-proxy, would otherwise put every client in one bucket.
   */
  limitExempt: string[];
}

/** Used when the open-file limit cannot be read (not Linux). */
const FALLBACK_MAX_SUBSCRIPTIONS = 10_000;

/**
 * The default for --max-subscriptions: every subscriber holds a file
 * descriptor, so the process's open-file limit (node raises its soft limit
 * to the hard one at start) is the real ceiling. Leaves a tenth of it, and at
 * least 256, for publishers, the data directory, Redis and the rest.
 */
export function subscriptionsForFileLimit(limitsText?: string): number {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return FALLBACK_MAX_SUBSCRIPTIONS;
    }
  }
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
  if (!m) return FALLBACK_MAX_SUBSCRIPTIONS;
  const files = m[1] === 'unlimited' ? 1_048_576 : Number(m[1]);
  return Math.max(100, files - Math.max(256, Math.ceil(files / 10)));
}

export const LIMIT_DEFAULTS = {
  rateLimit: 100,
  maxSubscribersPerIp: 200,
  maxSubscriptions: subscriptionsForFileLimit(),
  // Above --max-subscribers-per-ip, so a host's subscribers always fit, with room for its publishes.
  maxConnectionsPerIp: 256,
  maxBodyInFlight: 256 * 1024 * 1024,
  trustProxy: 0,
  limitExempt: ['127.0.0.0/8', '::1/128'],
} as const;

/**
 * Parses `--limit-exempt` entries (an address, or address/prefix) into a
 * BlockList; throws an Error naming the bad entry.
 */
export function exemptList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, prefix, extra] = entry.split('/');
    const family = isIP(address);
    const bits = prefix === undefined ? (family === 6 ? 128 : 32) : Number(prefix);
    if (family === 0 || extra !== undefined || !/^\d{0,3}$/.test(prefix ?? '') || !(bits >= 0 && bits <= (family === 6 ? 128 : 32))) {
      throw new Error(`${JSON.stringify(entry)} is not an IP address or CIDR range such as 10.0.0.0/8 or ::1`);
    }
    list.addSubnet(address, bits, family === 6 ? 'ipv6' : 'ipv4');
  }
  return list;
}

/** Seconds a refused subscriber is told to wait: a slot frees only when someone disconnects. */
export const SUBSCRIBER_RETRY_AFTER = 5;

/**
 * The client address a request is accounted to.
 *
 * With `trustProxy` = n, the n-th `X-Forwarded-For` entry from the right is
 * used: each trusted proxy appends the address it received the request from,
 * so entries to the left of those are whatever the client chose to send and
 * are never trusted. With fewer entries than n, the left-most one is used.
 */
export function clientAddress(req: IncomingMessage, trustProxy: number): string {
  let addr = req.socket.remoteAddress ?? 'unknown';
  if (trustProxy > 0) {
    const header = req.headers['x-forwarded-for'];
    const value = Array.isArray(header) ? header.join(',') : header;
    if (value) {
      const entries = value.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
      if (entries.length > 0) addr = entries[Math.max(0, entries.length - trustProxy)];
    }
  }
  return normalizeAddress(addr);
}

/** Strips what proxies and dual-stack sockets add: `::ffff:` on IPv4, brackets, ports. */
export function normalizeAddress(addr: string): string {
  if (addr.startsWith('::ffff:') && addr.includes('.')) return addr.slice(7);
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(addr);
  if (bracketed) return bracketed[1];
  if (/^\d+\.\d+\.\d+\.\d+:\d+$/.test(addr)) return addr.slice(0, addr.lastIndexOf(':'));
  return addr.slice(0, 64);
}

/**
 * What limits are keyed by: an IPv4 address, or the /64 network of an IPv6
 * address (one host usually holds a whole /64, so per-address limits on IPv6
 * would be free to dodge).
 */
export function addressKey(addr: string): string {
  if (!isIPv6(addr)) return addr;
  return expandIPv6(addr).slice(0, 4).join(':') + '::/64';
}

function expandIPv6(addr: string): string[] {
  const zone = addr.indexOf('%');
  if (zone !== -1) addr = addr.slice(0, zone);
  const [head, tail] = addr.includes('::') ? addr.split('::') : [addr, undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  // An embedded IPv4 tail counts as two groups.
  const size = (parts: string[]) => parts.reduce((n, p) => n + (p.includes('.') ? 2 : 1), 0);
  const fill = tail === undefined ? [] : new Array<string>(Math.max(0, 8 - size(left) - size(right))).fill('0');
  return [...left, ...fill, ...right].map((g) => (g.includes('.') ? g : (parseInt(g, 16) || 0).toString(16)));
}

interface Bucket {
  tokens: number;
  last: number;
}

/** Buckets kept at most; past this the least recently used are dropped (they only forget a debt). */
const MAX_BUCKETS = 100_000;
const SWEEP_EVERY_MS = 10_000;

/** A token bucket per key: `rate` tokens per second, holding at most `burst`. */
export class RateLimiter {
  readonly rate: number;
  readonly burst: number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #maxBuckets: number;
  #lastSweep = 0;

  constructor(rate: number, burst = rate, maxBuckets = MAX_BUCKETS) {
    this.rate = rate;
    this.burst = Math.max(1, burst);
    this.#maxBuckets = maxBuckets;
  }

  get size(): number {
    return this.#buckets.size;
  }

  /** Takes one token for `key`: 0 if allowed, otherwise the whole seconds to wait. */
  take(key: string, now = performance.now()): number {
    if (now - this.#lastSweep > SWEEP_EVERY_MS) this.sweep(now);
    let bucket = this.#buckets.get(key);
    if (bucket) {
      bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.last) / 1000) * this.rate);
      bucket.last = now;
      // Re-inserted so the map's order is least recently used first.
      this.#buckets.delete(key);
    } else {
      bucket = { tokens: this.burst, last: now };
      if (this.#buckets.size >= this.#maxBuckets) this.#buckets.delete(this.#buckets.keys().next().value as string);
    }
    this.#buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.rate));
  }

  /** Drops buckets that have refilled: they hold no state worth keeping. */
  sweep(now = performance.now()): void {
    this.#lastSweep = now;
    const full = (this.burst * 1000) / this.rate;
    for (const [key, b] of this.#buckets) {
      if (now - b.last >= full) this.#buckets.delete(key);
    }
  }
}

/** A subscriber's place under the limits, held until its connection ends. */
export interface Slot {
  /** Gives the place back; calling it twice is harmless. */
  release(): void;
}

/** What a Slot gives back to. */
interface SlotOwner {
  subscriberLeft(key: string | undefined): void;
}

/** An object rather than a closure: one small allocation per subscriber, of thousands. */
class SubscriberSlot implements Slot {
  readonly #owner: SlotOwner;
  readonly #key: string | undefined;
  #released = false;

  constructor(owner: SlotOwner, key: string | undefined) {
    this.#owner = owner;
    this.#key = key;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#owner.subscriberLeft(this.#key);
  }
}

/** One fewer held under `key`; a key at zero is forgotten, so the map stays bounded by what is held. */
function decrement(counts: Map<string, number>, key: string): void {
  const n = (counts.get(key) ?? 1) - 1;
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
}

/** What a refusal by a limit says: which limit, and when to come back. */
function refusal(status: number, retryAfter: number, message: string): HttpError {
  return new HttpError(status, message, { 'retry-after': String(retryAfter) });
}

/** The server's limits, shared by the HTTP (publish, SSE) and WebSocket transports. */
export class Limits implements SlotOwner {
  readonly config: LimitsConfig;
  readonly #rate: RateLimiter | undefined;
  readonly #exempt: BlockList;
  readonly #perAddress = new Map<string, number>();
  /**
   * Without a trusted proxy the client address is the socket's, so whether it
   * is exempt (a BlockList lookup) and its key are decided once per
   * connection rather than per publish. Null: exempt.
   */
  readonly #byConnection = new WeakMap<Socket, string | null>();
  readonly #connections = new Map<string, number>();
  /** Connections counted in #connections, uncounted by socketClosed. */
  readonly #counted = new WeakSet<Socket>();
  /** Subscriber slots held until their socket closes (socketClosed): almost always one. */
  readonly #slotsBySocket = new WeakMap<Socket, Slot | Slot[]>();
  /** Connections past --max-connections-per-ip: answered 429 at their first request. */
  readonly #overLimit = new WeakSet<Socket>();
  #subscriptions = 0;
  #bodyInFlight = 0;

  constructor(config: LimitsConfig) {
    this.config = config;
    this.#rate = config.rateLimit > 0 ? new RateLimiter(config.rateLimit, config.rateLimitBurst) : undefined;
    this.#exempt = exemptList(config.limitExempt);
  }

  /** Publish body bytes being received now (reserved by publishes in progress). */
  get bodyInFlight(): number {
    return this.#bodyInFlight;
  }

  /**
   * Reserves `bytes` of the server-wide body budget; false (nothing reserved)
   * when that would pass --max-body-in-flight.
   */
  reserveBody(bytes: number): boolean {
    const max = this.config.maxBodyInFlight;
    if (max > 0 && this.#bodyInFlight + bytes > max) return false;
    this.#bodyInFlight += bytes;
    return true;
  }

  releaseBody(bytes: number): void {
    this.#bodyInFlight -= bytes;
  }

  /** The refusal of a request on a connection past --max-connections-per-ip, if it is one. */
  connectionRefusal(socket: Socket): HttpError | undefined {
    if (!this.#overLimit.has(socket)) return undefined;
    return refusal(Status.TOO_MANY_REQUESTS, SUBSCRIBER_RETRY_AFTER, `this address already holds ${this.config.maxConnectionsPerIp} connections (--max-connections-per-ip)`);
  }

  /**
   * Counts a new TCP connection against its address, until it closes. Keyed by
   * the socket's own address: behind --trust-proxy every connection comes from
   * the proxy, so the limit is not applied there.
   */
  trackConnection(socket: Socket): void {
    const max = this.config.maxConnectionsPerIp;
    if (max === 0 || this.config.trustProxy > 0) return;
    const key = this.#socketKey(socket);
    if (key === null) return;
    const held = this.#connections.get(key) ?? 0;
    if (held >= max) {
      this.#overLimit.add(socket);
      return;
    }
    this.#connections.set(key, held + 1);
    this.#counted.add(socket);
  }

  /**
   * Gives `slot` back when `socket` closes. A subscriber's connection closes
   * with its stream; one connection can hold more than one slot only when a
   * client pipelines, and then all are given back.
   */
  releaseOnClose(socket: Socket, slot: Slot): void {
    const held = this.#slotsBySocket.get(socket);
    if (held === undefined) this.#slotsBySocket.set(socket, slot);
    else if (Array.isArray(held)) held.push(slot);
    else this.#slotsBySocket.set(socket, [held, slot]);
  }

  /**
   * A connection closed: its count and any slot it held are given back. The
   * server's one close listener per connection calls this, so limits add no
   * listener (and no closure) of their own to each of thousands of sockets.
   */
  socketClosed(socket: Socket): void {
    const held = this.#slotsBySocket.get(socket);
    if (held !== undefined) {
      this.#slotsBySocket.delete(socket);
      for (const slot of Array.isArray(held) ? held : [held]) slot.release();
    }
    if (!this.#counted.delete(socket)) return;
    const key = this.#byConnection.get(socket);
    if (typeof key === 'string') decrement(this.#connections, key);
  }

  /** Concurrent subscribers admitted and not yet released. */
  get subscriptions(): number {
    return this.#subscriptions;
  }

  /** Addresses holding at least one subscriber (bounded by connections). */
  get subscriberAddresses(): number {
    return this.#perAddress.size;
  }

  /** The key a request's per-address limits are counted under; undefined when its client is exempt. */
  address(req: IncomingMessage): string | undefined {
    if (this.config.trustProxy > 0) return this.#keyOf(clientAddress(req, this.config.trustProxy)) ?? undefined;
    return this.#socketKey(req.socket) ?? undefined;
  }

  /** The key of a connection's own address, decided at its first use (trackConnection or its first request). */
  #socketKey(socket: Socket): string | null {
    let key = this.#byConnection.get(socket);
    if (key === undefined) {
      key = this.#keyOf(normalizeAddress(socket.remoteAddress ?? 'unknown'));
      this.#byConnection.set(socket, key);
    }
    return key;
  }

  #keyOf(addr: string): string | null {
    const family = isIP(addr);
    if (family !== 0 && this.#exempt.check(addr, family === 6 ? 'ipv6' : 'ipv4')) return null;
    return addressKey(addr);
  }

  /** Counts one publish against its client's rate; undefined when it may go ahead. */
  publish(req: IncomingMessage): HttpError | undefined {
    const rate = this.#rate;
    if (!rate) return undefined;
    const key = this.address(req);
    if (key === undefined) return undefined;
    const wait = rate.take(key);
    if (wait === 0) return undefined;
    return refusal(Status.TOO_MANY_REQUESTS, wait, `this address is over the publish rate limit of ${rate.rate} per second (--rate-limit, burst ${rate.burst})`);
  }

  /**
   * Admits one subscriber, or says why not. The caller must call `release`
   * exactly when the subscriber's connection ends (calling it twice is harmless).
   */
  admitSubscriber(req: IncomingMessage): Slot | HttpError {
    const { maxSubscriptions, maxSubscribersPerIp } = this.config;
    if (maxSubscriptions > 0 && this.#subscriptions >= maxSubscriptions) {
      return refusal(Status.SERVICE_UNAVAILABLE, SUBSCRIBER_RETRY_AFTER, `this server already holds its maximum of ${maxSubscriptions} subscriptions (--max-subscriptions)`);
    }
    const key = maxSubscribersPerIp > 0 ? this.address(req) : undefined;
    const held = key === undefined ? 0 : (this.#perAddress.get(key) ?? 0);
    if (key !== undefined && held >= maxSubscribersPerIp) {
      return refusal(Status.TOO_MANY_REQUESTS, SUBSCRIBER_RETRY_AFTER, `this address already holds ${held} subscribers (--max-subscribers-per-ip ${maxSubscribersPerIp})`);
    }
    if (key !== undefined) this.#perAddress.set(key, held + 1);
    this.#subscriptions++;
    return new SubscriberSlot(this, key);
  }

  /** A slot was released (SubscriberSlot.release, once per slot). */
  subscriberLeft(key: string | undefined): void {
    this.#subscriptions--;
    if (key !== undefined) decrement(this.#perAddress, key);
  }
}
