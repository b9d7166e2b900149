/**
 * Prometheus metrics on the server's own registry.
 *
 * The hot path costs one increment of a pre-made child counter (no label
 * lookups per publish); everything the broker and transports already count
 * (connections, deliveries, drops, history) is read at scrape time instead.
 * No metric carries a topic name: topics are unbounded, and unsafe topic names
 * are chosen by anonymous clients.
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { Broker } from '../broker.js';
import { safeEqual } from '../../util/safe-equal.js';

/** Why a publish was refused; a fixed set so the label stays bounded. */
export type RejectReason = 'unauthorized' | 'too_large' | 'bad_request' | 'unavailable' | 'rate_limited' | 'timeout' | 'error';
export const REJECT_REASONS: readonly RejectReason[] = ['unauthorized', 'too_large', 'bad_request', 'unavailable', 'rate_limited', 'timeout', 'error'];

export type TransportName = 'ws' | 'sse';
export type SubscriberRefusal = 'per_ip_limit' | 'server_limit';

export interface MetricsSources {
  broker: Broker;
  /** Connected subscribers per transport, read at scrape time. */
  subscribers(): Record<TransportName, number>;
  /** Publish body bytes being received now (--max-body-in-flight), read at scrape time. */
  bodyInFlight?(): number;
}

/** How long a scrape waits for the backend's history sizes (Redis may be slow or down). */
const HISTORY_TIMEOUT_MS = 2000;

export class Metrics {
  readonly registry = new Registry();
  readonly #token: string | undefined;
  readonly #accepted: Counter.Internal;
  readonly #rejected = new Map<RejectReason, Counter.Internal>();
  #acceptedCount = 0;
  #acceptedSynced = 0;
  #bytesInCount = 0;
  readonly #fanout: PlainHistogram;
  readonly #refused: Counter<'transport' | 'reason'>;
  readonly #router: Counter<'router' | 'result'>;
  #bytesOut = 0;
  #history: Promise<void> | undefined;

  constructor(sources: MetricsSources, token?: string) {
    this.#token = token || undefined;
    const { broker } = sources;
    const registers = [this.registry];

    new Gauge({
      name: 'hookbot_subscribers',
      help: 'Connected subscribers, by transport.',
      labelNames: ['transport'],
      registers,
      collect() {
        const n = sources.subscribers();
        for (const t of ['ws', 'sse'] as const) this.labels(t).set(n[t]);
      },
    });
    new Gauge({
      name: 'hookbot_publish_body_bytes_in_flight',
      help: 'Publish body bytes being received right now (bounded by --max-body-in-flight).',
      registers,
      collect() {
        this.set(sources.bodyInFlight?.() ?? 0);
      },
    });
    new Gauge({
      name: 'hookbot_subscriptions',
      help: 'Subscriptions in the broker (transport subscribers, resuming ones and in-server routers).',
      registers,
      collect() {
        this.set(broker.subscriptions);
      },
    });

    // prom-client calls collect() with the metric as `this`; the counts live on this Metrics.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    const publishes = new Counter({
      name: 'hookbot_publishes_total',
      help: 'Publish requests by result; rejected ones by reason.',
      labelNames: ['result', 'reason'],
      registers,
      collect() {
        // Accepted publishes are counted in a plain field on the hot path and synced here.
        self.#accepted.inc(self.#acceptedCount - self.#acceptedSynced);
        self.#acceptedSynced = self.#acceptedCount;
      },
    });
    this.#accepted = publishes.labels({ result: 'accepted' });
    for (const reason of REJECT_REASONS) this.#rejected.set(reason, publishes.labels({ result: 'rejected', reason }));
    // inc(0) makes every series exist from the start, so rate() works on the first rejection too.
    this.#accepted.inc(0);
    for (const child of this.#rejected.values()) child.inc(0);

    scraped(registers, 'hookbot_publish_bytes_total', 'Body bytes of accepted publishes (as received).', () => this.#bytesInCount);

    scraped(registers, 'hookbot_deliveries_total', 'Messages handed to subscribers (live and replayed from history).', () => broker.stats.deliveries);
    scraped(registers, 'hookbot_delivery_bytes_total', 'Body bytes of live deliveries: body size × matching subscribers (framing and replays not counted).', () => this.#bytesOut);
    scraped(registers, 'hookbot_drops_total', 'Messages a subscriber could not take (slow consumer, or replay overflow).', () => broker.stats.drops);
    scraped(registers, 'hookbot_slow_consumer_disconnects_total', 'Subscribers disconnected for falling behind (--max-subscriber-buffer).', () => broker.stats.slowDisconnects);

    broker.onDispatch((m, delivered) => {
      this.#bytesOut += m.body.length * delivered;
    });

    this.#refused = new Counter({
      name: 'hookbot_subscribers_refused_total',
      help: 'Subscribe attempts refused by a limit, by transport and limit.',
      labelNames: ['transport', 'reason'],
      registers,
    });
    for (const transport of ['ws', 'sse'] as const) for (const reason of ['per_ip_limit', 'server_limit'] as const) this.#refused.labels(transport, reason).inc(0);

    this.#router = new Counter({
      name: 'hookbot_router_verifications_total',
      help: 'Deliveries an in-server router checked, by router and result (ok: signature/token verified; failed: dropped).',
      labelNames: ['router', 'result'],
      registers,
    });

    this.#fanout = new PlainHistogram(
      'hookbot_publish_fanout_seconds',
      'From the start of a publish request to the message handed to every subscriber on this node.',
      [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    );
    this.registry.registerMetric(this.#fanout as unknown as Parameters<Registry['registerMetric']>[0]);

    // One backend read fills all three history gauges; each gauge waits for it, and concurrent scrapes share it.
    const history = { messages: 0, bytes: 0, topics: 0 };
    const refresh = (): Promise<void> =>
      (this.#history ??= this.#readHistory(broker, history).finally(() => {
        this.#history = undefined;
      }));
    for (const [name, help, key] of [
      ['hookbot_history_messages', 'Messages retained in history, all topics.', 'messages'],
      ['hookbot_history_bytes', 'Body bytes retained in history, all topics.', 'bytes'],
      ['hookbot_history_topics', 'Topics with retained history.', 'topics'],
    ] as const) {
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          await refresh();
          this.set(history[key]);
        },
      });
    }

    collectDefaultMetrics({ register: this.registry });
  }

  async #readHistory(broker: Broker, into: { messages: number; bytes: number; topics: number }): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const list = await Promise.race([
        broker.backend.historyTopics(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('timeout')), HISTORY_TIMEOUT_MS);
        }),
      ]);
      let m = 0;
      let b = 0;
      for (const t of list) {
        m += t.messages;
        b += t.bytes;
      }
      into.messages = m;
      into.bytes = b;
      into.topics = list.length;
    } catch {
      // Backend unreachable: keep the last values rather than fail the scrape.
    } finally {
      clearTimeout(timer);
    }
  }

  /** An accepted publish: `bytes` as received, `startedAt` from performance.now() at the request's start. */
  publishAccepted(bytes: number, startedAt: number): void {
    this.#acceptedCount++;
    this.#bytesInCount += bytes;
    this.#fanout.observe((performance.now() - startedAt) / 1000);
  }

  publishRejected(reason: RejectReason): void {
    this.#rejected.get(reason)!.inc();
  }

  subscriberRefused(transport: TransportName, reason: SubscriberRefusal): void {
    this.#refused.labels(transport, reason).inc();
  }

  /** Called by in-server routers once per delivery they checked. */
  routerVerification(router: string, result: 'ok' | 'failed'): void {
    this.#router.labels(router, result).inc();
  }

  /** Whether an Authorization header may read /metrics (always, when no --metrics-token is set). */
  authorize(authorization: string | undefined): boolean {
    if (!this.#token) return true;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) return false;
    return safeEqual(m[1], this.#token);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}

/** A counter whose value is a running total kept elsewhere, read at scrape time. */
function scraped(registers: Registry[], name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers,
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/**
 * A Prometheus histogram kept in a plain array: observe() is a short loop
 * over the bounds, with no label hashing, because it runs on every publish.
 * Registered on a prom-client Registry as a custom metric (name/help/type/get).
 */
class PlainHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #bounds: number[];
  readonly #counts: Float64Array;
  #sum = 0;
  #count = 0;

  constructor(name: string, help: string, bounds: number[]) {
    this.name = name;
    this.help = help;
    this.#bounds = bounds;
    this.#counts = new Float64Array(bounds.length);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]) {
        this.#counts[i]++;
        break;
      }
    }
    this.#sum += value;
    this.#count++;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: Array<{ labels: Record<string, string | number>; value: number; metricName: string }> } {
    const values: Array<{ labels: Record<string, string | number>; value: number; metricName: string }> = [];
    let cumulative = 0;
    for (let i = 0; i < this.#bounds.length; i++) {
      cumulative += this.#counts[i];
      values.push({ labels: { le: this.#bounds[i] }, value: cumulative, metricName: `${this.name}_bucket` });
    }
    values.push({ labels: { le: '+Inf' }, value: this.#count, metricName: `${this.name}_bucket` });
    values.push({ labels: {}, value: this.#sum, metricName: `${this.name}_sum` });
    values.push({ labels: {}, value: this.#count, metricName: `${this.name}_count` });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#counts.fill(0);
    this.#sum = 0;
    this.#count = 0;
  }
}
