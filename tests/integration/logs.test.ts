import { setTimeout as sleep } from 'node:timers/promises'
/**
 * Job logs end to end: a fixture job prints on stdout, stderr and ctx.log in real child processes; the
 * GPU host keeps the lines per attempt in Postgres (bounded) and publishes them live; the gateway serves
 * them (`GET /api/jobs/:jobId/logs`, `?follow=1` as SSE) and `gpu-jobs logs` prints them.
 */
import { createParser } from 'eventsource-parser'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../gateway/cli/main.ts'
import { startGateway } from '../../gateway/server.ts'
import type { JobLogsBody } from '../../schema/api.ts'
import { createS3Client } from '../../schema/clients.ts'
import type { JobLogLine } from '../../schema/db/logs.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  quietLogger,
  type Stack,
  startStack,
  TEST_REDIS_URL,
  waitFor,
} from '../helpers/stack.ts'
import { startTcpProxy } from '../helpers/tcp-proxy.ts'

let stack: Stack

beforeAll(async () => {
  stack = await startStack({ handlerModules: { train_lora: FIXTURE_DISPATCH } })
})
afterAll(async () => {
  await stack?.close()
})

const getLogs = async (jobId: string, query = '', headers: Record<string, string> = {}) => {
  const res = await fetch(stack.url(`/api/jobs/${jobId}/logs${query}`), { headers })
  return {
    status: res.status,
    body: (await res.json()) as JobLogsBody & { error?: { message?: string; issues?: unknown[] } },
  }
}

/** Reads a follow stream to its end: every SSE event, with the time it came. */
async function readFollow(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers } })
  expect(res.status).toBe(200)
  const events: { event?: string; data: string; id?: string; at: number }[] = []
  const parser = createParser({ onEvent: (e) => events.push({ ...e, at: Date.now() }) })
  const reader = (res.body as ReadableStream<Uint8Array>).pipeThrough(new TextDecoderStream()).getReader()
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    parser.feed(value)
  }
  return events
}

/** A job of the fixture that prints (tests/fixtures/handlers/prints-logs.ts), done in one attempt. */
const printing = (params: Record<string, unknown>) =>
  addFixtureJob(stack, 'prints-logs', { maxAttempts: 1 }, { succeedOnAttempt: 1, ...params })

const texts = (lines: JobLogLine[], stream: string) =>
  lines.filter((l) => l.stream === stream).map((l) => l.text)

describe('GET /api/jobs/:jobId/logs', () => {
  let jobId: string
  beforeAll(async () => {
    jobId = await addFixtureJob(stack, 'prints-logs', { maxAttempts: 2 }, { lines: 3 })
    const done = await stack.waitStatus(jobId)
    expect(done.status).toBe('completed')
  })

  it('keeps each attempt’s stdout, stderr and ctx.log lines, in order, apart', async () => {
    const first = await getLogs(jobId, '?attempt=1')
    expect(first.status).toBe(200)
    expect(first.body).toMatchObject({ jobId, attempt: 1, dropped: 0, attempts: [1, 2] })
    const lines = first.body.lines
    expect(lines.map((l) => l.seq)).toEqual(lines.map((_, i) => i + 1))
    expect(texts(lines, 'stdout')).toEqual(['out 1.1', 'out 1.2', 'out 1.3'])
    expect(texts(lines, 'stderr')).toContain('stderr line of attempt 1')
    const log = lines.find((l) => l.stream === 'log')
    expect(log).toMatchObject({ level: 'info', text: 'log line of attempt 1 {"attempt":1}' })
    for (const l of lines) expect(Number.isNaN(Date.parse(l.at))).toBe(false)

    // Default: the latest attempt.
    const latest = await getLogs(jobId)
    expect(latest.body.attempt).toBe(2)
    expect(texts(latest.body.lines, 'stdout')).toEqual(['out 2.1', 'out 2.2', 'out 2.3'])
    expect(texts(latest.body.lines, 'stderr')).toEqual(['stderr line of attempt 2'])
  })

  it('refuses an attempt that is not a positive integer, naming it', async () => {
    for (const bad of ['0', '-1', 'x', '1.5']) {
      const res = await getLogs(jobId, `?attempt=${bad}`)
      expect(res.status).toBe(400)
      expect(res.body.error).toMatchObject({ code: 'invalid_query', issues: [{ path: 'attempt' }] })
    }
    // follow: 1/true or 0/false; anything else is not taken for "no".
    for (const bad of ['2', 'yes', '']) {
      const res = await getLogs(jobId, `?follow=${bad}`)
      expect(res.status, bad).toBe(400)
      expect(res.body.error).toMatchObject({ code: 'invalid_query', issues: [{ path: 'follow' }] })
    }
    expect((await getLogs(jobId, '?follow=0')).body.attempt).toBe(2)
    expect((await getLogs('no-such-job-here')).status).toBe(404)
  })

  it('an attempt the job never made is a 404 naming it, followed or not; one still to come is not', async () => {
    // Completed on attempt 2 (of 2): attempt 3 will never be.
    for (const query of ['?attempt=3', '?attempt=3&follow=1']) {
      const res = await getLogs(jobId, query)
      expect(res.status, query).toBe(404)
      expect(res.body.error).toMatchObject({
        code: 'not_found',
        message: `job "${jobId}" has no attempt 3: it ended (completed) after 2 attempts`,
        issues: [{ path: 'attempt' }],
      })
    }
    // A queued job's first attempt, and a retrying one's next, have no lines yet; past maxAttempts, none ever.
    const queued = `queued-${jobId}`
    await stack.insertJob(queued, 'queued')
    expect((await getLogs(queued, '?attempt=1')).body).toMatchObject({ attempt: 1, lines: [] })
    const past = await getLogs(queued, '?attempt=99')
    expect(past.status).toBe(404)
    expect(past.body.error?.message).toMatch(/no attempt 99: it may make \d+$/)
    // Cancelled before it ever ran: not even attempt 1 was made; unasked, its (no) lines.
    const never = `never-${jobId}`
    await stack.insertJob(never, 'cancelled')
    const first = await getLogs(never, '?attempt=1')
    expect(first.status).toBe(404)
    expect(first.body.error?.message).toBe(
      `job "${never}" has no attempt 1: it ended (cancelled) after 0 attempts`,
    )
    expect((await getLogs(never, '')).body).toMatchObject({ attempt: 1, lines: [] })
  })

  it('keeps at most 2,000 lines of an attempt (4 kB a line) and counts the rest as dropped', async () => {
    const id = await printing({ lines: 2100, longLine: 5000 })
    expect((await stack.waitStatus(id)).status).toBe('completed')
    const { body } = await getLogs(id)
    expect(body.lines).toHaveLength(2000)
    // 2,101 stdout lines, one stderr and one ctx.log line: 2,103 in all.
    expect(body.dropped).toBe(103)
    // A line over 4 kB is cut, and says so.
    expect(body.lines.find((l) => l.text.startsWith('xxx'))?.text).toBe(`${'x'.repeat(4096)}…`)
    expect(body.lines.at(-1)?.seq).toBe(2000)
  })

  it('keeps at most 1 MB of an attempt', async () => {
    const id = await printing({ lines: 300, width: 4000 })
    expect((await stack.waitStatus(id)).status).toBe('completed')
    const { body } = await getLogs(id)
    const bytes = body.lines.reduce((n, l) => n + Buffer.byteLength(l.text), 0)
    expect(bytes).toBeLessThanOrEqual(1_000_000)
    expect(bytes).toBeGreaterThan(990_000)
    expect(body.lines.length + body.dropped).toBe(302)
  })

  it('follows a running attempt live: stored lines, then live ones, once each, then its end', async () => {
    const id = await printing({ lines: 30, printMs: 60 })
    await stack.waitJob(id, (j) => j.status === 'running' && j.attempt === 1, 20_000, 'running')
    const events = await readFollow(stack.url(`/api/jobs/${id}/logs?follow=1`))
    const finished = (await stack.waitStatus(id)).finishedAt
    expect(events[0]).toMatchObject({ event: 'attempt', data: '{"attempt":1}' })
    const lines = events.filter((e) => e.event === 'log').map((e) => JSON.parse(e.data) as JobLogLine)
    expect(lines.map((l) => l.seq)).toEqual(lines.map((_, i) => i + 1))
    expect(texts(lines, 'stdout')).toEqual(Array.from({ length: 30 }, (_, i) => `out 1.${i + 1}`))
    expect(events.filter((e) => e.event === 'log').map((e) => e.id)).toEqual(lines.map((l) => String(l.seq)))
    expect(events.at(-1)).toMatchObject({ event: 'end', data: '{"attempt":1,"dropped":0}' })
    // Live: the lines came over ~1.8 s, not all at once at the end.
    const logEvents = events.filter((e) => e.event === 'log')
    expect((logEvents.at(-1)?.at ?? 0) - (logEvents[0]?.at ?? 0)).toBeGreaterThan(500)
    expect(finished).not.toBeNull()

    // Resumed after a line (Last-Event-ID): only the lines after it, and the end.
    const resumed = await readFollow(stack.url(`/api/jobs/${id}/logs?follow=1`), { 'last-event-id': '30' })
    const after = resumed.filter((e) => e.event === 'log').map((e) => (JSON.parse(e.data) as JobLogLine).seq)
    expect(after).toEqual(lines.filter((l) => l.seq > 30).map((l) => l.seq))
    expect(resumed.at(-1)?.event).toBe('end')
    // An EventSource reconnects to the URL it opened (its ?after=) with the Last-Event-ID it reached: that wins.
    const reconnected = await readFollow(stack.url(`/api/jobs/${id}/logs?follow=1&after=10`), {
      'last-event-id': '25',
    })
    expect(reconnected.filter((e) => e.event === 'log').map((e) => e.id)).toEqual(
      lines.filter((l) => l.seq > 25).map((l) => String(l.seq)),
    )
    // Past every line, past the seq column's range too (2^31 and more, up to 2^53 - 1): no line, then the end.
    for (const past of ['2147483648', String(Number.MAX_SAFE_INTEGER)]) {
      const beyond = await readFollow(stack.url(`/api/jobs/${id}/logs?follow=1`), { 'last-event-id': past })
      expect(beyond.map((e) => e.event)).toEqual(['attempt', 'end'])
    }
    const bad = await fetch(stack.url(`/api/jobs/${id}/logs?follow=1`), {
      headers: { 'last-event-id': 'abc' },
    })
    expect([bad.status, await bad.json()]).toMatchObject([
      400,
      {
        error: {
          code: 'invalid_query',
          message: expect.stringContaining('Last-Event-ID'),
          issues: [{ path: 'after' }],
        },
      },
    ])
  })

  it('many followers share the gateway’s one subscriber connection, and the channel is left after them', async () => {
    const id = await printing({ lines: 20, printMs: 60 })
    await stack.waitJob(id, (j) => j.status === 'running' && j.attempt === 1, 20_000, 'running')
    const clients = async () =>
      String(await stack.redis.client('LIST'))
        .trim()
        .split('\n').length
    const before = await clients()
    const follows = Array.from({ length: 12 }, () => readFollow(stack.url(`/api/jobs/${id}/logs?follow=1`)))
    const numsub = async () =>
      Number(((await stack.redis.pubsub('NUMSUB', `logs:${id}`)) as [string, number])[1])
    // While all twelve stream, one connection is subscribed to the channel, and Redis has (about) as many
    // clients as before, not twelve more.
    await expect.poll(numsub, { timeout: 5000, interval: 20 }).toBeGreaterThan(0)
    await sleep(300)
    expect(await numsub()).toBe(1)
    expect(await clients()).toBeLessThan(before + 3)
    const all = await Promise.all(follows)
    for (const events of all) {
      const lines = events.filter((e) => e.event === 'log').map((e) => JSON.parse(e.data) as JobLogLine)
      expect(texts(lines, 'stdout')).toEqual(Array.from({ length: 20 }, (_, i) => `out 1.${i + 1}`))
      expect(events.at(-1)?.event).toBe('end')
    }
    await expect.poll(numsub, { timeout: 2000, interval: 20 }).toBe(0)
  })
})

describe('logs with Redis unreachable', () => {
  it('a follow is a 503 before the stream starts; the stored lines still answer', async () => {
    const id = await printing({})
    expect((await stack.waitStatus(id)).status).toBe('completed')
    const target = new URL(TEST_REDIS_URL)
    const proxy = await startTcpProxy(Number(target.port || 6379), target.hostname)
    const gw = await startGateway({
      config: { ...stack.config, gatewayPort: 0, redisUrl: `redis://127.0.0.1:${proxy.port}` },
      database: stack.database,
      s3: createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint }),
      logger: quietLogger(),
    })
    try {
      await proxy.cut()
      const followed = await fetch(`${gw.url}/api/jobs/${id}/logs?follow=1`, {
        signal: AbortSignal.timeout(20_000),
      })
      expect(followed.status).toBe(503)
      expect(await followed.json()).toMatchObject({ error: { code: 'backend_unavailable' } })
      const stored = await fetch(`${gw.url}/api/jobs/${id}/logs`)
      expect(stored.status).toBe(200)
      expect(((await stored.json()) as JobLogsBody).lines.length).toBeGreaterThan(0)
    } finally {
      await proxy.restore()
      await gw.close()
      await proxy.close()
    }
  })
})

describe('gpu-jobs logs', () => {
  const sink = () => {
    const s = {
      text: '',
      write(c: string) {
        s.text += c
        return true
      },
    }
    return s
  }
  const cli = async (args: string[], signal?: AbortSignal) => {
    const out = sink()
    const err = sink()
    const code = await run(args, {
      stdout: out,
      stderr: err,
      env: { GPU_JOBS_URL: stack.gateway.url },
      ...(signal ? { signal } : {}),
    })
    return { code, out: out.text, err: err.text }
  }

  it('Ctrl-C during --follow stops following, says the job goes on and how to resume', async () => {
    const id = await printing({ lines: 40, printMs: 50 })
    await waitFor(async () => (await getLogs(id)).body.lines?.length > 0, 20_000, 'first lines')
    // Ctrl-C, as the bin wires SIGINT: the signal aborts.
    const followed = await cli(['logs', id, '--follow'], AbortSignal.timeout(600))
    expect(followed.code).toBe(130)
    expect(followed.out).toContain('stdout out 1.1')
    expect(followed.err).toContain(`the job goes on. Resume: gpu-jobs logs ${id} --follow`)
    expect((await stack.waitStatus(id)).status).toBe('completed')
  })

  it('prints an attempt’s lines as "HH:MM:SS.mmm stream text", then follows one to its end', async () => {
    const id = await addFixtureJob(stack, 'prints-logs', { maxAttempts: 2 }, { lines: 2 })
    expect((await stack.waitStatus(id)).status).toBe('completed')
    const first = await cli(['logs', id, '--attempt', '1'])
    expect(first.code).toBe(0)
    const lines = first.out.trim().split('\n')
    expect(lines.filter((l) => / stdout /.test(l))).toEqual([
      expect.stringMatching(/^\d\d:\d\d:\d\d\.\d{3} stdout out 1\.1$/),
      expect.stringMatching(/^\d\d:\d\d:\d\d\.\d{3} stdout out 1\.2$/),
    ])
    expect(lines).toContainEqual(
      expect.stringMatching(/^\d\d:\d\d:\d\d\.\d{3} stderr stderr line of attempt 1$/),
    )
    expect(first.err).toContain('other attempts: 2')

    const json = await cli(['logs', id, '--json'])
    expect((JSON.parse(json.out) as JobLogsBody).attempt).toBe(2)

    const followed = await cli(['logs', id, '--follow'])
    expect(followed.code).toBe(0)
    expect(followed.out).toContain('stdout out 2.2')
    expect(followed.err).toContain('attempt 2 ended')

    // A unique prefix of the id (as the console's 8-character ids) works, followed or not.
    const short = id.slice(0, -4)
    expect((await cli(['logs', short, '--attempt', '1'])).out).toBe(first.out)
    const shortFollowed = await cli(['logs', short, '--follow'])
    expect(shortFollowed.code).toBe(0)
    expect(shortFollowed.out).toContain('stdout out 2.2')

    const bad = await cli(['logs', id, '--attempt', 'zero'])
    expect(bad.code).toBe(3)
    expect(bad.err).toContain('--attempt must be a whole number from 1 to 999999999, got "zero"')
    const unknown = await cli(['logs', 'no-such-job-here'])
    expect(unknown.code).toBe(3)
    expect(unknown.err.trim().split('\n')).toHaveLength(1)
  })
})

describe('logs and ownership', () => {
  let owned: Stack
  beforeAll(async () => {
    owned = await startStack({
      withHost: false,
      env: { API_TOKENS: 'alice:alice-logs-token-0123,bob:bob-logs-token-0123' },
    })
  })
  afterAll(async () => {
    await owned?.close()
  })

  it('another owner’s job is a 404, followed or not', async () => {
    await owned.insertJob('alice-logged-job', 'completed', 'alice')
    const as = (token: string) => ({ authorization: `Bearer ${token}` })
    const url = (q: string) => owned.url(`/api/jobs/alice-logged-job/logs${q}`)
    expect((await fetch(url(''), { headers: as('bob-logs-token-0123') })).status).toBe(404)
    expect((await fetch(url('?follow=1'), { headers: as('bob-logs-token-0123') })).status).toBe(404)
    const mine = await fetch(url(''), { headers: as('alice-logs-token-0123') })
    expect(mine.status).toBe(200)
    expect(await mine.json()).toMatchObject({ jobId: 'alice-logged-job', attempt: 1, lines: [], dropped: 0 })
    // A finished job's follow ends at once, with its end.
    const followed = await fetch(url('?follow=1'), { headers: as('alice-logs-token-0123') })
    expect(followed.status).toBe(200)
    expect(await followed.text()).toContain('event: end')
    // `?token=` is for the SSE variant only (EventSource sends no header).
    expect((await fetch(url('?follow=1&token=alice-logs-token-0123'))).status).toBe(200)
    expect((await fetch(url('?token=alice-logs-token-0123'))).status).toBe(401)
  })

  it('is in the OpenAPI document', async () => {
    const doc = (await (await fetch(owned.url('/openapi.json'))).json()) as {
      paths: Record<string, { get?: { parameters?: { name: string }[] } }>
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> }
    }
    const names = doc.paths['/api/jobs/{jobId}/logs']?.get?.parameters?.map((p) => p.name)
    expect(names).toEqual(expect.arrayContaining(['jobId', 'attempt', 'follow']))
    expect(Object.keys(doc.components.schemas.JobLogsBody?.properties ?? {})).toEqual(
      expect.arrayContaining(['jobId', 'attempt', 'lines', 'dropped', 'attempts']),
    )
  })
})
