import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import type { ProgressEvent } from '../../schema/events.ts'
import { freePort, redisServerArgs } from '../helpers/ports.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  type S3Server,
  type Stack,
  startS3,
  startStack,
  TEST_DATABASE_URL,
  waitFor,
} from '../helpers/stack.ts'
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {})
})

/** Records every event of a job over one WebSocket that stays open. */
function record(stack: Stack, jobId: string): { events: ProgressEvent[]; close(): void } {
  const events: ProgressEvent[] = []
  let ws: WebSocket | undefined
  let closed = false
  const open = () => {
    ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws`)
    ws.on('open', () => ws?.send(JSON.stringify({ op: 'subscribe', jobId, after: events.at(-1)?.seq ?? 0 })))
    ws.on('message', (d) => {
      const msg = JSON.parse(d.toString()) as ProgressEvent & { op?: string }
      if (!msg.op) events.push(msg)
    })
    ws.on('close', () => {
      if (!closed) setTimeout(open, 200)
    })
    ws.on('error', () => {})
  }
  open()
  return {
    events,
    close: () => {
      closed = true
      ws?.close()
    },
  }
}

describe('Redis restarted mid-run (AOF on)', () => {
  it('reconnects by itself; the running and the queued job both complete and no event is lost', async () => {
    const port = await freePort()
    const dir = await mkdtemp(path.join(tmpdir(), 'redis-aof-'))
    const args = redisServerArgs(port, dir, { aof: true })
    let redis: ChildProcess = spawn('redis-server', args, { stdio: 'ignore' })
    const stopRedis = () =>
      new Promise<void>((resolve) => {
        if (redis.exitCode !== null) return resolve()
        redis.once('exit', () => resolve())
        redis.kill('SIGTERM')
      })
    cleanups.push(async () => {
      await stopRedis()
      await rm(dir, { recursive: true, force: true })
    })
    await sleep(300)
    const stack = await startStack({
      redisUrl: `redis://127.0.0.1:${port}`,
      handlerModules: { train_lora: FIXTURE_DISPATCH },
    })
    cleanups.push(() => stack.close())

    const running = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 40, stepMs: 100 })
    const queued = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 3, stepMs: 10 })
    await waitFor(
      async () => ((await stack.job(running).catch(() => null))?.progress ?? 0) > 10,
      20_000,
      'progress',
    )
    const watch = record(stack, running)
    await sleep(300)

    // SIGTERM makes redis-server write its AOF and exit; then the same data comes back on the same port.
    await stopRedis()
    await sleep(500)
    redis = spawn('redis-server', args, { stdio: 'ignore' })

    expect(await stack.waitStatus(running, ['completed', 'failed'], 40_000)).toMatchObject({
      status: 'completed',
      attempt: 1,
    })
    expect(await stack.waitStatus(queued, ['completed', 'failed'], 40_000)).toMatchObject({
      status: 'completed',
    })
    await waitFor(
      async () => watch.events.at(-1)?.status === 'completed',
      10_000,
      'the subscriber to see the end',
    )
    watch.close()
    const seqs = watch.events.map((e) => e.seq)
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBe((seqs[i - 1] ?? 0) + 1)
  })
})

describe('Postgres unreachable', () => {
  it('answers 503 to submissions while the running job goes on and its state catches up', async () => {
    const proxy: TcpProxy = await startTcpProxy(Number(new URL(TEST_DATABASE_URL).port || 5432))
    cleanups.push(() => proxy.close())
    const url = new URL(TEST_DATABASE_URL)
    url.port = String(proxy.port)
    const stack = await startStack({
      databaseUrl: url.toString(),
      handlerModules: { train_lora: FIXTURE_DISPATCH },
    })
    cleanups.push(() => stack.close())

    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 30, stepMs: 100 })
    await waitFor(
      async () => ((await stack.job(jobId).catch(() => null))?.progress ?? 0) > 5,
      20_000,
      'progress',
    )
    await proxy.cut()

    const res = await stack.post({ type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds' } })
    expect(res.status).toBe(503)
    expect(res.json).toMatchObject({ error: { code: 'backend_unavailable' } })
    expect(String((res.json.error as { message: string }).message)).toMatch(/Postgres/)
    const ready = await fetch(stack.url('/readyz'))
    expect(ready.status).toBe(503)
    expect(((await ready.json()) as { checks: { postgres: string } }).checks.postgres).toMatch(/^down/)

    await sleep(4000)
    await proxy.restore()
    const body = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    expect(body).toMatchObject({ status: 'completed', progress: 100, attempt: 1 })
    expect((await fetch(stack.url('/readyz'))).status).toBe(200)
  })
})

describe('S3 stopped', () => {
  it('fails the attempt as a retryable storage error; with S3 back, jobs complete', async () => {
    const port = await freePort()
    let s3: S3Server = await startS3(port)
    const dir = s3.dir
    cleanups.push(async () => {
      await s3.close()
      await rm(dir, { recursive: true, force: true })
    })
    const stack = await startStack({ s3, handlerModules: { train_lora: FIXTURE_DISPATCH } })
    cleanups.push(() => stack.close())

    // Long enough that S3 is down before the job's first upload even on a loaded machine (a 1 s job
    // could finish its uploads before s3.stop() returned).
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 60, stepMs: 100 })
    await stack.waitStatus(jobId, ['running'], 20_000)
    await s3.stop()
    const body = await stack.waitStatus(jobId, ['failed', 'completed'], 60_000)
    expect(body.status).toBe('failed')
    expect(body.error).toMatchObject({ reason: 'storage' })

    s3 = await startS3(port, dir)
    const next = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 2, stepMs: 10 })
    expect(await stack.waitStatus(next, ['completed', 'failed'], 30_000)).toMatchObject({
      status: 'completed',
    })

    // S3 down as an attempt starts: the last manifest cannot be removed, so the attempt ends as a
    // storage failure at once, its process stopped (a 60 s job; the wait is shorter than that).
    await s3.stop()
    const early = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 600, stepMs: 100 })
    const failed = await stack.waitStatus(early, ['failed', 'completed'], 40_000)
    expect(failed.error).toMatchObject({ reason: 'storage' })
    expect(failed.error?.message).toContain('S3 unavailable')
    expect(failed.progress).toBeLessThan(100)
    s3 = await startS3(port, dir)
  })
})
