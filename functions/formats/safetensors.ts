/**
 * A dependency-free writer and reader for the `.safetensors` format (huggingface/safetensors):
 *
 *   [u64 little-endian N][N bytes of JSON header, space-padded][raw tensor bytes]
 *
 * The header maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the
 * start of the data) and may hold `__metadata__`, a string-to-string map. The data must be covered exactly,
 * with no holes or overlaps: the reference loader refuses anything else, so the reader here does too.
 */

export type SafetensorsDtype =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'I16'
  | 'U16'
  | 'F16'
  | 'BF16'
  | 'I32'
  | 'U32'
  | 'F32'
  | 'I64'
  | 'U64'
  | 'F64'

const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
}

/** The reference implementation refuses headers above 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000

export interface TensorSpec {
  dtype: SafetensorsDtype
  shape: readonly number[]
  /** The tensor's bytes, or a function that makes them when they are written (keeps big files out of memory). */
  data: Uint8Array | (() => Uint8Array)
}

export interface SafetensorsEntry {
  dtype: SafetensorsDtype
  shape: number[]
  data_offsets: [number, number]
}

export interface ParsedSafetensors {
  /** N, the header's length in bytes (padding included). */
  headerLength: number
  /** Where the tensor data starts in the file: 8 + N. */
  dataStart: number
  metadata: Record<string, string>
  tensors: Map<string, SafetensorsEntry>
}

export class SafetensorsFormatError extends Error {
  override name = 'SafetensorsFormatError'
}

const elementCount = (shape: readonly number[]): number => shape.reduce((n, d) => n * d, 1)

const isDtype = (d: unknown): d is SafetensorsDtype => typeof d === 'string' && Object.hasOwn(DTYPE_BYTES, d)

/** Byte size of a tensor of `dtype` and `shape`. */
export const tensorByteLength = (dtype: SafetensorsDtype, shape: readonly number[]): number =>
  elementCount(shape) * DTYPE_BYTES[dtype]

/**
 * Encodes tensors and metadata as a `.safetensors` file, chunk by chunk: the length prefix and header
 * first, then each tensor's bytes in name order. Lazy `data` functions run one at a time, so only one
 * tensor is in memory at once; pass the generator to `Readable.from` to stream it.
 *
 * @example
 * const bytes = Buffer.concat([...encodeSafetensors({ w: { dtype: 'F32', shape: [2], data: new Uint8Array(8) } })])
 */
export function* encodeSafetensors(
  tensors: Readonly<Record<string, TensorSpec>>,
  metadata: Readonly<Record<string, string>> = {},
): Generator<Uint8Array> {
  for (const [key, value] of Object.entries(metadata))
    if (typeof value !== 'string') throw new TypeError(`metadata "${key}" must be a string`)
  // Name order is what the reference writer uses for equal dtypes; it also makes the bytes reproducible.
  const names = Object.keys(tensors).sort()
  const header: Record<string, unknown> = {}
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata
  let offset = 0
  for (const name of names) {
    if (name === '__metadata__') throw new TypeError('"__metadata__" is reserved and cannot name a tensor')
    const t = tensors[name]!
    if (!t.shape.every((d) => Number.isInteger(d) && d >= 0))
      throw new TypeError(`tensor "${name}": shape must be non-negative integers`)
    const size = tensorByteLength(t.dtype, t.shape)
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + size] }
    offset += size
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8')
  // Pad with spaces so the data starts 8-byte aligned, which lets loaders map tensors without copying.
  const padded = Math.ceil(json.length / 8) * 8
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)])
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(json.length))
  yield prefix
  yield json
  for (const name of names) {
    const t = tensors[name]!
    const bytes = typeof t.data === 'function' ? t.data() : t.data
    const expected = tensorByteLength(t.dtype, t.shape)
    if (bytes.byteLength !== expected)
      throw new RangeError(`tensor "${name}": got ${bytes.byteLength} bytes, shape needs ${expected}`)
    yield bytes
  }
}

/** Parses and checks a `.safetensors` file; throws `SafetensorsFormatError` on anything the reference loader would refuse. */
export function readSafetensors(file: Uint8Array): ParsedSafetensors {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.byteLength)
  if (buf.length < 8) throw new SafetensorsFormatError('file is shorter than the 8-byte header length')
  const n = buf.readBigUInt64LE(0)
  if (n > BigInt(MAX_HEADER_BYTES))
    throw new SafetensorsFormatError(`header length ${n} exceeds ${MAX_HEADER_BYTES}`)
  const headerLength = Number(n)
  const dataStart = 8 + headerLength
  if (dataStart > buf.length) throw new SafetensorsFormatError('header runs past the end of the file')
  const text = buf.subarray(8, dataStart).toString('utf8')
  if (!text.startsWith('{')) throw new SafetensorsFormatError('header must start with "{"')
  let header: unknown
  try {
    header = JSON.parse(text)
  } catch (err) {
    throw new SafetensorsFormatError(`header is not JSON: ${(err as Error).message}`)
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new SafetensorsFormatError('header must be a JSON object')

  const metadata: Record<string, string> = {}
  const tensors = new Map<string, SafetensorsEntry>()
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
        throw new SafetensorsFormatError('__metadata__ must be an object')
      for (const [k, value] of Object.entries(raw)) {
        if (typeof value !== 'string') throw new SafetensorsFormatError(`__metadata__.${k} must be a string`)
        metadata[k] = value
      }
      continue
    }
    const entry = raw as Partial<Record<keyof SafetensorsEntry, unknown>>
    const { dtype, shape, data_offsets: offsets } = entry
    if (!isDtype(dtype)) throw new SafetensorsFormatError(`tensor "${name}": unknown dtype ${String(dtype)}`)
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
      throw new SafetensorsFormatError(`tensor "${name}": shape must be a list of non-negative integers`)
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
    )
      throw new SafetensorsFormatError(`tensor "${name}": data_offsets must be [begin, end]`)
    const [begin, end] = offsets as [number, number]
    if (end - begin !== tensorByteLength(dtype, shape as number[]))
      throw new SafetensorsFormatError(
        `tensor "${name}": data_offsets span ${end - begin} bytes, shape needs more or less`,
      )
    tensors.set(name, { dtype, shape: shape as number[], data_offsets: [begin, end] })
  }

  // The data must be tiled exactly: sorted by start, each tensor begins where the previous one ended.
  const sorted = [...tensors.entries()].sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])
  let cursor = 0
  for (const [name, t] of sorted) {
    if (t.data_offsets[0] !== cursor)
      throw new SafetensorsFormatError(
        `tensor "${name}" starts at ${t.data_offsets[0]}, expected ${cursor} (hole or overlap)`,
      )
    cursor = t.data_offsets[1]
  }
  if (cursor !== buf.length - dataStart)
    throw new SafetensorsFormatError(
      `tensors cover ${cursor} bytes but the file holds ${buf.length - dataStart}`,
    )
  return { headerLength, dataStart, metadata, tensors }
}

/** Decodes a F16 or F32 tensor's values from a parsed file. */
export function tensorValues(file: Uint8Array, parsed: ParsedSafetensors, name: string): number[] {
  const t = parsed.tensors.get(name)
  if (!t) throw new SafetensorsFormatError(`no tensor "${name}"`)
  const view = new DataView(
    file.buffer,
    file.byteOffset + parsed.dataStart + t.data_offsets[0],
    t.data_offsets[1] - t.data_offsets[0],
  )
  const out: number[] = []
  if (t.dtype === 'F16')
    for (let i = 0; i < view.byteLength; i += 2) out.push(f16ToF32(view.getUint16(i, true)))
  else if (t.dtype === 'F32') for (let i = 0; i < view.byteLength; i += 4) out.push(view.getFloat32(i, true))
  else throw new SafetensorsFormatError(`tensor "${name}": cannot decode dtype ${t.dtype}`)
  return out
}

/** Little-endian bytes of `count` values from `valueAt`, as IEEE half (F16) or single (F32) floats. */
export function floatBytes(dtype: 'F16' | 'F32', count: number, valueAt: (i: number) => number): Uint8Array {
  const bytes = new Uint8Array(count * DTYPE_BYTES[dtype])
  const view = new DataView(bytes.buffer)
  if (dtype === 'F16') for (let i = 0; i < count; i++) view.setUint16(i * 2, f32ToF16(valueAt(i)), true)
  else for (let i = 0; i < count; i++) view.setFloat32(i * 4, valueAt(i), true)
  return bytes
}

const f32Scratch = new Float32Array(1)
const u32Scratch = new Uint32Array(f32Scratch.buffer)

/** IEEE 754 half-precision bits of `value`, rounded to nearest even (Node 20 has no Float16Array). */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value
  const x = u32Scratch[0]!
  const sign = (x >>> 16) & 0x8000
  const exp = (x >>> 23) & 0xff
  const mant = x & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  const e = exp - 112 // rebias the exponent from 127 to 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    // Subnormal half (or zero): shift the mantissa, with its implicit 1, into place.
    if (e < -10) return sign
    const m = mant | 0x800000
    const shift = 14 - e
    let half = m >>> shift
    const rem = m & ((1 << shift) - 1)
    const halfway = 1 << (shift - 1)
    if (rem > halfway || (rem === halfway && half & 1)) half++
    return sign | half
  }
  // A carry out of the mantissa rolls into the exponent, which is the right answer (up to infinity).
  let half = sign | (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++
  return half
}

/** The value of IEEE 754 half-precision bits. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >>> 10) & 0x1f
  const mant = h & 0x3ff
  if (exp === 0) return sign * mant * 2 ** -24
  if (exp === 0x1f) return mant ? Number.NaN : sign * Number.POSITIVE_INFINITY
  return sign * (1 + mant / 1024) * 2 ** (exp - 15)
}
