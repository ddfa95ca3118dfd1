import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { type Gateway, startGateway } from '../../gateway/server.ts'
import { CLOSE_SLOW_CLIENT } from '../../gateway/ws.ts'
import { createS3Client } from '../../schema/clients.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { emitEvent } from '../../schema/progress-log.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  quietLogger,
  type Stack,
  startStack,
  TERMINAL,
  waitFor,
} from '../helpers/stack.ts'

let stack: Stack
beforeAll(async () => {
  stack = await startStack({ handlerModules: { train_lora: FIXTURE_DISPATCH } })
})
afterAll(async () => {
  await stack?.close()
})

const isTerminal = (e: ProgressEvent) => TERMINAL.includes(e.status)

/** A client that follows one job and, when its socket drops, reconnects and resumes after its last seq. */
function follower(baseUrl: () => string, jobId: string, after?: number) {
  const events: ProgressEvent[] = []
  let connections = 0
  let stopped = false
  let ws: WebSocket | undefined
  const done = new Promise<ProgressEvent[]>((resolve) => {
    const connect = () => {
      connections += 1
      ws = new WebSocket(`${baseUrl().replace('http', 'ws')}/ws`)
      ws.on('open', () => {
        const last = events.at(-1)?.seq ?? after
        ws?.send(JSON.stringify({ op: 'subscribe', jobId, ...(last === undefined ? {} : { after: last }) }))
      })
      ws.on('message', (d) => {
        const msg = JSON.parse(d.toString()) as ProgressEvent & { op?: string }
        if (msg.op) return
        events.push(msg)
        if (isTerminal(msg)) {
          stopped = true
          ws?.close()
          resolve(events)
        }
      })
      ws.on('close', () => {
        if (!stopped) setTimeout(connect, 100)
      })
      ws.on('error', () => {})
    }
    connect()
  })
  return { events, done, connections: () => connections }
}

const expectContiguous = (events: ProgressEvent[]) => {
  for (let i = 1; i < events.length; i++)
    expect(events[i]?.seq, `event ${i}`).toBe((events[i - 1]?.seq ?? 0) + 1)
}

describe('replay and resume at every seam', () => {
  it('subscribed before the job starts: the queued state, then every event', async () => {
    // Occupy the only slot so the next job waits in the queue.
    const blocker = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 15, stepMs: 100 })
    await stack.waitStatus(blocker, ['running'])
    const { json } = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'q', datasetPath: 'ds', epochs: 1 },
    })
    const jobId = json.jobId as string
    const f = follower(() => stack.gateway.url, jobId)
    await waitFor(async () => f.events.length > 0, 5000, 'the queued state')
    expect(f.events[0]).toMatchObject({ status: 'queued', seq: 1 })
    expect((await stack.job(blocker)).status).toBe('running')
    const events = await f.done
    expectContiguous(events)
    expect(events.at(-1)).toMatchObject({ status: 'completed', progress: 100 })
    expect(events.some((e) => e.status === 'running')).toBe(true)
  })

  it('subscribed mid-run with after=N: every event after N, no gap, no duplicate at the seam', async () => {
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 30, stepMs: 50 })
    const live = await stack.waitJob(jobId, (b) => b.progress >= 30, 20_000, 'mid-run')
    const f = follower(() => stack.gateway.url, jobId, 2)
    const events = await f.done
    expect(events[0]?.seq).toBe(3)
    expect(events.length).toBeGreaterThan(live.seq - 2)
    expectContiguous(events)
  })

  it('without after: the current state first, then live', async () => {
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 30, stepMs: 50 })
    await stack.waitJob(jobId, (b) => b.progress >= 20, 20_000, 'mid-run')
    const f = follower(() => stack.gateway.url, jobId)
    const events = await f.done
    expect(events[0]?.status).toBe('running')
    expect(events[0]?.progress).toBeGreaterThanOrEqual(20)
    expectContiguous(events)
  })

  it('the gateway restarted mid-run: clients reconnect and resume from their last seq', async () => {
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 40, stepMs: 75 })
    await stack.waitStatus(jobId, ['running'])
    const port = stack.gateway.port
    let current: Gateway = stack.gateway
    const f = follower(() => `http://127.0.0.1:${port}`, jobId, 0)
    await waitFor(async () => f.events.length > 5, 20_000, 'events before the restart')
    await current.close()
    await sleep(500)
    current = await startGateway({
      config: { ...stack.config, gatewayPort: port },
      database: stack.database,
      s3: createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint }),
      logger: quietLogger(),
    })
    stack.gateway = current
    const events = await f.done
    expect(f.connections()).toBeGreaterThan(1)
    expect(events[0]?.seq).toBe(1)
    expectContiguous(events)
    expect(events.at(-1)).toMatchObject({ status: 'completed' })
  })

  it('drops a client too slow to read its events with close code 4008, without growing the gateway', async () => {
    const jobId = `slow-${stack.prefix}`
    await stack.insertJob(jobId, 'running')
    const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws?jobId=${jobId}`)
    const closed = new Promise<number>((resolve) => ws.on('close', (c) => resolve(c)))
    await new Promise((r) => ws.on('message', r))
    // Stop reading: the kernel's buffers fill, then the gateway's own send buffer grows.
    ;(ws as unknown as { _socket: { pause(): void } })._socket.pause()
    const message = 'x'.repeat(2000)
    const droppedSlow = async () =>
      /gateway_events_dropped_total\{transport="ws",reason="slow_client"\} [1-9]/.test(
        await (await fetch(stack.url('/metrics'))).text(),
      )
    let sent = 0
    while (sent < 20_000 && !(await droppedSlow())) {
      await Promise.all(
        Array.from({ length: 500 }, () =>
          emitEvent(stack.redis, {
            jobId,
            type: 'train_lora',
            status: 'running',
            progress: 1,
            message,
            attempt: 1,
            timestamp: new Date().toISOString(),
          }),
        ),
      )
      sent += 500
      await sleep(20)
    }
    // The gateway gave up on the client long before it had sent everything: its buffer stays bounded.
    expect(await droppedSlow()).toBe(true)
    expect(sent).toBeLessThan(20_000)
    // The close frame waits behind what the client has not read yet.
    ;(ws as unknown as { _socket: { resume(): void } })._socket.resume()
    expect(await closed).toBe(CLOSE_SLOW_CLIENT)
  })
})
