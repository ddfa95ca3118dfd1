import { describe, expect, it } from 'vitest'
import { backoffDelay } from './backoff.ts'

describe('backoffDelay', () => {
  it('doubles from the base and stops at the cap', () => {
    const p = { baseMs: 200, maxMs: 5000 }
    expect([1, 2, 3, 4, 5, 6, 100].map((n) => backoffDelay(n, p))).toEqual([
      200, 400, 800, 1600, 3200, 5000, 5000,
    ])
  })
  it('takes a random share of up to `jitter` off the delay', () => {
    const p = { baseMs: 1000, maxMs: 60_000, jitter: 0.5 }
    expect(backoffDelay(1, p, () => 0)).toBe(1000)
    expect(backoffDelay(1, p, () => 1)).toBe(500)
    expect(backoffDelay(2, p, () => 0.5)).toBe(1500)
  })
  it('treats 0 and negative failure counts as the first', () => {
    expect(backoffDelay(0, { baseMs: 100, maxMs: 1000 })).toBe(100)
  })
})
