import { describe, expect, it } from 'vitest'
import { WaveFile } from 'wavefile'
import { RiffFormatError } from './riff.ts'
import { encodeWav, readWav, synthesizeVoice, wavSamples } from './wav.ts'

describe('wav', () => {
  it('round-trips 16-bit mono PCM with INFO strings', () => {
    const samples = Int16Array.from([0, 1000, -1000, 32767, -32768])
    const file = encodeWav(samples, 24_000, { INAM: 'Ada', ICMT: 'simulated, odd length' })
    const wav = readWav(file)
    expect(file.toString('latin1', 0, 4)).toBe('RIFF')
    expect(file.readUInt32LE(4)).toBe(file.length - 8)
    expect(wav.format).toMatchObject({ audioFormat: 1, channels: 1, sampleRate: 24_000, bitsPerSample: 16 })
    expect(wav.frameCount).toBe(5)
    expect(wav.durationSec).toBeCloseTo(5 / 24_000)
    expect(wav.info).toEqual({ INAM: 'Ada', ICMT: 'simulated, odd length' })
    expect([...wavSamples(file, wav)]).toEqual([...samples])
  })

  it('writes what an independent reader (wavefile) reads back: rate, channels, bit depth, tags and samples', () => {
    const samples = Int16Array.from([0, 1000, -1000, 32767, -32768, 7])
    const wav = new WaveFile(encodeWav(samples, 22_050, { INAM: 'Ada', ICMT: 'simulated' }))
    expect(wav.fmt).toMatchObject({ audioFormat: 1, numChannels: 1, sampleRate: 22_050, bitsPerSample: 16 })
    expect(wav.bitDepth).toBe('16')
    expect(wav.getTag('INAM')).toBe('Ada')
    expect(wav.getTag('ICMT')).toBe('simulated')
    expect([...wav.getSamples(false, Int16Array)]).toEqual([...samples])
  })

  it('synthesises a deterministic, audible, unclipped voice-like signal', () => {
    const a = synthesizeVoice({ seconds: 1, sampleRate: 24_000, seed: 'ada' })
    const b = synthesizeVoice({ seconds: 1, sampleRate: 24_000, seed: 'ada' })
    const c = synthesizeVoice({ seconds: 1, sampleRate: 24_000, seed: 'bob' })
    expect(a).toHaveLength(24_000)
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true)
    expect(Buffer.from(a.buffer).equals(Buffer.from(c.buffer))).toBe(false)
    const peak = a.reduce((m, x) => Math.max(m, Math.abs(x)), 0)
    expect(peak).toBeGreaterThan(16_000)
    expect(peak).toBeLessThan(32_767)
  })

  it.each([
    ['a wrong RIFF size', (f: Buffer) => f.writeUInt32LE(f.length, 4), /RIFF size/],
    ['another RIFF form', (f: Buffer) => f.write('AVI ', 8, 'latin1'), /not "WAVE"/],
    ['a chunk running past the end', (f: Buffer) => f.writeUInt32LE(1_000_000, 16), /runs past/],
    ['no data chunk', (f: Buffer) => f.write('junk', 36, 'latin1'), /no data chunk/],
  ])('rejects %s', (_what, corrupt, message) => {
    const file = encodeWav(new Int16Array(10), 8000)
    corrupt(file)
    expect(() => readWav(file)).toThrow(RiffFormatError)
    expect(() => readWav(file)).toThrow(message)
  })
})
