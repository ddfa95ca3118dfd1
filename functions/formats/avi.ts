import {
  chunkHeader,
  infoList,
  listChildren,
  listChunk,
  RiffFormatError,
  readInfoList,
  readRiffHeader,
  riffChunk,
} from './riff.ts'

/**
 * A dependency-free AVI 1.0 writer and reader for uncompressed 24-bit video, which every player and
 * ffmpeg open without codecs:
 *
 *   RIFF 'AVI '
 *     LIST 'hdrl'  avih (main header), LIST 'strl' (strh 'vids'/'DIB ', strf BITMAPINFOHEADER 24-bit)
 *     LIST 'INFO'  ISFT, ICMT, ...
 *     LIST 'movi'  '00db' chunks: one bottom-up BGR frame each, rows padded to 4 bytes
 *     idx1         one entry per frame, offsets relative to the 'movi' fourcc
 *
 * AVI 1.0 stores sizes in 32 bits and classic readers stop at 1 GiB (bigger files need the OpenDML
 * extension), so the writer refuses anything larger: see `AVI_MAX_BYTES`.
 */

/** The largest file we write: the AVI 1.0 limit that every reader honours without OpenDML. */
export const AVI_MAX_BYTES = 1024 ** 3

const AVIF_HASINDEX = 0x10
const AVIIF_KEYFRAME = 0x10
const FRAME_ID = '00db'

export interface AviOptions {
  width: number
  height: number
  frames: number
  fps: number
  /** LIST/INFO strings (ISFT, ICMT, INAM, ...). */
  info?: Readonly<Record<string, string>>
  /**
   * Paints frame `index` into `pixels` (top-down rows of `width * 3` bytes, RGB); the writer turns them into
   * the bottom-up, padded BGR rows a DIB stores. Defaults to a moving test pattern.
   */
  paint?: (index: number, pixels: Uint8Array) => void
}

export interface ParsedAvi {
  width: number
  height: number
  /** Frames the main header announces; the reader checks `movi` and `idx1` hold as many. */
  frames: number
  fps: number
  microSecPerFrame: number
  streams: number
  streamType: string
  handler: string
  bitCount: number
  compression: number
  /** Bytes of one stored frame (rows padded to 4 bytes). */
  frameBytes: number
  /** Where each frame's pixel data starts in the file, in order. */
  frameOffsets: number[]
  indexEntries: number
  info: Record<string, string>
}

/** Bytes of one DIB row of 24-bit pixels, padded to a multiple of 4. */
export const rowStride = (width: number): number => Math.ceil((width * 3) / 4) * 4

function layout(width: number, height: number, frames: number, info: Buffer) {
  const frameBytes = rowStride(width) * height
  const hdrlBytes = 8 + 4 + (8 + 56) + (8 + 4 + (8 + 56) + (8 + 40))
  const moviBody = 4 + frames * (8 + frameBytes)
  const idx1Bytes = 8 + 16 * frames
  const riffBody = 4 + hdrlBytes + info.length + 8 + moviBody + idx1Bytes
  return { frameBytes, moviBody, fileBytes: 8 + riffBody, riffBody }
}

const infoBytes = (info: AviOptions['info']): Buffer =>
  info && Object.keys(info).length > 0 ? infoList(info) : Buffer.alloc(0)

/** The exact size of the AVI `encodeAvi` would write (INFO strings included). */
export const aviFileSize = (opts: Pick<AviOptions, 'width' | 'height' | 'frames' | 'info'>): number =>
  layout(opts.width, opts.height, opts.frames, infoBytes(opts.info)).fileBytes

/**
 * Encodes an uncompressed AVI, chunk by chunk (one frame in memory at a time): pass the generator to
 * `Readable.from` to stream it.
 *
 * @example
 * const bytes = Buffer.concat([...encodeAvi({ width: 64, height: 48, frames: 8, fps: 8 })])
 */
export function* encodeAvi(opts: AviOptions): Generator<Uint8Array> {
  const { width, height, frames, fps, paint = testPattern(opts.width, opts.height, opts.frames) } = opts
  for (const [name, value] of Object.entries({ width, height, frames, fps }))
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer`)
  if (width > 32767 || height > 32767) throw new RangeError('width and height must fit in 16 bits (rcFrame)')
  const info = infoBytes(opts.info)
  const { frameBytes, moviBody, fileBytes, riffBody } = layout(width, height, frames, info)
  if (fileBytes > AVI_MAX_BYTES)
    throw new RangeError(
      `an uncompressed AVI of ${width}x${height}x${frames} is ${fileBytes} bytes, over ${AVI_MAX_BYTES}`,
    )

  const avih = Buffer.alloc(56)
  avih.writeUInt32LE(Math.round(1_000_000 / fps), 0) // dwMicroSecPerFrame
  avih.writeUInt32LE(Math.min(0xffffffff, frameBytes * fps), 4) // dwMaxBytesPerSec
  avih.writeUInt32LE(AVIF_HASINDEX, 12) // dwFlags
  avih.writeUInt32LE(frames, 16) // dwTotalFrames
  avih.writeUInt32LE(1, 24) // dwStreams
  avih.writeUInt32LE(frameBytes + 8, 28) // dwSuggestedBufferSize
  avih.writeUInt32LE(width, 32)
  avih.writeUInt32LE(height, 36)

  const strh = Buffer.alloc(56)
  strh.write('vids', 0, 'latin1') // fccType
  strh.write('DIB ', 4, 'latin1') // fccHandler: uncompressed device-independent bitmaps
  strh.writeUInt32LE(1, 20) // dwScale
  strh.writeUInt32LE(fps, 24) // dwRate: fps = rate / scale
  strh.writeUInt32LE(frames, 32) // dwLength
  strh.writeUInt32LE(frameBytes, 36) // dwSuggestedBufferSize
  strh.writeUInt32LE(0xffffffff, 40) // dwQuality: default
  strh.writeInt16LE(width, 52) // rcFrame.right
  strh.writeInt16LE(height, 54) // rcFrame.bottom

  const strf = Buffer.alloc(40) // BITMAPINFOHEADER
  strf.writeUInt32LE(40, 0)
  strf.writeInt32LE(width, 4)
  strf.writeInt32LE(height, 8) // positive: rows stored bottom-up
  strf.writeUInt16LE(1, 12) // planes
  strf.writeUInt16LE(24, 14) // bits per pixel
  strf.writeUInt32LE(0, 16) // BI_RGB, uncompressed
  strf.writeUInt32LE(frameBytes, 20)

  const hdrl = listChunk('hdrl', [
    riffChunk('avih', avih),
    listChunk('strl', [riffChunk('strh', strh), riffChunk('strf', strf)]),
  ])
  yield Buffer.concat([chunkHeader('RIFF', riffBody), Buffer.from('AVI ', 'latin1'), hdrl, info])
  yield Buffer.concat([chunkHeader('LIST', moviBody), Buffer.from('movi', 'latin1')])

  const stride = rowStride(width)
  const pixels = new Uint8Array(width * height * 3)
  for (let f = 0; f < frames; f++) {
    paint(f, pixels)
    const chunk = Buffer.alloc(8 + frameBytes)
    chunkHeader(FRAME_ID, frameBytes).copy(chunk, 0)
    for (let y = 0; y < height; y++) {
      const src = y * width * 3
      const dst = 8 + (height - 1 - y) * stride
      for (let x = 0; x < width; x++) {
        const s = src + x * 3
        const d = dst + x * 3
        chunk[d] = pixels[s + 2]!
        chunk[d + 1] = pixels[s + 1]!
        chunk[d + 2] = pixels[s]!
      }
    }
    yield chunk
  }

  const idx1 = Buffer.alloc(16 * frames)
  for (let f = 0; f < frames; f++) {
    idx1.write(FRAME_ID, f * 16, 'latin1')
    idx1.writeUInt32LE(AVIIF_KEYFRAME, f * 16 + 4)
    idx1.writeUInt32LE(4 + f * (8 + frameBytes), f * 16 + 8) // from the 'movi' fourcc to the chunk header
    idx1.writeUInt32LE(frameBytes, f * 16 + 12)
  }
  yield Buffer.concat([chunkHeader('idx1', idx1.length), idx1])
}

/**
 * A moving colour gradient with a white square sliding across and a progress bar along the bottom, so
 * every frame differs and a viewer can see the clip play from start to end.
 */
export function testPattern(
  width: number,
  height: number,
  frames: number,
): (index: number, pixels: Uint8Array) => void {
  const wave = (phase: number) => Math.round(127.5 + 127.5 * Math.sin(2 * Math.PI * phase))
  const side = Math.max(2, Math.floor(Math.min(width, height) / 5))
  const barTop = height - Math.max(2, Math.floor(height / 24))
  const red = new Uint8Array(width)
  const blue = new Uint8Array(width + height)
  return (index, pixels) => {
    const t = frames > 1 ? index / frames : 0
    // Each channel depends on x, y or x + y alone: tables keep a 4K frame cheap to paint.
    for (let x = 0; x < width; x++) red[x] = wave(x / width + t)
    for (let i = 0; i < width + height; i++) blue[i] = wave(i / (width + height) - 2 * t)
    const squareX = Math.round(t * (width - side))
    const squareY = Math.round((height - side) / 2 + ((height - side) / 3) * Math.sin(2 * Math.PI * t))
    const barEnd = Math.round(((index + 1) / frames) * width)
    for (let y = 0; y < height; y++) {
      const green = wave(y / height - t)
      const inSquareRow = y >= squareY && y < squareY + side
      for (let x = 0; x < width; x++) {
        const p = (y * width + x) * 3
        let r = red[x]!
        let g = green
        let b = blue[x + y]!
        if (y >= barTop) r = g = b = x < barEnd ? 255 : 32
        else if (inSquareRow && x >= squareX && x < squareX + side) r = g = b = 255
        pixels[p] = r
        pixels[p + 1] = g
        pixels[p + 2] = b
      }
    }
  }
}

/** Parses and checks an AVI written as above: headers, frame chunks and index must all agree. */
export function readAvi(file: Uint8Array): ParsedAvi {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.byteLength)
  const riff = readRiffHeader(buf, 'AVI ')
  let avih: Buffer | undefined
  let strh: Buffer | undefined
  let strf: Buffer | undefined
  let streams = 0
  let info: Record<string, string> = {}
  let moviStart: number | undefined
  const frameChunks: { offset: number; size: number }[] = []
  let index: Buffer | undefined
  for (const c of listChildren(buf, riff)) {
    const body = buf.subarray(c.bodyOffset, c.bodyOffset + c.size)
    if (c.listType === 'hdrl') {
      for (const h of listChildren(buf, c)) {
        if (h.id === 'avih') avih = buf.subarray(h.bodyOffset, h.bodyOffset + h.size)
        if (h.listType === 'strl') {
          streams++
          for (const s of listChildren(buf, h)) {
            if (s.id === 'strh') strh ??= buf.subarray(s.bodyOffset, s.bodyOffset + s.size)
            if (s.id === 'strf') strf ??= buf.subarray(s.bodyOffset, s.bodyOffset + s.size)
          }
        }
      }
    } else if (c.listType === 'INFO') info = readInfoList(buf, c)
    else if (c.listType === 'movi') {
      moviStart = c.bodyOffset
      for (const m of listChildren(buf, c))
        if (m.id === FRAME_ID || m.id === '00dc') frameChunks.push({ offset: m.offset, size: m.size })
    } else if (c.id === 'idx1') index = body
  }
  if (!avih || avih.length < 56) throw new RiffFormatError('no avih main header')
  if (!strh || strh.length < 56) throw new RiffFormatError('no strh stream header')
  if (!strf || strf.length < 40) throw new RiffFormatError('no strf BITMAPINFOHEADER')
  if (moviStart === undefined) throw new RiffFormatError('no movi list')

  const frames = avih.readUInt32LE(16)
  const width = strf.readInt32LE(4)
  const height = Math.abs(strf.readInt32LE(8))
  const bitCount = strf.readUInt16LE(14)
  const compression = strf.readUInt32LE(16)
  const frameBytes =
    compression === 0 ? Math.ceil((width * bitCount) / 32) * 4 * height : strf.readUInt32LE(20)
  if (avih.readUInt32LE(32) !== width || avih.readUInt32LE(36) !== height)
    throw new RiffFormatError('avih and strf disagree on the frame size')
  if (strh.readUInt32LE(32) !== frames)
    throw new RiffFormatError('strh length differs from avih total frames')
  if (frameChunks.length !== frames)
    throw new RiffFormatError(`movi holds ${frameChunks.length} frames, headers say ${frames}`)
  for (const [i, f] of frameChunks.entries())
    if (f.size !== frameBytes)
      throw new RiffFormatError(`frame ${i} is ${f.size} bytes, expected ${frameBytes}`)

  let indexEntries = 0
  if (index) {
    if (index.length % 16 !== 0) throw new RiffFormatError('idx1 is not a whole number of entries')
    indexEntries = index.length / 16
    for (let i = 0; i < indexEntries; i++) {
      const id = index.toString('latin1', i * 16, i * 16 + 4)
      const at = moviStart + index.readUInt32LE(i * 16 + 8)
      const size = index.readUInt32LE(i * 16 + 12)
      if (
        at + 8 > buf.length ||
        buf.toString('latin1', at, at + 4) !== id ||
        buf.readUInt32LE(at + 4) !== size
      )
        throw new RiffFormatError(`idx1 entry ${i} does not point at a "${id}" chunk of ${size} bytes`)
    }
  }
  const scale = strh.readUInt32LE(20)
  return {
    width,
    height,
    frames,
    fps: scale > 0 ? strh.readUInt32LE(24) / scale : 0,
    microSecPerFrame: avih.readUInt32LE(0),
    streams,
    streamType: strh.toString('latin1', 0, 4),
    handler: strh.toString('latin1', 4, 8),
    bitCount,
    compression,
    frameBytes,
    frameOffsets: frameChunks.map((f) => f.offset + 8),
    indexEntries,
    info,
  }
}
