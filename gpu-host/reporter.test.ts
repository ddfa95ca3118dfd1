import { describe, expect, it } from 'vitest'
import { progressMilestones } from './reporter.ts'

describe('progressMilestones', () => {
  it('one line per quarter passed, once each, with the message at that point', () => {
    const seen: [number, string][] = []
    const m = progressMilestones((pct, msg) => seen.push([pct, msg]))
    for (const [pct, msg] of [
      [5, 'a'],
      [24.9, 'b'],
      [25, 'c'],
      [30, 'd'],
      [80, 'e'],
      [100, 'f'],
      [100, 'g'],
    ] as const)
      m.reached(pct, msg)
    // 80 passes 50 and 75 at once: one line, for the highest; 100 is the end line's, not a milestone.
    expect(seen).toEqual([
      [25, 'c'],
      [75, 'e'],
    ])
  })
})
