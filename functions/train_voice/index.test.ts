import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { readWav, wavSamples } from '../formats/wav.ts'
import { runHandler } from '../sdk/testing.ts'
import {
  expectEpochProgress,
  expectStopsAfterProgress,
  ffprobe,
  HAS_FFPROBE,
  handlerSuite,
  itRefusesBadDatasets,
  rejectionOf,
} from '../test-support.ts'
import trainVoice, { SAMPLE_RATE, SPEAKER_FILE, VOICE_FILE } from './index.ts'

const suite = handlerSuite({ type: 'train_voice', jobId: 'voice-job-1' })
const { context } = suite

const params = (extra: Record<string, unknown> = {}) => ({
  speakerName: 'Ada Lovelace',
  datasetPath: 'voice_ds',
  epochs: 2,
  ...extra,
})

describe('train_voice (simulate)', () => {
  it('fine-tunes and stores a valid 24 kHz mono voice sample marked simulated', async () => {
    const t = await context()
    const result = await runHandler(trainVoice, params({ language: 'fr' }), t)
    expect(result).toMatchObject({
      engine: 'simulate',
      simulated: true,
      files: [VOICE_FILE, SPEAKER_FILE],
      steps: 20,
      updates: 20,
      datasetFiles: 4,
      audioFiles: 3,
      speakerName: 'Ada Lovelace',
      language: 'fr',
      sampleRate: SAMPLE_RATE,
    })
    expect(JSON.parse(JSON.stringify(result))).toEqual(result)

    const bytes = t.artifacts.files.get(VOICE_FILE)?.bytes
    expect(bytes).toBeDefined()
    const wav = readWav(bytes!)
    expect(wav.format).toEqual({
      audioFormat: 1,
      channels: 1,
      sampleRate: 24_000,
      byteRate: 48_000,
      blockAlign: 2,
      bitsPerSample: 16,
    })
    expect(wav.durationSec).toBeGreaterThanOrEqual(2)
    expect(wav.durationSec).toBeLessThanOrEqual(10)
    expect(wav.durationSec).toBe((result as { durationSec: number }).durationSec)
    expect(wav.info.ICMT).toMatch(/simulated/i)
    expect(wav.info.INAM).toContain('Ada Lovelace')

    // Audible but not clipped: a voice-like level, not silence or a square wave.
    const samples = wavSamples(bytes!, wav)
    const rms = Math.sqrt(samples.reduce((s, x) => s + x * x, 0) / samples.length) / 32768
    const peak = samples.reduce((m, x) => Math.max(m, Math.abs(x)), 0) / 32768
    expect(rms).toBeGreaterThan(0.02)
    expect(peak).toBeLessThan(0.99)

    const speaker = JSON.parse(t.artifacts.files.get(SPEAKER_FILE)?.bytes.toString('utf8') ?? '{}')
    expect(speaker).toMatchObject({
      speakerName: 'Ada Lovelace',
      language: 'fr',
      referenceAudio: VOICE_FILE,
      simulated: true,
    })
  })

  it('reports F5-TTS-style progress per update, rising to exactly 100', async () => {
    const t = await context()
    await runHandler(trainVoice, params(), t)
    expectEpochProgress(
      t.progress,
      20,
      /^Epoch 1\/2 - update=1, loss=\d\.\d{3}$/,
      /^Epoch 2\/2 - update=20, loss=\d\.\d{3}$/,
    )
  })

  it('gives one speaker the same simulated voice on every run', async () => {
    const a = await context()
    const b = await context()
    await runHandler(trainVoice, params(), a)
    await runHandler(trainVoice, params({ epochs: 1 }), b)
    expect(a.artifacts.files.get(VOICE_FILE)?.record.sha256).toBe(
      b.artifacts.files.get(VOICE_FILE)?.record.sha256,
    )
  })

  it.runIf(HAS_FFPROBE)('writes a file ffprobe reads as 24 kHz mono PCM', async () => {
    const t = await context()
    await runHandler(trainVoice, params(), t)
    const file = path.join(t.ctx.paths.scratch, VOICE_FILE)
    await writeFile(file, t.artifacts.files.get(VOICE_FILE)!.bytes)
    const probe = await ffprobe(file)
    expect(probe.streams[0]).toMatchObject({ codec_name: 'pcm_s16le', sample_rate: '24000', channels: 1 })
  })

  itRefusesBadDatasets(suite, (t, datasetPath) => runHandler(trainVoice, params({ datasetPath }), t))

  it('fails clearly, without simulating, when the f5tts engine is asked for', async () => {
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ engine: 'f5tts' }), t))
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toContain('f5tts')
    expect(t.artifacts.files.size).toBe(0)
  })

  it('stops promptly when the job is cancelled', async () => {
    const t = await context(5)
    await expectStopsAfterProgress(t, 4, () => runHandler(trainVoice, params({ epochs: 100 }), t))
  })
})
