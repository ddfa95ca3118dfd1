import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { eq } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { GpuHost } from '../../gpu-host/host.ts'
import { jobEvents, jobs } from '../../schema/db/tables.ts'
import {
  FIXTURE_DISPATCH,
  isolatedDatabase,
  type Stack,
  startHost,
  startStack,
  waitFor,
} from '../helpers/stack.ts'

const KOHYA_WAIT = 'waiting for a GPU host with engine kohya: set KOHYA_DIR and KOHYA_PYTHON on one'

const readyz = async (host: GpuHost) => {
  const res = await fetch(`http://127.0.0.1:${host.port}/readyz`)
  return {
    status: res.status,
    body: (await res.json()) as {
      ok: boolean
      checks: Record<string, string>
      engines: Record<string, string[]>
    },
  }
}
const engineSeries = async (host: GpuHost) =>
  (await (await fetch(`http://127.0.0.1:${host.port}/metrics`)).text())
    .split('\n')
    .filter((l) => l.startsWith('gpu_worker_engine_available{'))
    .sort()

describe('engines per host', () => {
  let stack: Stack
  let capable: GpuHost | undefined
  let db: Awaited<ReturnType<typeof isolatedDatabase>> | undefined
  let kohyaDir: string
  let comfyui: Server
  let comfyuiUp = true
  let kohyaEnv: Record<string, string>

  /** A kohya fixture job added straight to the queue (another producer), run by the `ok` fixture. */
  const addJob = async (params: Record<string, unknown>): Promise<string> => {
    const jobId = `eng-${randomUUID().slice(0, 8)}`
    await stack.queue.add(
      'train_lora',
      { jobId, type: 'train_lora', params: { mode: 'ok', steps: 2, stepMs: 20, ...params } },
      { jobId },
    )
    return jobId
  }
  const eventsOf = (jobId: string) =>
    stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId))

  beforeAll(async () => {
    // A real sd-scripts checkout is not needed to be advertised: its script and a runnable interpreter are.
    kohyaDir = await mkdtemp(path.join(tmpdir(), 'sd-scripts-'))
    await writeFile(path.join(kohyaDir, 'train_network.py'), '')
    // ComfyUI's health route, for the readiness check.
    comfyui = createServer((req, res) => {
      res.statusCode = comfyuiUp && req.url === '/system_stats' ? 200 : 503
      res.end('{}')
    })
    await new Promise<void>((r) => comfyui.listen(0, '127.0.0.1', r))
    kohyaEnv = {
      KOHYA_DIR: kohyaDir,
      KOHYA_PYTHON: process.execPath,
      COMFYUI_URL: `http://127.0.0.1:${(comfyui.address() as AddressInfo).port}`,
      // The capable host's own default: a job keeps the engine the first host gave it.
      DEFAULT_ENGINE_TRAIN_LORA: 'simulate',
    }
    // The reconciler runs (on a database of its own): it must leave a job that waits for an engine alone.
    db = await isolatedDatabase()
    stack = await startStack({
      handlerModules: { train_lora: FIXTURE_DISPATCH },
      // This host (and the gateway) default train_lora to kohya, which this host lacks.
      env: { DEFAULT_ENGINE_TRAIN_LORA: 'kohya' },
      databaseUrl: db.url,
      reconciler: { intervalMs: 200, graceMs: 200 },
      engineWait: { baseMs: 200, maxMs: 1000 },
    })
  })
  afterAll(async () => {
    await capable?.close()
    await stack?.close()
    await db?.drop()
    await new Promise<void>((r) => comfyui.close(() => r()))
    await rm(kohyaDir, { recursive: true, force: true })
  })

  it('a host without real engines advertises simulate only, at /readyz and in its metric', async () => {
    const { status, body } = await readyz(stack.host)
    expect(status).toBe(200)
    expect(body.engines).toEqual({
      train_lora: ['simulate'],
      train_voice: ['simulate'],
      render_video: ['simulate'],
    })
    expect(body.checks.comfyui).toBeUndefined()
    expect(await engineSeries(stack.host)).toEqual([
      'gpu_worker_engine_available{type="render_video",engine="comfyui"} 0',
      'gpu_worker_engine_available{type="render_video",engine="simulate"} 1',
      'gpu_worker_engine_available{type="train_lora",engine="kohya"} 0',
      'gpu_worker_engine_available{type="train_lora",engine="simulate"} 1',
      'gpu_worker_engine_available{type="train_voice",engine="f5tts"} 0',
      'gpu_worker_engine_available{type="train_voice",engine="simulate"} 1',
    ])
  })

  it('a job for an engine no host has waits, delayed without an attempt, saying what to configure', async () => {
    const jobId = await addJob({ engine: 'kohya' })
    const waiting = await waitFor(
      async () => {
        const body = await stack.job(jobId)
        return body.message === KOHYA_WAIT ? body : null
      },
      10_000,
      'the waiting message',
    )
    expect(waiting).toMatchObject({ status: 'queued', attempt: 0, progress: 0 })
    // Several re-checks (200 ms doubling to 1 s) and a reconciler pass or more later: still waiting,
    // still no attempt, the message published once, and the job taken a handful of times, not spun on.
    await sleep(2500)
    expect(await stack.job(jobId)).toMatchObject({ status: 'queued', attempt: 0, message: KOHYA_WAIT })
    expect(await stack.attempts(jobId)).toEqual([])
    // Between re-checks it is delayed; a re-check holds it `active` for a moment, which a single sample
    // can hit on a loaded machine.
    await waitFor(async () => (await stack.queue.getJobState(jobId)) === 'delayed', 5000, 'delayed')
    const job = await stack.queue.getJob(jobId)
    expect(job?.attemptsMade).toBe(0)
    expect(job?.attemptsStarted).toBeGreaterThanOrEqual(2)
    expect(job?.attemptsStarted).toBeLessThanOrEqual(9)
    const events = await eventsOf(jobId)
    expect(events.filter((e) => e.message === KOHYA_WAIT)).toHaveLength(1)
  })

  it('a waiting job can be cancelled; a job the queue lost meanwhile is added again and still waits', async () => {
    const cancelled = await addJob({ engine: 'kohya' })
    await waitFor(async () => (await stack.job(cancelled)).message === KOHYA_WAIT, 10_000, 'waiting')
    const res = await fetch(stack.url(`/api/jobs/${cancelled}/cancel`), { method: 'POST' })
    expect(res.status).toBe(202)
    expect(await stack.job(cancelled)).toMatchObject({ status: 'cancelled' })
    expect(await stack.queue.getJob(cancelled)).toBeUndefined()

    // Redis loses the waiting job: the reconciler adds it again from its row, and it waits again.
    const lost = await addJob({ engine: 'kohya' })
    await waitFor(async () => (await stack.job(lost)).message === KOHYA_WAIT, 10_000, 'waiting')
    await waitFor(async () => (await stack.queue.getJobState(lost)) === 'delayed', 5000, 'delayed')
    await (await stack.queue.getJob(lost))?.remove()
    await waitFor(async () => (await stack.queue.getJob(lost)) !== undefined, 10_000, 'the job re-added')
    await waitFor(async () => (await stack.job(lost)).message === KOHYA_WAIT, 10_000, 'waiting again')
    expect(await stack.job(lost)).toMatchObject({ status: 'queued', attempt: 0 })
    expect((await stack.queue.getJob(lost))?.data.params).toMatchObject({ engine: 'kohya' })
  })

  it('a job that names no engine gets the host default, written into the job and its row', async () => {
    const jobId = await addJob({})
    await waitFor(async () => (await stack.job(jobId)).message === KOHYA_WAIT, 10_000, 'waiting')
    expect((await stack.job(jobId)).params).toMatchObject({ engine: 'kohya' })
    expect((await stack.queue.getJob(jobId))?.data.params).toMatchObject({ mode: 'ok', engine: 'kohya' })
  })

  it('fails a job for an engine its type does not have as invalid_params, naming params.engine', async () => {
    // render_video runs its real handler here (only train_lora is the fixture).
    const jobId = `eng-${randomUUID().slice(0, 8)}`
    await stack.queue.add(
      'render_video',
      { jobId, type: 'render_video', params: { engine: 'kohya' } },
      { jobId },
    )
    const body = await stack.waitStatus(jobId, ['failed'], 20_000)
    expect(body.error).toMatchObject({ reason: 'invalid_params' })
    expect(body.error?.message).toContain('params.engine')
  })

  it('waiting jobs run once a host with the engine starts, which advertises it', async () => {
    const waiting = (await stack.database.db.select().from(jobs).where(eq(jobs.status, 'queued'))).map(
      (r) => r.id,
    )
    // The first job, the re-added one and the one with the host default.
    expect(waiting).toHaveLength(3)
    capable = await startHost(stack, {
      env: kohyaEnv,
      handlerModules: { train_lora: FIXTURE_DISPATCH },
      engineWait: { baseMs: 200, maxMs: 1000 },
    })
    const host = capable
    const { status, body } = await readyz(host)
    expect(status).toBe(200)
    expect(body.engines).toEqual({
      train_lora: ['simulate', 'kohya'],
      train_voice: ['simulate'],
      render_video: ['simulate', 'comfyui'],
    })
    expect(body.checks.comfyui).toBe('ok')
    expect(await engineSeries(host)).toContain(
      'gpu_worker_engine_available{type="train_lora",engine="kohya"} 1',
    )
    expect(await engineSeries(host)).toContain(
      'gpu_worker_engine_available{type="render_video",engine="comfyui"} 1',
    )

    for (const jobId of waiting) {
      const done = await stack.waitStatus(jobId, ['completed', 'failed'], 20_000)
      expect(done).toMatchObject({ status: 'completed', attempt: 1 })
      const attempts = await stack.attempts(jobId)
      expect(attempts.map((a) => a.host)).toEqual([host.hostId])
      // The capable host's own default is simulate: the job ran as the first host resolved it.
      expect((await stack.queue.getJob(jobId))?.data.params).toMatchObject({ engine: 'kohya' })
    }
  })

  it('with both hosts up, kohya jobs run only on the host that has kohya; simulate jobs on either', async () => {
    const host = capable as GpuHost
    const kohya = await Promise.all(Array.from({ length: 5 }, () => addJob({ engine: 'kohya' })))
    const simulate = await Promise.all(
      Array.from({ length: 5 }, () => addJob({ engine: 'simulate', steps: 4, stepMs: 50 })),
    )
    for (const jobId of [...kohya, ...simulate])
      expect(await stack.waitStatus(jobId, ['completed', 'failed'], 30_000)).toMatchObject({
        status: 'completed',
        attempt: 1,
      })
    for (const jobId of kohya) expect((await stack.attempts(jobId)).map((a) => a.host)).toEqual([host.hostId])
    const simulateHosts = new Set<string>()
    for (const jobId of simulate) for (const a of await stack.attempts(jobId)) simulateHosts.add(a.host)
    // The host without kohya goes on running what it can (it is idle while the other runs kohya jobs).
    expect(simulateHosts.has(stack.config.hostId)).toBe(true)
  })

  it("a host whose ComfyUI does not answer is not ready, and says it's ComfyUI", async () => {
    comfyuiUp = false
    try {
      const { status, body } = await readyz(capable as GpuHost)
      expect(status).toBe(503)
      expect(body.checks.comfyui).toBe('ComfyUI at COMFYUI_URL answered 503')
      expect(body.checks.redis).toBe('ok')
    } finally {
      comfyuiUp = true
    }
  })
})

describe('DEFAULT_ENGINE_<TYPE> at the gateway', () => {
  let stack: Stack
  beforeAll(async () => {
    stack = await startStack({ withHost: false, env: { DEFAULT_ENGINE_TRAIN_LORA: 'kohya' } })
  })
  afterAll(() => stack?.close())

  it('names the engine in the stored row and the queued job before either is written', async () => {
    const body = {
      type: 'train_lora',
      jobId: `dflt-${randomUUID().slice(0, 8)}`,
      params: { baseModel: 'sd15', datasetPath: 'ds' },
    }
    const first = await stack.post(body)
    expect(first.status).toBe(202)
    const jobId = first.json.jobId as string
    expect((await stack.job(jobId)).params).toEqual({
      baseModel: 'sd15',
      datasetPath: 'ds',
      engine: 'kohya',
    })
    expect((await stack.queue.getJob(jobId))?.data.params).toEqual({
      baseModel: 'sd15',
      datasetPath: 'ds',
      engine: 'kohya',
    })
    // The same body again is the same job, and so is the body that names the engine it resolved to.
    expect(await stack.post(body)).toMatchObject({ status: 200, json: { jobId } })
    expect(await stack.post({ ...body, params: { ...body.params, engine: 'kohya' } })).toMatchObject({
      status: 200,
      json: { jobId },
    })
    // Another engine under the same id is another request.
    expect((await stack.post({ ...body, params: { ...body.params, engine: 'simulate' } })).status).toBe(409)
  })

  it('keeps an engine the job names; types with no default get their first engine, simulate', async () => {
    const named = await stack.post({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds', engine: 'simulate' },
    })
    expect((await stack.job(named.json.jobId as string)).params).toMatchObject({ engine: 'simulate' })
    const voice = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'a', datasetPath: 'ds' },
    })
    expect(voice.status).toBe(202)
    expect((await stack.job(voice.json.jobId as string)).params).toMatchObject({ engine: 'simulate' })
  })

  it('still refuses an engine the type does not have, naming params.engine', async () => {
    const res = await stack.post({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds', engine: 'f5tts' },
    })
    expect(res.status).toBe(400)
    expect(JSON.stringify(res.json)).toContain('params.engine')
  })
})
