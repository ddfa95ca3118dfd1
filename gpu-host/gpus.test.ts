import { describe, expect, it } from 'vitest'
import {
  migMemoryMb,
  parseComputeApps,
  parseGpuList,
  parseMigDevices,
  parseNvidiaSmi,
  physicalUuid,
  slotsFor,
} from './gpus.ts'

const SMI = `0, GPU-aaaa, NVIDIA H100 80GB HBM3, 70000, 81559, 90
1, GPU-bbbb, NVIDIA H100 80GB HBM3, 1000, 81559, 0
2, GPU-cccc, NVIDIA H100 80GB HBM3, [N/A], 81559, [N/A]`

// The same query without `nounits`.
const SMI_UNITS = `0, GPU-aaaa, NVIDIA H100 80GB HBM3, 70000 MiB, 81559 MiB, 90 %
1, GPU-bbbb, NVIDIA H100 80GB HBM3, 1000 MiB, 81559 MiB, 0 %
2, GPU-cccc, NVIDIA H100 80GB HBM3, [N/A], 81559 MiB, [Not Supported]`

const LIST = `GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)
  MIG 1g.18gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
  MIG 3g.71gb     Device  1: (UUID: MIG-ffffffff-0000-1111-2222-333333333333)
GPU 1: NVIDIA H200 (UUID: GPU-66666666-7777-8888-9999-000000000000)
`

describe('nvidia-smi readings', () => {
  it('parses the CSV with and without units, tolerating [N/A] and [Not Supported]', () => {
    const rows = (csv: string) =>
      parseNvidiaSmi(csv).map((x) => [x.index, x.uuid, x.memoryUsedMb, x.memoryTotalMb, x.utilizationPct])
    const expected = [
      [0, 'GPU-aaaa', 70000, 81559, 90],
      [1, 'GPU-bbbb', 1000, 81559, 0],
      [2, 'GPU-cccc', 0, 81559, null],
    ]
    expect(rows(SMI)).toEqual(expected)
    expect(rows(SMI_UNITS)).toEqual(expected)
  })

  it('parses the compute processes with and without units; none is an empty list', () => {
    expect(parseComputeApps('4242, GPU-aaaa, 30000\n77, GPU-bbbb, 512 MiB\n')).toEqual([
      { pid: 4242, gpuUuid: 'GPU-aaaa', usedMb: 30000 },
      { pid: 77, gpuUuid: 'GPU-bbbb', usedMb: 512 },
    ])
    expect(parseComputeApps('')).toEqual([])
  })

  it('parses nvidia-smi -L with MIG instances under their GPU', () => {
    expect(parseGpuList(LIST)).toEqual([
      {
        index: 0,
        name: 'NVIDIA H200',
        uuid: 'GPU-11111111-2222-3333-4444-555555555555',
        mig: [
          { profile: '1g.18gb', device: 0, uuid: 'MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee' },
          { profile: '3g.71gb', device: 1, uuid: 'MIG-ffffffff-0000-1111-2222-333333333333' },
        ],
      },
      { index: 1, name: 'NVIDIA H200', uuid: 'GPU-66666666-7777-8888-9999-000000000000', mig: [] },
    ])
  })

  it('reads the GPU instance id of each MIG device from the plain table, none without MIG', () => {
    const table = [
      '| GPU  GI  CI  MIG |         Memory-Usage |        Vol|         Shared        |',
      '|      ID  ID  Dev |           BAR1-Usage | SM     Unc| CE  ENC  DEC  OFA  JPG|',
      '|==================+======================+===========+=======================|',
      '|  0    1   0   0  |     19MiB / 40192MiB | 60      0 |  3   0    3    0    3 |',
      '|                  |      0MiB / 65535MiB |           |                       |',
      '|  0   13   0   1  |     11MiB /  9984MiB | 16      0 |  1   0    1    0    1 |',
      '|  1    2   0   0  |              12MiB /  9984MiB  | 16      0 |  1   0    1    0    1 |',
    ].join('\n')
    expect([...parseMigDevices(table)]).toEqual([
      ['0/0', 1],
      ['0/1', 13],
      ['1/0', 2],
    ])
    expect(parseMigDevices('|  No MIG devices found                    |').size).toBe(0)
  })

  it('reads a MIG profile’s memory as 10^9 bytes per GB, never more than it has', () => {
    expect(migMemoryMb('1g.18gb')).toBe(17_166)
    expect(migMemoryMb('7g.141gb')).toBe(134_468)
    expect(migMemoryMb('odd')).toBe(0)
  })
})

describe('devices', () => {
  it('makes one slot per GPU pinned by UUID, or virtual slots without one', () => {
    expect(slotsFor(parseNvidiaSmi(SMI), 4).map((s) => s.cudaVisibleDevices)).toEqual([
      'GPU-aaaa',
      'GPU-bbbb',
      'GPU-cccc',
    ])
    expect(slotsFor(null, 3).map((s) => [s.id, s.cudaVisibleDevices, s.gpu.vramTotalMb])).toEqual([
      [0, undefined, null],
      [1, undefined, null],
      [2, undefined, null],
    ])
  })

  it('makes each MIG instance a device of its own, with its own memory and CUDA_VISIBLE_DEVICES', () => {
    const gpus = parseNvidiaSmi(
      '0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA H200, 0, 143771, 0\n1, GPU-66666666-7777-8888-9999-000000000000, NVIDIA H200, 0, 143771, 0',
    )
    const slots = slotsFor(gpus, 1, parseGpuList(LIST))
    expect(
      slots.map((s) => [
        s.id,
        s.gpu.index,
        s.cudaVisibleDevices,
        s.gpu.vramTotalMb,
        s.gpu.name,
        physicalUuid(s),
      ]),
    ).toEqual([
      [
        0,
        0,
        'MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee',
        17_166,
        'NVIDIA H200 MIG 1g.18gb',
        'GPU-11111111-2222-3333-4444-555555555555',
      ],
      [
        1,
        0,
        'MIG-ffffffff-0000-1111-2222-333333333333',
        67_710,
        'NVIDIA H200 MIG 3g.71gb',
        'GPU-11111111-2222-3333-4444-555555555555',
      ],
      [
        2,
        1,
        'GPU-66666666-7777-8888-9999-000000000000',
        143_771,
        'NVIDIA H200',
        'GPU-66666666-7777-8888-9999-000000000000',
      ],
    ])
  })
})
