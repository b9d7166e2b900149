/**
 * Reconnect and retry delays: exponential, capped, with jitter so that many
 * clients cut off together do not come back together.
 */

export interface Backoff {
  /** Ceiling of the first delay (attempt 0). */
  minMs: number;
  /** Largest delay. */
  maxMs: number;
  /**
   * Share of the delay that is random: 1 is "full jitter" (uniform in
   * [0, ceiling]), 0.5 keeps at least half the ceiling (so retries never bunch
   * up at zero), 0 none.
   */
  jitter?: number;
}

/** The delay before retry `attempt` (0-based): min·2^attempt capped at max, minus its jitter. */
export function backoffDelay(attempt: number, backoff: Backoff, random: () => number = Math.random): number {
  const ceiling = Math.min(backoff.maxMs, backoff.minMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.round(ceiling * (1 - (backoff.jitter ?? 1) * random()));
}
