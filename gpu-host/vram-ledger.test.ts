import { describe, expect, it } from 'vitest'
import { type GpuRequest, VramLedger } from './vram-ledger.ts'

const need = (vramMb: number, exclusive = false): GpuRequest => ({ vramMb, exclusive })

/** Places and reserves like the host does; returns the device or what `place` said. */
const start = (ledger: VramLedger, jobId: string, req: GpuRequest, avoid?: number) => {
  const p = ledger.place(req, avoid)
  if ('device' in p) ledger.reserve(jobId, p.device, req)
  return p
}

describe('VramLedger', () => {
  it('packs one large GPU by VRAM up to MAX_JOBS_PER_GPU', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 143_771 }], 4)
    for (const id of ['a', 'b', 'c', 'd']) expect(start(ledger, id, need(8_000))).toEqual({ device: 0 })
    expect(ledger.usage(0)).toMatchObject({ jobs: 4, reservedMb: 32_000, freeMb: 111_771 })
    // Room for many more by memory, but the cap says four.
    expect(start(ledger, 'e', need(8_000))).toEqual({ wait: true })
    ledger.release('a')
    expect(start(ledger, 'e', need(8_000))).toEqual({ device: 0 })
  })

  it('admits nothing beyond the memory, however high the cap', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 40_000 }], 64)
    expect(start(ledger, 'a', need(16_000))).toEqual({ device: 0 })
    expect(start(ledger, 'b', need(16_000))).toEqual({ device: 0 })
    expect(start(ledger, 'c', need(16_000))).toEqual({ wait: true })
    expect(start(ledger, 'c', need(8_000))).toEqual({ device: 0 })
    expect(ledger.usage(0).freeMb).toBe(0)
  })

  it('spreads jobs over GPUs, the one with the most free memory first', () => {
    const ledger = new VramLedger(
      [
        { id: 0, totalMb: 81_559 },
        { id: 1, totalMb: 81_559 },
      ],
      4,
    )
    expect(['a', 'b', 'c', 'd'].map((id) => start(ledger, id, need(12_000)))).toEqual([
      { device: 0 },
      { device: 1 },
      { device: 0 },
      { device: 1 },
    ])
  })

  it('counts what other processes use, from the reading', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 81_559 }], 4)
    ledger.observe(0, 78_000)
    expect(ledger.usage(0)).toMatchObject({ otherMb: 78_000, freeMb: 3_559 })
    expect(start(ledger, 'a', need(8_000))).toEqual({ wait: true })
    ledger.observe(0, 20_000)
    expect(start(ledger, 'a', need(8_000))).toEqual({ device: 0 })
  })

  it('keeps a job’s reservation while the reading has not caught up with its allocations', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 24_000 }], 4)
    expect(start(ledger, 'a', need(16_000))).toEqual({ device: 0 })
    // The job has allocated nothing yet: the reading shows the GPU empty, the reservation still holds.
    ledger.observe(0, 0)
    expect(ledger.usage(0)).toMatchObject({ otherMb: 0, reservedMb: 16_000, freeMb: 8_000 })
    expect(start(ledger, 'b', need(10_000))).toEqual({ wait: true })
    // Its process now holds 6 GB of it; another process holds 3 GB: still 16 GB for the job.
    ledger.observe(0, 9_000, new Map([['a', 6_000]]))
    expect(ledger.usage(0)).toMatchObject({ otherMb: 3_000, reservedMb: 16_000, freeMb: 5_000 })
    // A job over its reservation holds what it uses.
    ledger.observe(0, 20_000, new Map([['a', 20_000]]))
    expect(ledger.usage(0)).toMatchObject({ otherMb: 0, reservedMb: 20_000, freeMb: 4_000 })
  })

  it('counts a released job’s memory that a late reading still shows as another process’s', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 24_000 }], 4)
    start(ledger, 'a', need(16_000))
    ledger.observe(0, 16_000, new Map([['a', 16_000]]))
    // Released once its process group is gone, and its memory with it.
    ledger.release('a')
    expect(ledger.usage(0)).toMatchObject({ jobs: 0, reservedMb: 0, freeMb: 24_000 })
    // A reading that lags the release: the memory is nobody's now, so another's.
    ledger.observe(0, 16_000)
    expect(ledger.usage(0).freeMb).toBe(8_000)
    ledger.observe(0, 0)
    expect(ledger.usage(0).freeMb).toBe(24_000)
  })

  it('gives an exclusive job an empty GPU and lets nothing share it', () => {
    const ledger = new VramLedger(
      [
        { id: 0, totalMb: 81_559 },
        { id: 1, totalMb: 81_559 },
      ],
      4,
    )
    expect(start(ledger, 'small', need(4_000))).toEqual({ device: 0 })
    expect(start(ledger, 'trainer', need(20_000, true))).toEqual({ device: 1 })
    expect(ledger.usage(1).exclusive).toBe(true)
    // Both GPUs have room by memory, but the second is the trainer's alone.
    expect(start(ledger, 'b', need(4_000))).toEqual({ device: 0 })
    expect(start(ledger, 'c', need(4_000))).toEqual({ device: 0 })
    expect(start(ledger, 'd', need(4_000))).toEqual({ device: 0 })
    expect(start(ledger, 'e', need(4_000))).toEqual({ wait: true })
    // A second exclusive job waits for a GPU with no job at all.
    expect(start(ledger, 'trainer2', need(1_000, true))).toEqual({ wait: true })
    for (const id of ['small', 'b', 'c', 'd']) ledger.release(id)
    expect(start(ledger, 'trainer2', need(1_000, true))).toEqual({ device: 0 })
  })

  it('says never when no device is large enough, and wait when one is but is busy', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 24_000 }], 4)
    expect(ledger.place(need(30_000))).toEqual({ never: true, largestMb: 24_000 })
    start(ledger, 'a', need(20_000))
    expect(ledger.place(need(20_000))).toEqual({ wait: true })
  })

  it('holds back the device a waiting job needs from the jobs after it', () => {
    const ledger = new VramLedger(
      [
        { id: 0, totalMb: 81_559 },
        { id: 1, totalMb: 81_559 },
      ],
      4,
    )
    start(ledger, 'a', need(50_000))
    start(ledger, 'b', need(60_000))
    const big = need(70_000)
    expect(ledger.place(big)).toEqual({ wait: true })
    const heldBack = ledger.heldBackFor(big)
    expect(heldBack).toBe(0)
    // A small job may still start, but not on the device the big one waits for.
    expect(start(ledger, 'c', need(10_000), heldBack)).toEqual({ device: 1 })
    ledger.release('a')
    expect(start(ledger, 'big', big)).toEqual({ device: 0 })
  })

  it('runs one job per virtual slot, with no memory check', () => {
    const ledger = new VramLedger(
      [
        { id: 0, totalMb: null },
        { id: 1, totalMb: null },
      ],
      4,
    )
    expect(start(ledger, 'a', need(500_000))).toEqual({ device: 0 })
    expect(start(ledger, 'b', need(1))).toEqual({ device: 1 })
    expect(start(ledger, 'c', need(1))).toEqual({ wait: true })
    expect(ledger.usage(0)).toMatchObject({ totalMb: null, freeMb: null, jobs: 1 })
  })

  it('refuses a second reservation for one job', () => {
    const ledger = new VramLedger([{ id: 0, totalMb: 1_000 }], 4)
    ledger.reserve('a', 0, need(10))
    expect(() => ledger.reserve('a', 0, need(10))).toThrow(/already/)
    expect(ledger.release('a')).toBe(true)
    expect(ledger.release('a')).toBe(false)
  })
})
