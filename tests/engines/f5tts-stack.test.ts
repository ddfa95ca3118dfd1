/**
 * train_voice with engine `f5tts` through the whole stack (gateway, GPU host, a fresh job process, s3rver),
 * the F5-TTS stand-in as the engine (F5TTS_DIR, F5TTS_PYTHON, MODELS_DIR in the host's environment): the
 * files in the bucket, and a cancel and a timeout mid-run that leave no engine process and no file.
 */
import { readdir } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'
import { type F5Standin, makeF5Standin, stillRunning, writeSpeakerDataset } from './fake-f5tts/standin.ts'

let s: F5Standin
let stack: Stack

beforeAll(async () => {
  s = await makeF5Standin()
  stack = await startStack({
    env: { F5TTS_DIR: s.f5Dir, F5TTS_PYTHON: s.python, MODELS_DIR: s.modelsDir },
  })
  await writeSpeakerDataset(stack.dataDir)
})
afterAll(async () => {
  await stack?.close()
  await s?.cleanup()
})

const submit = async (extra: Record<string, unknown> = {}) => {
  const { status, json } = await stack.post({
    type: 'train_voice',
    params: { speakerName: 'Ada', datasetPath: 'speaker_ds', epochs: 1, engine: 'f5tts' },
    ...extra,
  })
  expect(status).toBe(202)
  return json.jobId as string
}

describe('train_voice f5tts through the stack (stand-in engine)', () => {
  it('ends completed with model_last.pt, vocab.txt and speaker.json in the bucket, in the manifest', async () => {
    const jobId = await submit()
    const done = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    expect(done.error ?? null).toBe(null)
    expect(done.status).toBe('completed')
    expect(done.result).toMatchObject({ engine: 'f5tts', updates: 3, finalLoss: 43.4, simulated: false })

    expect(await stack.keysUnder(`voices/${jobId}`)).toEqual(
      ['manifest.json', 'model_last.pt', 'speaker.json', 'vocab.txt'].map((f) => `voices/${jobId}/${f}`),
    )
    const model = Buffer.from(
      await (await fetch(stack.url(`/api/jobs/${jobId}/artifacts/model_last.pt`))).arrayBuffer(),
    )
    expect(model.subarray(0, 4).toString('latin1')).toBe('PK\x03\x04')
    const vocab = Buffer.from(
      await (await fetch(stack.url(`/api/jobs/${jobId}/artifacts/vocab.txt`))).arrayBuffer(),
    )
    expect(vocab.equals(s.vocab)).toBe(true)
    const { artifacts } = (await (await fetch(stack.url(`/api/jobs/${jobId}/artifacts`))).json()) as {
      artifacts: { path: string; size: number }[]
    }
    expect(artifacts.find((a) => a.path === 'model_last.pt')?.size).toBe(model.length)

    // The progress the job published came from the recorded bars.
    const events = await (await fetch(stack.url(`/api/jobs/${jobId}/events?after=0`))).text()
    expect(events).toContain('Epoch 1/1 - update=3, loss=43.4')
    expect(events).toContain('Saved last checkpoint at update 3')
    expect(await stillRunning(await s.pids())).toEqual([])
  })

  it('cancelled mid-run: cancelled, every stand-in process gone, nothing in the bucket', async () => {
    await s.configure({ stepMs: 500 })
    const before = new Set(await s.pids())
    const jobId = await submit()
    await waitFor(
      async () => (await stack.job(jobId)).message?.startsWith('Epoch 1/1 - update=1'),
      30_000,
      'the first update',
    )
    const res = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(res.status).toBeLessThan(300)
    const body = await stack.waitStatus(jobId, ['cancelled'], 30_000)
    expect(body.status).toBe('cancelled')
    const pids = (await s.pids()).filter((p) => !before.has(p))
    expect(pids.length).toBeGreaterThanOrEqual(4)
    await waitFor(async () => (await stillRunning(pids)).length === 0, 10_000, 'the stand-in to be gone')
    expect(await stack.keysUnder(`voices/${jobId}`)).toEqual([])
  })

  it('timed out mid-run: failed with reason timeout, every stand-in process gone, nothing in the bucket', async () => {
    await s.configure({ stepMs: 1500 })
    const before = new Set(await s.pids())
    const jobId = await submit({ timeoutSec: 4, maxAttempts: 1 })
    const body = await stack.waitStatus(jobId, ['failed', 'completed'], 60_000)
    expect(body.status).toBe('failed')
    expect(body.error?.reason).toBe('timeout')
    const pids = (await s.pids()).filter((p) => !before.has(p))
    expect(pids.length).toBeGreaterThanOrEqual(4)
    await waitFor(async () => (await stillRunning(pids)).length === 0, 10_000, 'the stand-in to be gone')
    expect(await stack.keysUnder(`voices/${jobId}`)).toEqual([])
    // Nothing the trainer wrote reached the shared checkout.
    expect(await readdir(`${s.f5Dir}/ckpts`)).toEqual(['README.md'])
  })
})
