import { createRng } from './prng.ts'
import {
  infoList,
  listChildren,
  type RiffChunk,
  RiffFormatError,
  readInfoList,
  readRiffHeader,
  riffChunk,
} from './riff.ts'

/**
 * A dependency-free RIFF/WAVE writer and reader for 16-bit PCM, plus a small voice-like synthesiser used by
 * the simulated voice engine. Layout written:
 *
 *   RIFF <size> WAVE | fmt  (16 bytes, PCM) | LIST INFO (INAM, ICMT, ISFT, ...) | data <samples>
 */

export interface WavFormat {
  /** 1 = integer PCM. */
  audioFormat: number
  channels: number
  sampleRate: number
  byteRate: number
  blockAlign: number
  bitsPerSample: number
}

export interface ParsedWav {
  format: WavFormat
  /** Where the sample bytes start in the file, and how many there are. */
  dataOffset: number
  dataBytes: number
  /** Sample frames (one sample per channel each). */
  frameCount: number
  durationSec: number
  /** LIST/INFO strings by chunk id (INAM, ICMT, ISFT, ...). */
  info: Record<string, string>
}

/**
 * Encodes mono 16-bit PCM samples as a WAVE file, with an optional LIST/INFO chunk.
 *
 * @example
 * const wav = encodeWav(new Int16Array(24_000), 24_000, { ICMT: 'one second of silence' })
 */
export function encodeWav(
  samples: Int16Array,
  sampleRate: number,
  info: Readonly<Record<string, string>> = {},
): Buffer {
  const fmt = Buffer.alloc(16)
  fmt.writeUInt16LE(1, 0) // PCM
  fmt.writeUInt16LE(1, 2) // mono
  fmt.writeUInt32LE(sampleRate, 4)
  fmt.writeUInt32LE(sampleRate * 2, 8) // byte rate
  fmt.writeUInt16LE(2, 12) // block align
  fmt.writeUInt16LE(16, 14) // bits per sample
  const data = Buffer.alloc(samples.length * 2)
  for (let i = 0; i < samples.length; i++) data.writeInt16LE(samples[i]!, i * 2)
  const chunks = [riffChunk('fmt ', fmt)]
  if (Object.keys(info).length > 0) chunks.push(infoList(info))
  chunks.push(riffChunk('data', data))
  return riffChunk('RIFF', Buffer.concat([Buffer.from('WAVE', 'latin1'), ...chunks]))
}

/** Parses and checks a RIFF/WAVE file; throws `RiffFormatError` on a broken structure. */
export function readWav(file: Uint8Array): ParsedWav {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.byteLength)
  const riff = readRiffHeader(buf, 'WAVE')
  let format: WavFormat | undefined
  let data: RiffChunk | undefined
  let info: Record<string, string> = {}
  for (const c of listChildren(buf, riff)) {
    if (c.id === 'fmt ') {
      if (c.size < 16) throw new RiffFormatError('fmt chunk is shorter than 16 bytes')
      const at = c.bodyOffset
      format = {
        audioFormat: buf.readUInt16LE(at),
        channels: buf.readUInt16LE(at + 2),
        sampleRate: buf.readUInt32LE(at + 4),
        byteRate: buf.readUInt32LE(at + 8),
        blockAlign: buf.readUInt16LE(at + 12),
        bitsPerSample: buf.readUInt16LE(at + 14),
      }
    } else if (c.id === 'data') {
      if (!format) throw new RiffFormatError('data chunk comes before fmt')
      data = c
    } else if (c.listType === 'INFO') info = readInfoList(buf, c)
  }
  if (!format) throw new RiffFormatError('no fmt chunk')
  if (!data) throw new RiffFormatError('no data chunk')
  const { channels, bitsPerSample, blockAlign, byteRate, sampleRate } = format
  if (channels < 1 || sampleRate < 1) throw new RiffFormatError('channels and sample rate must be positive')
  if (blockAlign !== (channels * bitsPerSample) / 8)
    throw new RiffFormatError('block align does not match channels x bits')
  if (byteRate !== sampleRate * blockAlign)
    throw new RiffFormatError('byte rate does not match sample rate x block align')
  if (data.size % blockAlign !== 0) throw new RiffFormatError('data is not a whole number of sample frames')
  const frameCount = data.size / blockAlign
  return {
    format,
    dataOffset: data.bodyOffset,
    dataBytes: data.size,
    frameCount,
    durationSec: frameCount / sampleRate,
    info,
  }
}

/** The 16-bit samples of a parsed file (interleaved when there are several channels). */
export function wavSamples(file: Uint8Array, parsed: ParsedWav): Int16Array {
  if (parsed.format.bitsPerSample !== 16) throw new RiffFormatError('only 16-bit PCM samples can be read')
  const view = new DataView(file.buffer, file.byteOffset + parsed.dataOffset, parsed.dataBytes)
  const out = new Int16Array(parsed.dataBytes / 2)
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true)
  return out
}

/** Formant pairs (F1, F2 in Hz) of a few vowels: /a/, /e/, /i/, /o/, /u/. */
const VOWELS: readonly [number, number][] = [
  [730, 1090],
  [530, 1840],
  [270, 2290],
  [570, 840],
  [300, 870],
]

/**
 * Synthesises a few seconds of a voice-like signal: a pitch contour over harmonics shaped by vowel formants,
 * in syllables with short pauses. It sounds like humming speech, not words, which is what a simulated
 * voice should: plainly not a real clone. Deterministic for a given seed.
 */
export function synthesizeVoice(opts: {
  seconds: number
  sampleRate: number
  seed: string | number
  f0Hz?: number
}): Int16Array {
  const { seconds, sampleRate, seed } = opts
  const rand = createRng(seed)
  const f0 = opts.f0Hz ?? 110 + rand() * 110
  const total = Math.round(seconds * sampleRate)
  const signal = new Float32Array(total)
  const nyquistCap = Math.min(4000, sampleRate / 2 - 200)
  let phase = 0
  let pos = 0
  while (pos < total) {
    const syllable = Math.round((0.16 + rand() * 0.18) * sampleRate)
    const gap = Math.round((rand() < 0.2 ? 0.12 : 0.03) * sampleRate)
    const [f1, f2] = VOWELS[Math.floor(rand() * VOWELS.length)]!
    const end = Math.min(total, pos + syllable)
    for (let i = pos; i < end; i++) {
      const t = i / sampleRate
      const local = (i - pos) / syllable
      // Declining phrase pitch with a slow wobble, as in plain speech.
      const pitch = f0 * (1 - 0.12 * (t / seconds)) * (1 + 0.06 * Math.sin(2 * Math.PI * 0.9 * t))
      phase += (2 * Math.PI * pitch) / sampleRate
      let s = 0
      for (let k = 1; k * pitch < nyquistCap; k++) {
        const f = k * pitch
        const formant = 1 / (1 + ((f - f1) / 90) ** 2) + 0.6 / (1 + ((f - f2) / 120) ** 2)
        s += (formant / k ** 0.7) * Math.sin(k * phase)
      }
      const envelope = Math.sin(Math.PI * local) ** 2
      signal[i] = s * envelope + (rand() - 0.5) * 0.01
    }
    pos = end + gap
  }
  // Normalise to a comfortable peak (about -3 dBFS) whatever the harmonics summed to.
  let peak = 1e-9
  for (const x of signal) peak = Math.max(peak, Math.abs(x))
  const out = new Int16Array(total)
  for (let i = 0; i < total; i++) out[i] = Math.round((signal[i]! / peak) * 0.7 * 32767)
  return out
}
