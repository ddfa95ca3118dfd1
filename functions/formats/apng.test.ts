import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { inflateSync } from 'node:zlib'
import { describe, expect, it } from 'vitest'
import { ffmpegFrames, ffprobe, HAS_FFMPEG, HAS_FFPROBE } from '../test-support.ts'
import { encodeApng } from './apng.ts'
import { testPattern } from './avi.ts'

const encode = (o: Parameters<typeof encodeApng>[0]) => Buffer.concat([...encodeApng(o)])

/** The chunk types and bodies of a PNG file, read by the spec (length, type, data, CRC). */
function chunks(file: Buffer): { type: string; data: Buffer }[] {
  const out: { type: string; data: Buffer }[] = []
  for (let at = 8; at < file.length; ) {
    const length = file.readUInt32BE(at)
    out.push({ type: file.toString('latin1', at + 4, at + 8), data: file.subarray(at + 8, at + 8 + length) })
    at += 12 + length
  }
  return out
}

describe('apng', () => {
  const opts = { width: 16, height: 8, frames: 4, fps: 8, paint: testPattern(16, 8, 4) }

  it('is a PNG with an animation control, one fcTL per frame and sequence numbers in order', () => {
    const file = encode(opts)
    expect(file.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
    const list = chunks(file)
    expect(list.map((c) => c.type)).toEqual([
      'IHDR',
      'acTL',
      ...['fcTL', 'IDAT'],
      ...['fcTL', 'fdAT'],
      ...['fcTL', 'fdAT'],
      ...['fcTL', 'fdAT'],
      'IEND',
    ])
    expect(list[1]?.data.readUInt32BE(0)).toBe(4) // frames
    const seqs = list.filter((c) => c.type === 'fcTL' || c.type === 'fdAT').map((c) => c.data.readUInt32BE(0))
    expect(seqs).toEqual([0, 1, 2, 3, 4, 5, 6])
    // The first frame's rows, inflated: a filter byte then 16 RGB pixels, 8 times.
    const idat = list.find((c) => c.type === 'IDAT')?.data ?? Buffer.alloc(0)
    expect(inflateSync(idat).length).toBe((16 * 3 + 1) * 8)
  })

  it.skipIf(!HAS_FFMPEG)(
    'decodes, in ffmpeg, to the very pixels painted, frame by frame (skipped: no ffmpeg)',
    async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'apng-'))
      try {
        const o = { width: 37, height: 21, frames: 5, fps: 8, paint: testPattern(37, 21, 5) }
        await writeFile(path.join(dir, 'preview.png'), encode(o))
        const painted = Buffer.alloc(37 * 21 * 3 * 5)
        const frame = new Uint8Array(37 * 21 * 3)
        for (let i = 0; i < 5; i++) {
          o.paint(i, frame)
          painted.set(frame, i * frame.length)
        }
        expect((await ffmpegFrames(path.join(dir, 'preview.png'))).equals(painted)).toBe(true)
      } finally {
        await rm(dir, { recursive: true, force: true })
      }
    },
  )

  it('packs a smooth clip tightly (rows filtered before deflate): under 5 % of its raw pixels', () => {
    // The largest preview the simulated render writes: 320 px wide, 48 frames.
    const o = { width: 320, height: 320, frames: 48, fps: 8, paint: testPattern(320, 320, 48) }
    expect(encode(o).length).toBeLessThan(0.05 * 320 * 320 * 3 * 48)
  })

  it.skipIf(!HAS_FFPROBE)(
    'is read by ffprobe as an animation of its frames, size and rate (skipped: no ffprobe)',
    async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'apng-'))
      try {
        await writeFile(path.join(dir, 'preview.png'), encode(opts))
        const probed = await ffprobe(path.join(dir, 'preview.png'))
        expect(probed.streams[0]).toMatchObject({
          codec_name: 'apng',
          width: 16,
          height: 8,
          nb_read_frames: '4',
        })
        expect(probed.streams[0]?.r_frame_rate).toBe('8/1')
      } finally {
        await rm(dir, { recursive: true, force: true })
      }
    },
  )
})
