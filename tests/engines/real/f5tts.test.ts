/**
 * train_voice on the REAL F5-TTS (`npm run test:engines`), through the whole stack: one tiny fine-tune
 * (1 epoch, 3 synthetic clips) ending with model_last.pt and vocab.txt in the bucket. Needs F5TTS_DIR (a
 * checkout), F5TTS_PYTHON (its environment's Python) and MODELS_DIR holding the pretrained checkpoint:
 * F5TTS_BASE_MODEL names it relative to MODELS_DIR (default: the params' default). Slow on a CPU
 * (~1-2 min per update of the 337M model, ~9 GB of memory, a 5.4 GB checkpoint).
 */
import { existsSync } from 'node:fs'
import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_VOICE_BASE_MODEL } from '../../../schema/params/index.ts'
import { type Stack, startStack, waitFor } from '../../helpers/stack.ts'
import { writeSpeakerDataset } from '../fake-f5tts/standin.ts'

const { F5TTS_DIR, F5TTS_PYTHON, MODELS_DIR } = process.env
const baseModel = process.env.F5TTS_BASE_MODEL ?? DEFAULT_VOICE_BASE_MODEL
const missing = [
  ['F5TTS_DIR', F5TTS_DIR],
  ['F5TTS_PYTHON', F5TTS_PYTHON],
  ['MODELS_DIR', MODELS_DIR],
]
  .filter(([, v]) => !v)
  .map(([k]) => k)
const skip =
  missing.length > 0
    ? `skipped: set ${missing.join(', ')} (and F5TTS_BASE_MODEL) to run against a real F5-TTS`
    : !existsSync(path.join(MODELS_DIR as string, baseModel))
      ? `skipped: no checkpoint ${baseModel} under MODELS_DIR (set F5TTS_BASE_MODEL to one that is there)`
      : null

describe.skipIf(skip !== null)(skip ?? 'train_voice on the real F5-TTS', () => {
  let stack: Stack
  beforeAll(async () => {
    stack = await startStack({
      env: { F5TTS_DIR: F5TTS_DIR!, F5TTS_PYTHON: F5TTS_PYTHON!, MODELS_DIR: MODELS_DIR! },
    })
    await writeSpeakerDataset(stack.dataDir)
  })
  afterAll(async () => {
    await stack?.close()
  })

  it('fine-tunes one epoch and stores model_last.pt and the vocab in the bucket', async () => {
    const checkoutBefore = {
      ckpts: (await readdir(path.join(F5TTS_DIR!, 'ckpts'))).sort(),
      data: (await readdir(path.join(F5TTS_DIR!, 'data'))).sort(),
    }
    const started = Date.now()
    const { status, json } = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'Ada', datasetPath: 'speaker_ds', epochs: 1, engine: 'f5tts', baseModel },
      timeoutSec: 30 * 60,
      maxAttempts: 1,
    })
    expect(status).toBe(202)
    const jobId = json.jobId as string
    const done = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 19 * 60_000)
    const seconds = (Date.now() - started) / 1000
    console.log(
      `real F5-TTS job ${done.status} in ${seconds.toFixed(1)} s`,
      JSON.stringify(done.result ?? done.error),
    )
    expect(done.error ?? null).toBe(null)
    expect(done.status).toBe('completed')
    expect(done.result).toMatchObject({ engine: 'f5tts', simulated: false, vocabSize: 2545 })

    const keys = await stack.keysUnder(`voices/${jobId}`)
    expect(keys).toEqual(
      ['manifest.json', 'model_last.pt', 'speaker.json', 'vocab.txt'].map((f) => `voices/${jobId}/${f}`),
    )
    const { artifacts } = (await (await fetch(stack.url(`/api/jobs/${jobId}/artifacts`))).json()) as {
      artifacts: { path: string; size: number; sha256: string }[]
    }
    const model = artifacts.find((a) => a.path === 'model_last.pt')
    console.log(`model_last.pt: ${model?.size} bytes, sha256 ${model?.sha256}`)
    // The real checkpoint: the full model, optimizer and EMA state (GBs), in torch.save's zip format.
    expect(model?.size).toBeGreaterThan(1e9)
    const head = await fetch(stack.url(`/api/jobs/${jobId}/artifacts/model_last.pt`), {
      headers: { range: 'bytes=0-3' },
    })
    expect(head.status).toBe(206)
    expect(Buffer.from(await head.arrayBuffer()).toString('latin1')).toBe('PK\x03\x04')
    const vocab = Buffer.from(
      await (await fetch(stack.url(`/api/jobs/${jobId}/artifacts/vocab.txt`))).arrayBuffer(),
    )
    expect(vocab.equals(await readFile(path.join(F5TTS_DIR!, 'data/Emilia_ZH_EN_pinyin/vocab.txt')))).toBe(
      true,
    )

    // The shared checkout is as it was: F5-TTS wrote its data and checkpoints in the job's scratch dir.
    expect({
      ckpts: (await readdir(path.join(F5TTS_DIR!, 'ckpts'))).sort(),
      data: (await readdir(path.join(F5TTS_DIR!, 'data'))).sort(),
    }).toEqual(checkoutBefore)
    expect((await stat(path.join(MODELS_DIR!, baseModel))).isFile()).toBe(true)
  })

  it('cancelled while training: the launcher, trainer and DataLoader workers gone, nothing in the bucket', async () => {
    const { json } = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'Ada', datasetPath: 'speaker_ds', epochs: 1, engine: 'f5tts', baseModel },
      maxAttempts: 1,
    })
    const jobId = json.jobId as string
    // Cancel once the whole tree is up: the epoch bar is drawn, then iterating the DataLoader forks its workers.
    const barOrEnd = await waitFor(
      async () => {
        const job = await stack.job(jobId)
        return job.message?.startsWith('Epoch 1/1') ||
          ['failed', 'completed', 'cancelled'].includes(job.status)
          ? job
          : null
      },
      10 * 60_000,
      'the epoch bar',
    )
    // A job that ended before training (a bad setup) fails here with its error, not after the timeout.
    expect(barOrEnd).toMatchObject({ status: 'running' })
    const running = await waitFor(
      async () => {
        const pids = await f5Processes()
        return pids.length > 10 ? pids : null
      },
      5 * 60_000,
      'the DataLoader workers',
    )
    console.log(`F5-TTS processes at cancel: ${running.length}`)
    const cancelledAt = Date.now()
    expect((await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })).status).toBeLessThan(300)
    await stack.waitStatus(jobId, ['cancelled'], 60_000)
    console.log(`cancelled in ${((Date.now() - cancelledAt) / 1000).toFixed(1)} s`)
    expect(await f5Processes()).toEqual([])
    expect(await stack.keysUnder(`voices/${jobId}`)).toEqual([])
  })
})

/** Live processes running this F5-TTS checkout's finetune_cli (the launcher names it too). */
async function f5Processes(): Promise<number[]> {
  const script = path.join(F5TTS_DIR!, 'src/f5_tts/train/finetune_cli.py')
  const out: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
    const zombie = stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z'
    if (cmdline.split('\0').includes(script) && !zombie) out.push(Number(name))
  }
  return out
}
