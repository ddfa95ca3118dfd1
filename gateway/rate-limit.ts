import { ApiError } from './errors.ts'

/**
 * Token buckets per API token: `rate` requests per second with bursts of `burst`. Buckets of idle tokens
 * are dropped so the map stays small.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>()

  constructor(
    private readonly rate: number,
    private readonly burst = rate * 2,
  ) {}

  /** Takes one request; returns 0 when allowed, else the seconds to wait before retrying. */
  take(key: string, now = Date.now()): number {
    const b = this.buckets.get(key) ?? { tokens: this.burst, at: now }
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate)
    b.at = now
    this.buckets.set(key, b)
    if (this.buckets.size > 10_000) this.prune(now)
    if (b.tokens >= 1) {
      b.tokens -= 1
      return 0
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.rate))
  }

  /** The seconds to wait before `key` may take one (0: now), without taking it. */
  wait(key: string, now = Date.now()): number {
    const b = this.buckets.get(key)
    if (!b) return 0
    const tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate)
    return tokens >= 1 ? 0 : Math.max(1, Math.ceil((1 - tokens) / this.rate))
  }

  private prune(now: number): void {
    for (const [key, b] of this.buckets) if (now - b.at > 60_000) this.buckets.delete(key)
  }
}

/** The refusal of a stream (WebSocket or SSE) over MAX_STREAMS_PER_TOKEN. */
export const tooManyStreams = (max: number): ApiError =>
  new ApiError(429, 'too_many_streams', `at most ${max} open streams per token`)

/** Counts open streams (WebSockets, SSE) per API token. */
export class StreamCounter {
  private readonly open = new Map<string, number>()
  constructor(private readonly max: number) {}

  /** Takes a slot for `key`; false when it has `max` open already. */
  acquire(key: string): boolean {
    const n = this.open.get(key) ?? 0
    if (n >= this.max) return false
    this.open.set(key, n + 1)
    return true
  }

  release(key: string): void {
    const n = (this.open.get(key) ?? 1) - 1
    if (n <= 0) this.open.delete(key)
    else this.open.set(key, n)
  }
}
