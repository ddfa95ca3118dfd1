/**
 * GPU packing on real hosts (real Redis, Postgres, s3rver, job processes) with a stand-in `nvidia-smi`
 * first on PATH (tests/fixtures/nvidia-smi), its GPUs set per test: several jobs on one large GPU up to
 * MAX_JOBS_PER_GPU, jobs spread over GPUs, MIG instances as devices, a GPU another process fills, an
 * exclusive job; nothing starts without room, and a job that waits loses no attempt.
 */
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import * as v from 'valibot'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { GpuHost } from '../../gpu-host/host.ts'
import { type HostEntry, HostsBody } from '../../schema/hosts.ts'
import { type Stack, startHost, startStack, waitFor } from '../helpers/stack.ts'

const STAND_IN = fileURLToPath(new URL('../fixtures/nvidia-smi/', import.meta.url))
const HOLDS_GPU = fileURLToPath(new URL('../fixtures/handlers/holds-gpu.ts', import.meta.url))
const MIB = 1024 * 1024

interface Scenario {
  gpus: {
    index: number
    uuid: string
    name: string
    memoryTotalMb: number
    mig?: { profile: string; uuid: string; gpuInstanceId?: number }[]
  }[]
  processes?: { pid: number; name: string; gpuUuid: string; usedMb: number }[]
}

const gpu = (index: number, memoryTotalMb: number, mig?: Scenario['gpus'][number]['mig']) => ({
  index,
  uuid: `GPU-${String(index).padStart(8, '0')}-1111-2222-3333-444444444444`,
  name: 'NVIDIA H200',
  memoryTotalMb,
  ...(mig ? { mig } : {}),
})

interface HeldResult {
  cudaVisibleDevices: string | null
  gpu: { uuid: string | null; vramTotalMb: number | null; vramReservedMb: number | null }
}

describe('GPU packing', () => {
  let stack: Stack
  let scenarioFile: string
  const saved = { PATH: process.env.PATH, NVIDIA_SMI_SCENARIO: process.env.NVIDIA_SMI_SCENARIO }

  beforeAll(async () => {
    stack = await startStack({ withHost: false })
    scenarioFile = path.join(stack.dataDir, 'nvidia-smi.json')
    // Hosts of this file run in this process: each reads the GPUs of the scenario written before it.
    process.env.PATH = `${STAND_IN}${path.delimiter}${process.env.PATH ?? ''}`
    process.env.NVIDIA_SMI_SCENARIO = scenarioFile
  })
  afterAll(async () => {
    process.env.PATH = saved.PATH
    if (saved.NVIDIA_SMI_SCENARIO === undefined) delete process.env.NVIDIA_SMI_SCENARIO
    else process.env.NVIDIA_SMI_SCENARIO = saved.NVIDIA_SMI_SCENARIO
    await stack?.close()
  })

  const setGpus = (s: Scenario) => writeFile(scenarioFile, JSON.stringify(s))
  const open = (gate: string) => writeFile(path.join(stack.dataDir, gate), '')

  /** A host on the stand-in's GPUs whose train_lora jobs hold their device until their gate opens. */
  const withHost = async (maxJobsPerGpu: number, body: (host: GpuHost) => Promise<void>) => {
    const host = await startHost(stack, {
      env: { MAX_JOBS_PER_GPU: String(maxJobsPerGpu) },
      handlerModules: { train_lora: HOLDS_GPU },
      heartbeatMs: 100,
    })
    try {
      await body(host)
    } finally {
      await host.close()
    }
  }

  /** A job straight on the queue, as any producer may add one, with its own `gpu` needs. */
  const add = async (gate: string, jobGpu: { vramMb?: number; exclusive?: boolean }) => {
    const jobId = `pack-${randomUUID().slice(0, 8)}`
    await stack.queue.add(
      'train_lora',
      { jobId, type: 'train_lora', params: { mode: 'holds-gpu', gate }, gpu: jobGpu },
      { jobId },
    )
    return jobId
  }

  const statusOf = (jobId: string) =>
    stack.job(jobId).then(
      (j) => j.status,
      () => 'none',
    )
  const runningOf = async (ids: string[]) => {
    const statuses = await Promise.all(ids.map(statusOf))
    return ids.filter((_, i) => statuses[i] === 'running')
  }
  const waitRunning = (ids: string[], n: number) =>
    waitFor(async () => ((await runningOf(ids)).length === n ? true : null), 30_000, `${n} jobs running`)
  /** Still none of `ids` started a little later: no attempt, not running. */
  const expectWaiting = async (ids: string[]) => {
    await sleep(1500)
    for (const id of ids) {
      expect(await stack.attempts(id), id).toEqual([])
      expect(await statusOf(id), id).not.toBe('running')
    }
  }
  const hostEntry = async (host: GpuHost): Promise<HostEntry> => {
    const res = await fetch(stack.url('/api/hosts'))
    const entry = v.parse(HostsBody, await res.json()).hosts.find((h) => h.hostId === host.hostId)
    if (!entry) throw new Error('host not listed')
    return entry
  }
  /** Waits for a beat that `accept` likes (the heartbeat lags the host by up to a beat). */
  const beat = (host: GpuHost, accept: (e: HostEntry) => boolean) =>
    waitFor(async () => {
      const e = await hostEntry(host)
      return accept(e) ? e : null
    }, 10_000)
  const results = async (ids: string[]) => {
    const done = await Promise.all(ids.map((id) => stack.waitStatus(id)))
    for (const j of done) expect(j.status, j.jobId).toBe('completed')
    // Waiting for a GPU cost none of them an attempt.
    for (const id of ids) expect((await stack.attempts(id)).length, id).toBe(1)
    return done.map((j) => j.result as unknown as HeldResult)
  }
  const gauge = async (host: GpuHost, name: string) =>
    (await host.metrics.registry.getSingleMetric(name)?.get())?.values.map((x) => [x.labels.UUID, x.value])

  it('packs one large GPU with several jobs at once, up to MAX_JOBS_PER_GPU', async () => {
    const h200 = gpu(0, 143_771)
    await setGpus({ gpus: [h200] })
    await withHost(3, async (host) => {
      const ids = await Promise.all([1, 2, 3, 4].map(() => add('one-gpu', { vramMb: 8_000 })))
      await waitRunning(ids, 3)
      const running = await runningOf(ids)
      await expectWaiting(ids.filter((id) => !running.includes(id)))
      const e = await beat(host, (b) => b.gpus[0]?.jobs === 3)
      expect(e.gpus[0]).toMatchObject({ memoryReservedMb: 24_000, memoryFreeMb: 143_771 - 24_000 })
      expect(e.slots.list[0]).toMatchObject({ jobs: 3, busy: true, memoryReservedMb: 24_000 })
      expect(await gauge(host, 'gpu_worker_running_jobs_per_gpu')).toEqual([[h200.uuid, 3]])
      expect(await gauge(host, 'gpu_worker_gpu_memory_reserved_bytes')).toEqual([[h200.uuid, 24_000 * MIB]])
      expect(await gauge(host, 'gpu_worker_gpu_memory_free_bytes')).toEqual([
        [h200.uuid, (143_771 - 24_000) * MIB],
      ])
      await open('one-gpu')
      for (const r of await results(ids)) {
        expect(r.cudaVisibleDevices).toBe(h200.uuid)
        expect(r.gpu).toMatchObject({ uuid: h200.uuid, vramTotalMb: 143_771, vramReservedMb: 8_000 })
      }
    })
  })

  it('puts back a job no GPU of the host is large enough for, saying what it needs', async () => {
    await setGpus({ gpus: [gpu(0, 81_559)] })
    await withHost(4, async () => {
      const id = await add('never', { vramMb: 200_000 })
      const job = await stack.waitJob(id, (j) => /200000 MiB/.test(j.message ?? ''), 15_000, 'its message')
      expect(job.status).toBe('queued')
      expect(job.message).toContain("this host's largest: 81559 MiB")
      expect(await stack.attempts(id)).toEqual([])
      // A cancel ends it at once, without its ever having had a device.
      expect((await fetch(stack.url(`/api/jobs/${id}/cancel`), { method: 'POST' })).status).toBe(202)
      expect((await stack.waitStatus(id)).status).toBe('cancelled')
    })
  })

  it('spreads jobs over several GPUs, as many on each as its memory holds', async () => {
    const gpus = [gpu(0, 81_559), gpu(1, 81_559)]
    await setGpus({ gpus })
    await withHost(4, async (host) => {
      const ids = await Promise.all([1, 2, 3, 4, 5].map(() => add('spread', { vramMb: 30_000 })))
      await waitRunning(ids, 4)
      const running = await runningOf(ids)
      await expectWaiting(ids.filter((id) => !running.includes(id)))
      const e = await beat(host, (b) => b.gpus.every((g) => g.jobs === 2))
      expect(e.gpus.map((g) => [g.uuid, g.memoryReservedMb, g.memoryFreeMb])).toEqual(
        gpus.map((g) => [g.uuid, 60_000, 21_559]),
      )
      await open('spread')
      const devices = (await results(ids)).map((r) => r.cudaVisibleDevices)
      for (const g of gpus) expect(devices.filter((d) => d === g.uuid).length).toBeGreaterThanOrEqual(2)
    })
  })

  it('makes each MIG instance a device with its own memory and CUDA_VISIBLE_DEVICES=MIG-<uuid>', async () => {
    const small = { profile: '1g.18gb', uuid: 'MIG-aaaaaaaa-1111-2222-3333-444444444444', gpuInstanceId: 13 }
    const large = { profile: '3g.71gb', uuid: 'MIG-bbbbbbbb-1111-2222-3333-444444444444', gpuInstanceId: 2 }
    const h200 = gpu(0, 143_771, [small, large])
    await setGpus({ gpus: [h200] })
    await withHost(4, async (host) => {
      // 1g.18gb holds one job of 16 GB (17166 MiB), 3g.71gb four (67710 MiB): the sixth waits.
      const ids = await Promise.all([1, 2, 3, 4, 5, 6].map(() => add('mig', { vramMb: 16_000 })))
      await waitRunning(ids, 5)
      const running = await runningOf(ids)
      await expectWaiting(ids.filter((id) => !running.includes(id)))
      const e = await beat(host, (b) => b.gpus[0]?.jobs === 5)
      expect(e.gpus[0]?.mig?.map((m) => [m.uuid, m.memoryTotalMb, m.jobs, m.memoryReservedMb])).toEqual([
        [small.uuid, 17_166, 1, 16_000],
        [large.uuid, 67_710, 4, 64_000],
      ])
      expect(e.slots.list.map((s) => [s.gpu?.uuid, s.mig?.profile, s.jobs])).toEqual([
        [small.uuid, small.profile, 1],
        [large.uuid, large.profile, 4],
      ])
      // Labelled to join dcgm-exporter's MIG series: its UUID is the GPU's, plus GPU_I_PROFILE and GPU_I_ID.
      const series = (await host.metrics.registry.getSingleMetric('gpu_worker_running_jobs_per_gpu')?.get())
        ?.values
      expect(series?.map((x) => [x.labels, x.value])).toEqual(
        [small, large].map((m, i) => [
          {
            gpu: '0',
            UUID: m.uuid,
            Hostname: host.metrics.host,
            GPU_I_PROFILE: m.profile,
            GPU_I_ID: String(m.gpuInstanceId),
            gpu_uuid: h200.uuid,
          },
          i === 0 ? 1 : 4,
        ]),
      )
      await open('mig')
      const got = await results(ids)
      for (const r of got) {
        expect([small.uuid, large.uuid]).toContain(r.cudaVisibleDevices)
        expect(r.gpu.uuid).toBe(r.cudaVisibleDevices)
        expect(r.gpu.vramTotalMb).toBe(r.cudaVisibleDevices === small.uuid ? 17_166 : 67_710)
        expect(r.gpu.vramReservedMb).toBe(16_000)
      }
      expect(got.filter((r) => r.cudaVisibleDevices === large.uuid).length).toBeGreaterThanOrEqual(4)
    })
  })

  it('admits nothing on a GPU another process fills until it frees the memory, and keeps the cap', async () => {
    const [g, other] = [gpu(0, 81_559), gpu(1, 81_559)]
    const ollama = { pid: 4242, name: 'ollama', gpuUuid: g.uuid, usedMb: 78_000 }
    await setGpus({ gpus: [g, other], processes: [ollama] })
    // Four jobs may run at once on two GPUs, two on each: the filled one takes none.
    await withHost(2, async (host) => {
      const ids = await Promise.all([1, 2, 3].map(() => add('filled', { vramMb: 8_000 })))
      await waitRunning(ids, 2)
      const running = await runningOf(ids)
      const third = ids.find((id) => !running.includes(id)) ?? ''
      await expectWaiting([third])
      const e = await beat(host, (b) => b.gpus[1]?.jobs === 2)
      expect(e.gpus.map((x) => [x.memoryUsedMb, x.memoryReservedMb, x.memoryFreeMb, x.jobs])).toEqual([
        [78_000, 0, 81_559 - 78_000, 0],
        [0, 16_000, 81_559 - 16_000, 2],
      ])
      await setGpus({ gpus: [g, other], processes: [{ ...ollama, usedMb: 20_000 }] })
      await waitRunning([third], 1)
      await open('filled')
      const got = await results(ids)
      expect(got[ids.indexOf(third)]?.cudaVisibleDevices).toBe(g.uuid)
      for (const id of running) expect(got[ids.indexOf(id)]?.cudaVisibleDevices).toBe(other.uuid)
    })
  })

  it('ends a job waiting for room at once when cancelled, and requeues it unattempted at shutdown', async () => {
    const g = gpu(0, 81_559)
    const full = { pid: 4343, name: 'ComfyUI', gpuUuid: g.uuid, usedMb: 80_000 }
    await setGpus({ gpus: [g], processes: [full] })
    const cancelled = await add('cancelled', { vramMb: 8_000 })
    const kept = await add('kept', { vramMb: 8_000 })
    await withHost(4, async () => {
      await waitFor(() => stack.job(cancelled).then(() => true), 15_000, 'the first row')
      const res = await fetch(stack.url(`/api/jobs/${cancelled}/cancel`), { method: 'POST' })
      expect(res.status).toBe(202)
      expect((await stack.waitStatus(cancelled, ['cancelled'], 5_000)).status).toBe('cancelled')
      // The second job is now the one held waiting; the host stops with it still unplaced. Active for a
      // while, not only for the moment between a fetch and a put-back (it may have been taken, found
      // another job waiting first and put back for VRAM_RETRY_MS, while the first still waited).
      const keptState = async () => (await stack.queue.getJob(kept))?.getState()
      await waitFor(
        async () => {
          if ((await keptState()) !== 'active') return false
          await sleep(2000)
          return (await keptState()) === 'active'
        },
        20_000,
        'the second job held by the host',
      )
      await expectWaiting([kept])
    })
    expect(await (await stack.queue.getJob(kept))?.getState()).toBe('waiting')
    expect(await statusOf(kept)).toBe('queued')
    expect(await stack.attempts(kept)).toEqual([])
    // Room at last, on a new host: it runs as its first attempt.
    await setGpus({ gpus: [g] })
    await withHost(4, async () => {
      await waitRunning([kept], 1)
      await open('kept')
      const [r] = await results([kept])
      expect(r?.cudaVisibleDevices).toBe(g.uuid)
    })
  })

  it('calls a job put back while another waited for room back as room comes, not after its delay', async () => {
    // Room for one 16 GB job at a time: the second waits held by the host, the third is put back.
    await setGpus({ gpus: [gpu(0, 20_000)] })
    await withHost(4, async () => {
      const first = await add('cb-first', { vramMb: 16_000 })
      await waitRunning([first], 1)
      const second = await add('cb-second', { vramMb: 16_000 })
      await waitFor(
        async () => (await (await stack.queue.getJob(second))?.getState()) === 'active',
        15_000,
        'the second held',
      )
      const third = await add('cb-third', { vramMb: 16_000 })
      const stateOf = async () => (await stack.queue.getJob(third))?.getState()
      await waitFor(async () => (await stateOf()) === 'delayed', 15_000, 'the third put back')
      await open('cb-first')
      await waitRunning([second], 1)
      // Held next (active), well inside the 5 s it was put back for.
      await waitFor(async () => (await stateOf()) === 'active', 3_500, 'the third called back')
      expect(await stack.attempts(third)).toEqual([])
      await open('cb-second')
      await waitRunning([third], 1)
      await open('cb-third')
      await results([first, second, third])
    })
  })

  it('gives an exclusive job a GPU of its own: it waits for the GPU to empty, and blocks sharing', async () => {
    await setGpus({ gpus: [gpu(0, 143_771)] })
    await withHost(4, async () => {
      const first = await add('ex-first', { vramMb: 8_000 })
      await waitRunning([first], 1)
      const trainer = await add('ex-trainer', { vramMb: 8_000, exclusive: true })
      await waitFor(() => stack.job(trainer).then(() => true), 15_000, 'the trainer row')
      // Added after the trainer: it must not take the GPU the trainer waits for.
      const later = await add('ex-later', { vramMb: 8_000 })
      await expectWaiting([trainer, later])
      await open('ex-first')
      await waitRunning([trainer], 1)
      await expectWaiting([later])
      await open('ex-trainer')
      await waitRunning([later], 1)
      await open('ex-later')
      await results([first, trainer, later])
    })
  })

  it('takes a job’s gpu over its handler’s at submit, and refuses a bad one naming the field', async () => {
    const submit = (gpuField: unknown) =>
      stack.post({
        type: 'train_voice',
        params: { speakerName: 'Ada', datasetPath: 'voice_ds' },
        gpu: gpuField,
      })
    for (const [bad, field] of [
      [{ vramMb: -1 }, 'gpu.vramMb'],
      [{ vramMb: 1.5 }, 'gpu.vramMb'],
      [{ exclusive: 'yes' }, 'gpu.exclusive'],
      [{ vram: 8 }, 'gpu.vram'],
    ] as const) {
      const res = await submit(bad)
      expect(res.status, JSON.stringify(bad)).toBe(400)
      expect(JSON.stringify(res.json), JSON.stringify(bad)).toContain(field)
    }
    const ok = await submit({ vramMb: 2_000, exclusive: true })
    expect(ok.status).toBe(202)
    const job = await stack.queue.getJob(String(ok.json.jobId))
    expect(job?.data.gpu).toEqual({ vramMb: 2_000, exclusive: true })
  })
})
