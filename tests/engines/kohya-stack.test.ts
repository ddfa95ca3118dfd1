import { afterEach, describe, expect, it } from 'vitest'
import { readSafetensors } from '../../functions/formats/safetensors.ts'
import type { JobLogsBody } from '../../schema/api.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { groupGone, processGone, type Stack, startStack, waitFor } from '../helpers/stack.ts'
import { KOHYA_PYTHON, type KohyaFixture, makeKohyaFixture } from './fake-kohya/fixture.ts'

let stack: Stack | undefined
let kohya: KohyaFixture | undefined
afterEach(async () => {
  await stack?.close()
  await kohya?.cleanup()
  stack = undefined
  kohya = undefined
})

const start = async (scenario: Parameters<typeof makeKohyaFixture>[0]) => {
  kohya = await makeKohyaFixture(scenario)
  stack = await startStack({
    env: { KOHYA_DIR: kohya.kohyaDir, KOHYA_PYTHON: KOHYA_PYTHON, MODELS_DIR: kohya.modelsDir },
  })
  return { stack, kohya }
}

const job = (jobId: string) => ({
  type: 'train_lora',
  jobId,
  params: { engine: 'kohya', baseModel: 'tiny-sd15', datasetPath: 'ds', epochs: 1, rank: 4, resolution: 64 },
})

const events = async (s: Stack, jobId: string): Promise<ProgressEvent[]> => {
  const res = await fetch(s.url(`/api/jobs/${jobId}/events?after=0`))
  const text = await res.text()
  return text
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => JSON.parse(l.slice(6)) as ProgressEvent)
}

describe('train_lora on kohya through the whole stack (stand-in sd-scripts)', () => {
  it('gateway -> queue -> GPU host -> job process -> trainer -> bucket: lora.safetensors with its ss_* metadata', async () => {
    const { stack: s } = await start({ stepMs: 30 })
    const posted = await s.post(job('kohya-stack-1'))
    expect(posted.status).toBe(202)
    const done = await s.waitStatus('kohya-stack-1', ['completed', 'failed'], 60_000)
    expect(done.error ?? null).toBeNull()
    expect(done.status).toBe('completed')
    expect(done.result).toMatchObject({ engine: 'kohya', simulated: false, trainImages: 4 })

    expect(await s.keysUnder('loras/kohya-stack-1')).toEqual([
      'loras/kohya-stack-1/lora.safetensors',
      'loras/kohya-stack-1/manifest.json',
      'loras/kohya-stack-1/training_config.toml',
    ])
    const res = await fetch(s.url('/api/jobs/kohya-stack-1/artifacts/lora.safetensors'))
    expect(res.status).toBe(200)
    const lora = readSafetensors(new Uint8Array(await res.arrayBuffer()))
    expect(lora.metadata).toMatchObject({
      ss_network_module: 'networks.lora',
      ss_network_dim: '4',
      ss_output_name: 'lora',
    })
    // The dataset's images sit right in "ds": one subset, repeated once, captions in .txt.
    expect(JSON.parse(lora.metadata.ss_datasets ?? '')[0].subsets).toEqual([
      expect.objectContaining({ image_dir: 'ds', num_repeats: 1, img_count: 4 }),
    ])

    const messages = (await events(s, 'kohya-stack-1')).map((e) => e.message)
    expect(messages).toContain('Epoch 1/1 - loss=1.12')
    expect(messages).toContain('Epoch 1/1 - loss=1.2')

    // What the trainer printed is in the job's logs (echoed by the job process, kept by the host), its
    // tqdm bar ending on its final state (the thinning of redraws is engine-process.test.ts's).
    const logs = (await (await fetch(s.url('/api/jobs/kohya-stack-1/logs'))).json()) as JobLogsBody
    const texts = logs.lines.map((l) => `${l.stream}:${l.text}`)
    expect(texts).toContain('stdout:running training / 学習開始')
    expect(texts).toContain('stdout:epoch 1/1')
    expect(texts.some((t) => t.startsWith('stderr:') && t.includes('Using v1 tokenizer'))).toBe(true)
    const bars = texts.filter((t) => t.startsWith('stderr:steps:'))
    expect(bars.at(-1)).toContain('3/3')
  })

  it('cancel mid-run: the trainer ran in the job process group, which is gone; nothing in the bucket', async () => {
    const { stack: s, kohya: k } = await start({ stepMs: 30, hangAtStep: 1 })
    await s.post(job('kohya-stack-2'))
    await waitFor(
      async () => (await s.job('kohya-stack-2')).message?.includes('loss='),
      60_000,
      'a loss in the progress',
    )
    const jobPid = (await s.attempts('kohya-stack-2')).at(-1)?.pid
    expect(jobPid).toBeGreaterThan(0)
    const calls = await k.calls()
    expect(calls.map((c) => c.role)).toEqual(['launcher', 'trainer'])
    // Not detached: the host's group kill reaches them.
    for (const c of calls) expect(c.pgid).toBe(jobPid)

    const cancelled = await fetch(s.url('/api/jobs/kohya-stack-2/cancel'), { method: 'POST' })
    expect(cancelled.status).toBeLessThan(300)
    const body = await s.waitStatus('kohya-stack-2', ['cancelled'], 30_000)
    expect(body.status).toBe('cancelled')
    expect(await groupGone(jobPid!)).toBe(true)
    for (const c of calls) expect(await processGone(c.pid)).toBe(true)
    expect(await s.keysUnder('loras/kohya-stack-2')).toEqual([])
  })
})
