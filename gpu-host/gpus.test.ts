import { describe, expect, it } from 'vitest'
import { parseNvidiaSmi, pickSlot, slotsFor } from './gpus.ts'

const SMI = `0, GPU-aaaa, NVIDIA H100 80GB HBM3, 70000, 81559, 90
1, GPU-bbbb, NVIDIA H100 80GB HBM3, 1000, 81559, 0
2, GPU-cccc, NVIDIA H100 80GB HBM3, [N/A], 81559, [N/A]`

describe('nvidia-smi readings', () => {
  it('parses the CSV, tolerating [N/A]', () => {
    const g = parseNvidiaSmi(SMI)
    expect(g.map((x) => [x.index, x.uuid, x.memoryUsedMb, x.memoryTotalMb, x.utilizationPct])).toEqual([
      [0, 'GPU-aaaa', 70000, 81559, 90],
      [1, 'GPU-bbbb', 1000, 81559, 0],
      [2, 'GPU-cccc', 0, 81559, null],
    ])
  })

  it('makes one slot per GPU pinned by UUID, or virtual slots without one', () => {
    expect(slotsFor(parseNvidiaSmi(SMI), 4).map((s) => s.cudaVisibleDevices)).toEqual([
      'GPU-aaaa',
      'GPU-bbbb',
      'GPU-cccc',
    ])
    expect(slotsFor(null, 3).map((s) => [s.id, s.cudaVisibleDevices])).toEqual([
      [0, undefined],
      [1, undefined],
      [2, undefined],
    ])
  })
})

describe('VRAM-aware slot choice', () => {
  const readings = parseNvidiaSmi(SMI)
  it('takes the free GPU with the most free memory', () => {
    const slots = slotsFor(readings, 1)
    const pick = pickSlot(slots, readings, 12_000)
    expect('slot' in pick && pick.slot.gpu.uuid).toBe('GPU-cccc')
  })

  it('waits when no free GPU has enough memory', () => {
    const slots = slotsFor(readings, 1)
    for (const s of slots) if (s.gpu.uuid !== 'GPU-aaaa') s.busy = true
    expect(pickSlot(slots, readings, 12_000)).toEqual({ noRoom: true, bestFreeMb: 11_559 })
    expect('slot' in pickSlot(slots, readings, 10_000)).toBe(true)
  })

  it('uses any free slot without readings, and says when none is free', () => {
    const slots = slotsFor(null, 2)
    expect('slot' in pickSlot(slots, null, 100_000)).toBe(true)
    for (const s of slots) s.busy = true
    expect(pickSlot(slots, null, 1)).toEqual({ none: true })
  })
})
