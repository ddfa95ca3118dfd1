/**
 * The service log as an operator reads it (pino JSON at LOG_LEVEL=info, the gateway and a GPU host of one
 * stack): a line when an attempt starts (host, slot, attempt), at 25/50/75 %, when the job ends with its
 * message; a retry and a failure said once, with the reason; an access line per request (method, route,
 * status, duration) that never holds a token or a query; no null or empty fields; and what a job printed
 * kept in its logs, not repeated in the service log.
 */
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { endLine } from '../../gpu-host/attempt.ts'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'

interface Line {
  level: number
  msg: string
  [field: string]: unknown
}

const INFO = 30
const WARN = 40
const lines: Line[] = []
const raw: string[] = []
let stack: Stack

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const text of chunk.toString('utf8').split('\n').filter(Boolean)) {
        raw.push(text)
        lines.push(JSON.parse(text) as Line)
      }
      done()
    },
  })
  stack = await startStack({ logger: pino({ level: 'info' }, sink) })
})
afterAll(async () => {
  await stack?.close()
})

const submit = async (body: Record<string, unknown>): Promise<string> => {
  const { status, json } = await stack.post(body)
  expect(status).toBe(202)
  return String(json.jobId)
}
const of = (jobId: string) => lines.filter((l) => l.jobId === jobId)
const lora = (epochs: number) => ({ baseModel: 'sd15', datasetPath: 'ds', epochs })

describe('service log', () => {
  it('a job: its start (host, slot, attempt), milestones and end with its message; its output stays in its logs', async () => {
    const jobId = await submit({ type: 'train_lora', params: lora(4) })
    const job = await stack.waitStatus(jobId)
    expect(job.status).toBe('completed')
    const mine = of(jobId)
    const started = mine.find((l) => l.msg.startsWith('attempt 1/'))
    expect(started).toMatchObject({
      level: INFO,
      msg: `attempt 1/${job.maxAttempts} started on ${stack.config.hostId} (slot 0)`,
      attempt: 1,
      slot: 0,
      type: 'train_lora',
    })
    const milestones = mine.filter((l) => typeof l.progress === 'number').map((l) => l.progress)
    expect(milestones).toEqual([25, 50, 75])
    expect(mine.at(-1)).toMatchObject({ level: INFO, msg: `job completed: ${job.message}`, attempt: 1 })

    // What the simulated trainer printed is in the job's logs, and at info not in the service log.
    const logs = (await (await fetch(stack.url(`/api/jobs/${jobId}/logs`))).json()) as {
      lines: { text: string }[]
    }
    expect(logs.lines.length).toBeGreaterThan(3)
    const printed = new Set(logs.lines.map((l) => l.text))
    expect(mine.filter((l) => printed.has(l.msg))).toEqual([])
  })

  it('a timed-out attempt, its retry and the failure: each said once, with the reason', async () => {
    // 1,000 steps of 5 ms: each attempt outlives its 1 s timeout.
    const jobId = await submit({ type: 'train_lora', params: lora(100), timeoutSec: 1, maxAttempts: 2 })
    const job = await stack.waitStatus(jobId)
    expect(job.status).toBe('failed')
    expect(job.message).toMatch(/^failed \(timeout\): job timed out after 1s$/)
    const warnings = of(jobId).filter((l) => l.level === WARN)
    expect(warnings.map((l) => l.msg)).toEqual([
      expect.stringMatching(/^attempt 1 failed \(timeout\): job timed out after 1s; retrying in /),
      // The job's message ("failed (timeout): ...") after "job", not "job failed: failed (timeout): ...".
      `job ${job.message}`,
    ])
    expect(warnings.map((l) => l.reason)).toEqual(['timeout', 'timeout'])
    expect(of(jobId).filter((l) => l.msg.startsWith('attempt 2/2 started'))).toHaveLength(1)
  })

  it("a job's last line names its status once, whatever its message", () => {
    expect(endLine('failed', 'failed (timeout): job timed out after 1s')).toBe(
      'job failed (timeout): job timed out after 1s',
    )
    expect(endLine('failed', 'dataset "ds" has no images')).toBe('job failed: dataset "ds" has no images')
    expect(endLine('cancelled', 'cancelled')).toBe('job cancelled')
    expect(endLine('cancelled', 'cancelled while queued')).toBe('job cancelled while queued')
  })

  it('an access line per request: method, route, status, duration; never a token or a query', async () => {
    const secret = 'tok-3f9a1c0de55e'
    const jobId = await submit({ type: 'train_lora', params: lora(1) })
    await stack.waitStatus(jobId)
    await fetch(stack.url(`/api/jobs/${jobId}/logs?follow=1&token=${secret}`)).then((r) => r.text())
    await fetch(stack.url(`/api/status/${jobId}?token=${secret}`), {
      headers: { authorization: `Bearer ${secret}` },
    })
    await fetch(stack.url('/api/status/no-such-job'))
    // A WebSocket's line says what its client got: 101 Switching Protocols.
    const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws?jobId=${jobId}`)
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
    ws.close()
    await waitFor(async () => lines.some((l) => l.route === '/ws'), 5000, 'the WebSocket’s access line')
    const access = lines.filter((l) => typeof l.route === 'string')
    const status = access.filter((l) => l.route === '/api/status/:jobId' && l.status === 200)
    expect(status.at(-1)).toMatchObject({
      level: INFO,
      method: 'GET',
      msg: expect.stringMatching(new RegExp(`^GET /api/status/${jobId} 200 [\\d.]+ ms$`)),
      ms: expect.any(Number),
    })
    expect(access.find((l) => l.status === 404)).toMatchObject({ method: 'GET', route: '/api/status/:jobId' })
    expect(access.some((l) => l.route === '/api/jobs/:jobId/logs')).toBe(true)
    expect(access.find((l) => l.route === '/ws')).toMatchObject({
      status: 101,
      msg: expect.stringMatching(/^GET \/ws 101 /),
    })
    for (const l of access) expect(l.msg).not.toContain('?')
    expect(raw.filter((text) => text.includes(secret))).toEqual([])
  })

  it('no null or empty fields (owner=null, stderr="")', () => {
    expect(lines.length).toBeGreaterThan(10)
    const noisy = lines.filter((l) => Object.values(l).some((value) => value === null || value === ''))
    expect(noisy).toEqual([])
  })
})
