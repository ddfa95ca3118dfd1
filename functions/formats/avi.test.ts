import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ffprobe, HAS_FFPROBE } from '../test-support.ts'
import { AVI_MAX_BYTES, aviFileSize, encodeAvi, readAvi, rowStride } from './avi.ts'
import { RiffFormatError } from './riff.ts'

const encode = (...args: Parameters<typeof encodeAvi>): Buffer => Buffer.concat([...encodeAvi(...args)])

/** What ffprobe, a reader that is not ours, makes of a file: its video stream and its container. */
async function probe(file: Buffer) {
  const dir = await mkdtemp(path.join(tmpdir(), 'avi-probe-'))
  try {
    await writeFile(path.join(dir, 'out.avi'), file)
    const probed = (await ffprobe(path.join(dir, 'out.avi'))) as unknown as {
      streams: Record<string, unknown>[]
      format: { format_name: string; duration: string; tags?: Record<string, string> }
    }
    return { stream: probed.streams[0], streams: probed.streams.length, format: probed.format }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('avi', () => {
  it('writes the size it announces, with headers, frames and index that agree', () => {
    const opts = { width: 10, height: 4, frames: 3, fps: 12, info: { ISFT: 'test', ICMT: 'simulated' } }
    const file = encode(opts)
    expect(file.length).toBe(aviFileSize(opts))
    const avi = readAvi(file)
    expect(avi).toMatchObject({ width: 10, height: 4, frames: 3, fps: 12, bitCount: 24, indexEntries: 3 })
    expect(avi.microSecPerFrame).toBe(83_333)
    // 10 pixels x 3 bytes = 30, padded to 32 per row.
    expect(rowStride(10)).toBe(32)
    expect(avi.frameBytes).toBe(32 * 4)
    expect(avi.info).toEqual({ ISFT: 'test', ICMT: 'simulated' })
  })

  it.skipIf(!HAS_FFPROBE)(
    `is read by ffprobe: codec, size, frame count, rate and duration${HAS_FFPROBE ? '' : ' (skipped: no ffprobe for this platform in @ffprobe-installer)'}`,
    async () => {
      const { stream, streams, format } = await probe(
        encode({ width: 10, height: 4, frames: 3, fps: 12, info: { ISFT: 'gpu-jobs simulate' } }),
      )
      expect(streams).toBe(1)
      expect(stream).toMatchObject({
        codec_type: 'video',
        codec_name: 'rawvideo',
        pix_fmt: 'bgr24',
        width: 10,
        height: 4,
        r_frame_rate: '12/1',
        nb_read_frames: '3',
      })
      expect(format.format_name).toBe('avi')
      expect(Number(format.duration)).toBeCloseTo(3 / 12, 5)
      expect(format.tags?.software).toBe('gpu-jobs simulate')
    },
  )

  it('stores rows bottom-up as BGR, with zeroed row padding', () => {
    const file = encode({
      width: 2,
      height: 2,
      frames: 1,
      fps: 1,
      // Top row red, bottom row blue (RGB, top-down).
      paint: (_i, px) => px.set([255, 0, 0, 255, 0, 0, 0, 0, 255, 0, 0, 255]),
    })
    const avi = readAvi(file)
    const frame = file.subarray(avi.frameOffsets[0]!, avi.frameOffsets[0]! + avi.frameBytes)
    // First stored row is the bottom one (blue: B=255), then 2 pad bytes; then the top row (red: R=255).
    expect([...frame]).toEqual([255, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255, 0, 0, 255, 0, 0])
  })

  it('changes the default pattern from frame to frame', () => {
    const file = encode({ width: 16, height: 16, frames: 4, fps: 4 })
    const avi = readAvi(file)
    const frames = avi.frameOffsets.map((o) => file.subarray(o, o + avi.frameBytes).toString('hex'))
    expect(new Set(frames).size).toBe(4)
  })

  it('refuses a file over the AVI 1.0 limit before making any frame', () => {
    const opts = { width: 4096, height: 4096, frames: 100, fps: 8 }
    expect(aviFileSize(opts)).toBeGreaterThan(AVI_MAX_BYTES)
    expect(() => encodeAvi(opts).next()).toThrow(RangeError)
  })

  it.each([
    [
      'headers that announce more frames than stored',
      (f: Buffer) => {
        f.writeUInt32LE(5, 32 + 16) // avih.dwTotalFrames
        f.writeUInt32LE(5, 108 + 32) // strh.dwLength
      },
      /movi holds 2 frames, headers say 5/,
    ],
    ['stream and main headers that disagree', (f: Buffer) => f.writeUInt32LE(5, 32 + 16), /strh length/],
    ['a truncated file', (f: Buffer) => f.writeUInt32LE(f.length + 10, 4), /RIFF size/],
    ['an index entry that points nowhere', (f: Buffer) => f.writeUInt32LE(7, f.length - 8), /idx1 entry 1/],
  ])('rejects %s', (_what, corrupt, message) => {
    const file = encode({ width: 8, height: 8, frames: 2, fps: 2 })
    corrupt(file)
    expect(() => readAvi(file)).toThrow(RiffFormatError)
    expect(() => readAvi(file)).toThrow(message)
  })
})
