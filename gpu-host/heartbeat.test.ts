/** The heartbeat against a real Redis: what a beat writes, its TTL, and what a clean or a dead stop leaves. */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import * as v from 'valibot'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRedis } from '../schema/clients.ts'
import { HostHeartbeat, hostStatus, KEEP_BEATS } from '../schema/hosts.ts'
import { hostKey, hostsKey } from '../schema/keys.ts'
import { TEST_REDIS_URL } from '../tests/helpers/stores.ts'
import type { RunningJob } from './attempt.ts'
import { type GpuReading, slotsFor } from './gpus.ts'
import { Heartbeat, type HeartbeatSource, heartbeatBody } from './heartbeat.ts'
import { VramLedger } from './vram-ledger.ts'

const GPUS: GpuReading[] = [
  {
    index: 0,
    uuid: 'GPU-a',
    name: 'NVIDIA H200',
    memoryUsedMb: 1000,
    memoryTotalMb: 140_000,
    utilizationPct: 37,
  },
  {
    index: 1,
    uuid: 'GPU-b',
    name: 'NVIDIA H200',
    memoryUsedMb: 0,
    memoryTotalMb: 140_000,
    utilizationPct: null,
  },
]

/**
 * A host's parts as the heartbeat reads them: two GPUs (the first with 1000 MiB taken by another process),
 * a job on the second, one waiting for a slot.
 */
function source(hostId: string, gpus: GpuReading[] | null = GPUS): HeartbeatSource {
  const slots = slotsFor(gpus, 2)
  const ledger = new VramLedger(
    slots.map((s) => ({ id: s.id, totalMb: s.gpu.vramTotalMb })),
    4,
  )
  if (gpus) ledger.observe(0, 1000)
  const running: RunningJob[] = []
  if (slots[1]) {
    ledger.reserve('job-1', 1, { vramMb: 12_000, exclusive: false })
    slots[1].busy = true
    slots[1].jobs = 1
    running.push({
      jobId: 'job-1',
      type: 'train_lora',
      cancelRequested: false,
      proc: undefined,
      reporter: undefined,
      attempt: 2,
      startedAt: Date.parse('2026-01-01T00:00:00.000Z'),
      slot: 1,
      vramMb: 12_000,
    })
  }
  running.push({
    jobId: 'job-2',
    type: 'render_video',
    cancelRequested: false,
    proc: undefined,
    reporter: undefined,
  })
  return {
    hostId,
    version: '9.9.9',
    startedAt: Date.now() - 60_000,
    closing: () => false,
    slots: () => slots,
    usage: (slot) => ledger.usage(slot.id),
    gpus: () => gpus ?? [],
    engines: () => ({
      train_lora: ['simulate', 'kohya'],
      train_voice: ['simulate'],
      render_video: ['simulate'],
    }),
    jobs: () => running,
  }
}

describe('heartbeatBody', () => {
  it('counts the slots, reserves each running job’s VRAM on its GPU, and lists the jobs', () => {
    const body = heartbeatBody(source('h1'), 5000, Date.parse('2026-01-01T00:01:00.000Z'))
    expect(v.is(HostHeartbeat, body)).toBe(true)
    expect(body.slots).toMatchObject({ total: 2, busy: 1, free: 1 })
    expect(body.slots.list[1]).toEqual({
      id: 1,
      gpu: { index: 1, uuid: 'GPU-b', name: 'NVIDIA H200' },
      busy: true,
      jobs: 1,
      memoryReservedMb: 12_000,
      memoryFreeMb: 128_000,
    })
    expect(body.gpus.map((g) => [g.memoryReservedMb, g.memoryFreeMb, g.jobs])).toEqual([
      [0, 139_000, 0],
      [12_000, 128_000, 1],
    ])
    expect(body.gpus[0]).toMatchObject({ memoryUsedMb: 1000, memoryTotalMb: 140_000, utilizationPct: 37 })
    expect(body.jobs).toEqual([
      {
        jobId: 'job-1',
        type: 'train_lora',
        attempt: 2,
        startedAt: '2026-01-01T00:00:00.000Z',
        progress: 0,
        slot: 1,
      },
      { jobId: 'job-2', type: 'render_video', attempt: null, startedAt: null, progress: 0, slot: null },
    ])
    expect(body).toMatchObject({ hostId: 'h1', version: '9.9.9', pid: process.pid, intervalMs: 5000 })
    expect(body.lastSeen).toBe('2026-01-01T00:01:00.000Z')
  })

  it('has virtual slots and no GPUs without nvidia-smi', () => {
    const body = heartbeatBody(source('h1', null), 5000, Date.now())
    expect(v.is(HostHeartbeat, body)).toBe(true)
    expect(body.gpus).toEqual([])
    expect(body.slots.list.map((s) => s.gpu)).toEqual([null, null])
    expect(body.slots.list.map((s) => [s.jobs, s.memoryFreeMb])).toEqual([
      [0, null],
      [1, null],
    ])
  })

  it('lists the MIG instances of a GPU, each with its own memory and jobs', () => {
    const gpus: GpuReading[] = [{ ...GPUS[0], index: 0, uuid: 'GPU-m', memoryUsedMb: 0 } as GpuReading]
    const listing = [
      {
        index: 0,
        name: 'NVIDIA H200',
        uuid: 'GPU-m',
        mig: [
          { profile: '1g.18gb', device: 0, uuid: 'MIG-aaaa' },
          { profile: '3g.71gb', device: 1, uuid: 'MIG-bbbb' },
        ],
      },
    ]
    const slots = slotsFor(gpus, 1, listing)
    const ledger = new VramLedger(
      slots.map((s) => ({ id: s.id, totalMb: s.gpu.vramTotalMb })),
      4,
    )
    ledger.reserve('job-1', 1, { vramMb: 20_000, exclusive: false })
    const body = heartbeatBody(
      { ...source('h1'), slots: () => slots, usage: (s) => ledger.usage(s.id), gpus: () => gpus },
      5000,
      Date.now(),
    )
    expect(v.is(HostHeartbeat, body)).toBe(true)
    expect(body.slots.list.map((s) => [s.gpu?.uuid, s.mig?.gpuUuid])).toEqual([
      ['MIG-aaaa', 'GPU-m'],
      ['MIG-bbbb', 'GPU-m'],
    ])
    expect(body.gpus[0]?.mig).toEqual([
      {
        uuid: 'MIG-aaaa',
        profile: '1g.18gb',
        device: 0,
        memoryTotalMb: 17_166,
        memoryReservedMb: 0,
        memoryFreeMb: 17_166,
        jobs: 0,
      },
      {
        uuid: 'MIG-bbbb',
        profile: '3g.71gb',
        device: 1,
        memoryTotalMb: 67_710,
        memoryReservedMb: 20_000,
        memoryFreeMb: 47_710,
        jobs: 1,
      },
    ])
    expect(body.gpus[0]).toMatchObject({ memoryReservedMb: 20_000, jobs: 1 })
  })

  it('is gone after three missed beats, draining while the host closes', () => {
    const body = heartbeatBody(source('h1'), 1000, 10_000)
    expect(hostStatus(body, 12_000)).toBe('up')
    expect(hostStatus(body, 13_001)).toBe('gone')
    expect(hostStatus({ ...body, closing: true }, 12_000)).toBe('draining')
  })
})

describe('Heartbeat', () => {
  let redis: Redis
  const prefix = `test-${randomUUID().slice(0, 8)}`

  beforeAll(async () => {
    redis = createRedis(TEST_REDIS_URL)
    await redis.connect()
  })
  afterAll(async () => {
    await redis.del(hostsKey(prefix))
    redis.disconnect()
  })

  it('writes its state under a TTL of KEEP_BEATS intervals and joins the set of hosts', async () => {
    const hb = new Heartbeat(redis, prefix, source('up-1'), { intervalMs: 1000 })
    await hb.beat()
    const raw = await redis.get(hostKey(prefix, 'up-1'))
    expect(v.parse(HostHeartbeat, JSON.parse(raw ?? 'null')).hostId).toBe('up-1')
    const ttl = await redis.pttl(hostKey(prefix, 'up-1'))
    expect(ttl).toBeGreaterThan(KEEP_BEATS * 1000 - 2000)
    expect(ttl).toBeLessThanOrEqual(KEEP_BEATS * 1000)
    expect(await redis.zrange(hostsKey(prefix), '0', '-1')).toContain('up-1')
    await hb.stop()
    expect(await redis.exists(hostKey(prefix, 'up-1'))).toBe(0)
  })

  it('keeps each host as long as its own key lives, whatever the others’ intervals', async () => {
    const slow = new Heartbeat(redis, prefix, source('slow-1'), { intervalMs: 10_000 })
    const fast = new Heartbeat(redis, prefix, source('fast-1'), { intervalMs: 10 })
    await slow.beat()
    await sleep(KEEP_BEATS * 10 + 50)
    await fast.beat()
    expect(await redis.zrange(hostsKey(prefix), '0', '-1')).toEqual(
      expect.arrayContaining(['slow-1', 'fast-1']),
    )
    await Promise.all([slow.stop(), fast.stop()])
  })

  it('beats every interval from start(), and a clean stop removes the key and the entry', async () => {
    const hb = new Heartbeat(redis, prefix, source('clean-1'), { intervalMs: 50 })
    hb.start()
    await sleep(30)
    const first = JSON.parse((await redis.get(hostKey(prefix, 'clean-1'))) ?? '{}') as HostHeartbeat
    await sleep(150)
    const later = JSON.parse((await redis.get(hostKey(prefix, 'clean-1'))) ?? '{}') as HostHeartbeat
    expect(Date.parse(later.lastSeen)).toBeGreaterThan(Date.parse(first.lastSeen))
    await hb.stop()
    expect(await redis.exists(hostKey(prefix, 'clean-1'))).toBe(0)
    expect(await redis.zrange(hostsKey(prefix), '0', '-1')).not.toContain('clean-1')
  })

  it('a host that dies leaves its key to expire, and the next beat of another host forgets it', async () => {
    const dead = new Heartbeat(redis, prefix, source('dead-1'), { intervalMs: 20 })
    dead.start()
    await sleep(10)
    await dead.stop({ remove: false })
    expect(await redis.exists(hostKey(prefix, 'dead-1'))).toBe(1)
    await sleep(KEEP_BEATS * 20 + 100)
    expect(await redis.exists(hostKey(prefix, 'dead-1'))).toBe(0)
    const alive = new Heartbeat(redis, prefix, source('alive-1'), { intervalMs: 20 })
    await alive.beat()
    expect(await redis.zrange(hostsKey(prefix), '0', '-1')).not.toContain('dead-1')
    await alive.stop()
  })

  it('the first failed beat of an outage is reported, and stopping a heartbeat that never started does nothing', async () => {
    const down = createRedis('redis://127.0.0.1:1', { maxRetriesPerRequest: 0, retryStrategy: () => null })
    down.on('error', () => {})
    const errors: unknown[] = []
    const hb = new Heartbeat(down, prefix, source('down-1'), {
      intervalMs: 50,
      onError: (e) => errors.push(e),
    })
    await new Heartbeat(down, prefix, source('never')).stop()
    hb.start()
    await sleep(400)
    await hb.stop({ remove: false })
    // Once per outage, not once per beat.
    expect(errors).toHaveLength(1)
    down.disconnect()
  })
})
