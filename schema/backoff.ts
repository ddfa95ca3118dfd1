/** How a retried operation waits between tries: doubling from `baseMs` up to `maxMs`. */
export interface BackoffPolicy {
  baseMs: number
  maxMs: number
  /**
   * Share of the delay drawn at random, so that clients failing together do not retry together:
   * 0.5 waits between half and all of the delay. Default 0 (exact delays).
   */
  jitter?: number
}

/**
 * The wait before retry number `failures` (1 after the first failure): `baseMs * 2^(failures-1)`,
 * at most `maxMs`, less a random share of up to `jitter`. The one backoff formula of the project.
 *
 * @example backoffDelay(3, { baseMs: 200, maxMs: 5000 }) // 800
 */
export function backoffDelay(
  failures: number,
  policy: BackoffPolicy,
  random: () => number = Math.random,
): number {
  const { baseMs, maxMs, jitter = 0 } = policy
  const exact = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(failures - 1, 0), 40))
  return Math.round(exact * (1 - jitter * random()))
}
