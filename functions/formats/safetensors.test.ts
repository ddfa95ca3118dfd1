import { describe, expect, it } from 'vitest'
import {
  encodeSafetensors,
  f16ToF32,
  f32ToF16,
  floatBytes,
  readSafetensors,
  SafetensorsFormatError,
  tensorValues,
} from './safetensors.ts'

const encode = (...args: Parameters<typeof encodeSafetensors>): Buffer =>
  Buffer.concat([...encodeSafetensors(...args)])

/** A file with a hand-written header, to feed the reader what our writer never makes. */
function rawFile(header: unknown, dataBytes: number): Buffer {
  const json = Buffer.from(JSON.stringify(header))
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(json.length))
  return Buffer.concat([prefix, json, Buffer.alloc(dataBytes)])
}

describe('safetensors', () => {
  it('round-trips tensors, metadata and values, with the data 8-byte aligned', () => {
    const file = encode(
      {
        'b.weight': { dtype: 'F32', shape: [2, 3], data: floatBytes('F32', 6, (i) => i / 2) },
        'a.weight': { dtype: 'F16', shape: [3], data: () => floatBytes('F16', 3, (i) => -i) },
        'c.alpha': { dtype: 'F16', shape: [], data: floatBytes('F16', 1, () => 8) },
        'd.empty': { dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) },
      },
      { format: 'pt', note: 'ünïcode ok' },
    )
    const parsed = readSafetensors(file)
    expect(parsed.dataStart % 8).toBe(0)
    expect(file.subarray(8, parsed.dataStart).toString('utf8')).toMatch(/^\{.*\} *$/)
    expect(parsed.metadata).toEqual({ format: 'pt', note: 'ünïcode ok' })
    // Laid out in name order, back to back.
    expect(parsed.tensors.get('a.weight')).toEqual({ dtype: 'F16', shape: [3], data_offsets: [0, 6] })
    expect(parsed.tensors.get('b.weight')).toEqual({ dtype: 'F32', shape: [2, 3], data_offsets: [6, 30] })
    expect(parsed.tensors.get('c.alpha')).toEqual({ dtype: 'F16', shape: [], data_offsets: [30, 32] })
    expect(parsed.tensors.get('d.empty')?.data_offsets).toEqual([32, 32])
    expect(tensorValues(file, parsed, 'a.weight')).toEqual([-0, -1, -2])
    expect(tensorValues(file, parsed, 'b.weight')).toEqual([0, 0.5, 1, 1.5, 2, 2.5])
    expect(tensorValues(file, parsed, 'c.alpha')).toEqual([8])
  })

  it('writes the layout the format specifies, read here without our reader', () => {
    // The spec (huggingface/safetensors): an u64 little-endian header length, a JSON header of
    // {name: {dtype, shape, data_offsets: [begin, end]}} plus an optional string map __metadata__, then the
    // data, the offsets relative to its start.
    const file = encode(
      {
        w: { dtype: 'F32', shape: [2, 2], data: floatBytes('F32', 4, (i) => i - 1.5) },
        h: { dtype: 'F16', shape: [3], data: floatBytes('F16', 3, (i) => [-1, -2, 8][i] ?? 0) },
      },
      { format: 'pt' },
    )
    const headerBytes = Number(file.readBigUInt64LE(0))
    const header = JSON.parse(file.subarray(8, 8 + headerBytes).toString('utf8')) as Record<
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] }
    > & { __metadata__?: Record<string, string> }
    const data = file.subarray(8 + headerBytes)
    const { __metadata__: metadata, ...tensors } = header
    expect(metadata).toEqual({ format: 'pt' })
    expect(Object.keys(tensors).sort()).toEqual(['h', 'w'])
    expect(tensors.w).toMatchObject({ dtype: 'F32', shape: [2, 2] })
    expect(tensors.h).toMatchObject({ dtype: 'F16', shape: [3] })
    const bytes = (name: 'h' | 'w') => data.subarray(...(tensors[name]?.data_offsets ?? [0, 0]))
    const w = bytes('w')
    expect(Array.from({ length: 4 }, (_, i) => w.readFloatLE(i * 4))).toEqual([-1.5, -0.5, 0.5, 1.5])
    // IEEE binary16 bit patterns of -1, -2 and 8.
    const h = bytes('h')
    expect(Array.from({ length: 3 }, (_, i) => h.readUInt16LE(i * 2))).toEqual([0xbc00, 0xc000, 0x4800])
    expect(Math.max(...Object.values(tensors).map((t) => t.data_offsets[1]))).toBe(data.length)
  })

  it('refuses a tensor whose bytes do not match its shape, and non-string metadata', () => {
    expect(() => encode({ x: { dtype: 'F32', shape: [2], data: new Uint8Array(4) } })).toThrow(/needs 8/)
    expect(() => encode({}, { n: 1 as unknown as string })).toThrow(/must be a string/)
  })

  it.each([
    ['a truncated file', Buffer.alloc(4), /shorter/],
    ['a header past the end', rawFile({}, 0).subarray(0, 9), /past the end/],
    [
      'a hole between tensors',
      rawFile({ a: { dtype: 'U8', shape: [2], data_offsets: [2, 4] } }, 4),
      /hole or overlap/,
    ],
    [
      'overlapping tensors',
      rawFile(
        {
          a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
          b: { dtype: 'U8', shape: [2], data_offsets: [1, 3] },
        },
        3,
      ),
      /hole or overlap/,
    ],
    ['trailing bytes', rawFile({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }, 3), /cover 2 bytes/],
    [
      'offsets that disagree with the shape',
      rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 4),
      /shape/,
    ],
    ['an unknown dtype', rawFile({ a: { dtype: 'F12', shape: [1], data_offsets: [0, 1] } }, 1), /dtype/],
    ['non-string metadata', rawFile({ __metadata__: { n: 1 } }, 0), /must be a string/],
  ])('rejects %s', (_what, file, message) => {
    expect(() => readSafetensors(file)).toThrow(SafetensorsFormatError)
    expect(() => readSafetensors(file)).toThrow(message)
  })

  it('converts to and from IEEE half precision, rounding to nearest even', () => {
    expect(f32ToF16(1)).toBe(0x3c00)
    expect(f32ToF16(-2)).toBe(0xc000)
    expect(f32ToF16(65504)).toBe(0x7bff)
    expect(f32ToF16(70000)).toBe(0x7c00) // overflow to infinity
    expect(f32ToF16(2 ** -24)).toBe(0x0001) // smallest subnormal
    expect(f32ToF16(2 ** -26)).toBe(0) // rounds to zero
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00) // halfway: ties to even
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02)
    expect(Number.isNaN(f16ToF32(f32ToF16(Number.NaN)))).toBe(true)
    for (const x of [0.5, -0.25, 0.0999755859375, 2 ** -20, 1024]) expect(f16ToF32(f32ToF16(x))).toBe(x)
  })
})
