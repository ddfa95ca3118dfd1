/**
 * `GET /api/jobs?q=` (search by id prefix and message), a short id (the start of a job's id) in the job
 * routes, and `POST /api/jobs/batch` (many submits, all or none) over HTTP against a real gateway, Redis and Postgres; no GPU host, so submitted jobs stay queued.
 */
import { randomUUID } from 'node:crypto'
import { Queue } from 'bullmq'
import { eq, inArray } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openApiDocument } from '../../gateway/openapi.ts'
import type { JobListBody, SubmitBatchResponse } from '../../schema/api.ts'
import { createRedis } from '../../schema/clients.ts'
import { jobEvents, jobs } from '../../schema/db/tables.ts'
import { QUEUE_NAME } from '../../schema/keys.ts'
import { readEvents } from '../../schema/progress-log.ts'
import { type Stack, startStack, TEST_DATABASE_URL, TEST_REDIS_URL, waitFor } from '../helpers/stack.ts'
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts'

const TOKENS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'gina', 'hank'] as const
type Who = (typeof TOKENS)[number]
const token = (who: Who) => `${who}-search-token-0123456789`
const QUOTA = 4

let stack: Stack
/** A word no other test's rows hold, so searches here find only this file's rows. */
const tag = `t${randomUUID().slice(0, 8)}`

beforeAll(async () => {
  stack = await startStack({
    withHost: false,
    env: {
      API_TOKENS: TOKENS.map((t) => `${t}:${token(t)}`).join(','),
      MAX_QUEUED_JOBS_PER_TOKEN: String(QUOTA),
    },
  })
})
afterAll(async () => {
  await stack?.close()
})

const call = (who: Who, path: string, body?: unknown) =>
  fetch(stack.url(path), {
    method: body === undefined ? 'GET' : 'POST',
    headers: {
      authorization: `Bearer ${token(who)}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
const search = async (who: Who, query: string) => {
  const res = await call(who, `/api/jobs?${query}`)
  expect(res.status, query).toBe(200)
  return (await res.json()) as JobListBody
}
const ids = (page: JobListBody) => page.jobs.map((j) => j.jobId).sort()

/** A row as a host would have left it: `status`, `message`, owned by `who`. */
async function row(id: string, who: Who, status: 'queued' | 'completed' | 'failed', message: string) {
  await stack.insertJob(id, status, who)
  await stack.database.db.update(jobs).set({ message }).where(eq(jobs.id, id))
}

describe('GET /api/jobs?q=', () => {
  beforeAll(async () => {
    await row(`${tag}-one`, 'alice', 'completed', 'Epoch 5/5 - Loss=0.10')
    await row(`${tag}-two`, 'alice', 'failed', 'at 50% now')
    await row(`${tag}x-three`, 'alice', 'queued', 'at 500 now')
    await row(`a${tag}-four`, 'alice', 'completed', `a_b ${tag} in the message`)
    await row(`a${tag}-five`, 'alice', 'completed', `axb ${tag}`)
    await row(`${tag}-bobs`, 'bob', 'completed', `bob's ${tag}`)
  })

  it('finds jobs by id prefix and by text in the message, only the token’s own', async () => {
    expect(ids(await search('alice', `q=${tag}-`))).toEqual([`${tag}-one`, `${tag}-two`])
    expect(ids(await search('alice', `q=${tag}`))).toEqual(
      [`${tag}-one`, `${tag}-two`, `${tag}x-three`, `a${tag}-four`, `a${tag}-five`].sort(),
    )
    // Any case in the message; the id prefix as typed (ids are case-sensitive).
    expect(ids(await search('alice', 'q=loss%3D0.10'))).toContain(`${tag}-one`)
    expect(ids(await search('alice', `q=${tag.toUpperCase()}-`))).toEqual([])
    expect(ids(await search('bob', `q=${tag}`))).toEqual([`${tag}-bobs`])
  })

  it('takes % and _ literally', async () => {
    const mine = (page: JobListBody) => ids(page).filter((id) => id.includes(tag))
    expect(mine(await search('alice', `q=${encodeURIComponent('0%')}`))).toEqual([`${tag}-two`])
    expect(mine(await search('alice', 'q=a_b'))).toEqual([`a${tag}-four`])
    expect(mine(await search('alice', `q=${tag}_`))).toEqual([])
  })

  it('combines with status, type, limit and cursor', async () => {
    expect(ids(await search('alice', `q=${tag}&status=queued`))).toEqual([`${tag}x-three`])
    expect(ids(await search('alice', `q=${tag}&type=train_voice`))).toEqual([])
    const first = await search('alice', `q=${tag}&limit=3`)
    expect(first.jobs).toHaveLength(3)
    expect(first.nextCursor).not.toBeNull()
    const second = await search('alice', `q=${tag}&limit=3&cursor=${first.nextCursor}`)
    expect(second.nextCursor).toBeNull()
    expect([...ids(first), ...ids(second)].sort()).toEqual(ids(await search('alice', `q=${tag}`)))
    // The list's shape is kept: summaries.
    expect(Object.keys(first.jobs[0] ?? {})).not.toContain('params')
  })

  it('refuses a q over 200 characters or with NUL (400 naming q); an empty q is no search', async () => {
    for (const q of ['x'.repeat(201), '%00']) {
      const res = await call('alice', `/api/jobs?q=${q}`)
      expect(res.status).toBe(400)
      expect(await res.json()).toMatchObject({ error: { code: 'invalid_query', issues: [{ path: 'q' }] } })
    }
    expect((await call('alice', `/api/jobs?q=${'x'.repeat(200)}`)).status).toBe(200)
    // Characters, not UTF-16 units: 200 emoji are 400 units, and within the limit.
    const emoji = encodeURIComponent('\u{1F98A}'.repeat(200))
    expect((await call('alice', `/api/jobs?q=${emoji}`)).status).toBe(200)
    expect((await call('alice', `/api/jobs?q=${emoji}${encodeURIComponent('\u{1F98A}')}`)).status).toBe(400)
    expect((await search('alice', 'q=')).jobs.length).toBeGreaterThanOrEqual(5)
  })
})

describe('a short id in the job routes', () => {
  it('names a job by the 8 characters the console shows, in every route; the job’s whole id answers', async () => {
    const res = await call('gina', '/api/train', voice())
    expect(res.status).toBe(202)
    const { jobId } = (await res.json()) as { jobId: string }
    const short = jobId.slice(0, 8)
    for (const path of [`/api/jobs/${short}`, `/api/status/${short}`, `/api/status/${jobId.slice(0, 13)}`]) {
      const got = await call('gina', path)
      expect(got.status, path).toBe(200)
      expect(await got.json(), path).toMatchObject({ jobId, type: 'train_voice', status: 'queued' })
    }
    const artifacts = await call('gina', `/api/jobs/${short}/artifacts`)
    expect([artifacts.status, await artifacts.json()]).toEqual([200, { artifacts: [] }])
    const events = await fetch(stack.url(`/api/jobs/${short}/events`), {
      headers: { authorization: `Bearer ${token('gina')}` },
      signal: AbortSignal.timeout(10_000),
    })
    expect(events.status).toBe(200)
    const reader = events.body?.getReader()
    let text = ''
    while (reader && !text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value)
    await reader?.cancel()
    expect(text).toContain(`"jobId":"${jobId}"`)
    // Another token's short id is no job of this one's, as its whole id is not.
    for (const path of [`/api/jobs/${short}`, `/api/jobs/${short}/logs`]) {
      const other = await call('hank', path)
      expect([other.status, await other.json()], path).toEqual([
        404,
        { error: { code: 'not_found', message: `no job "${short}"` } },
      ])
    }
    const rerun = await call('gina', `/api/jobs/${short}/rerun`, {})
    expect(rerun.status).toBe(202)
    const again = ((await rerun.json()) as { jobId: string }).jobId
    expect(again).not.toBe(jobId)
    const cancel = await call('gina', `/api/jobs/${short}/cancel`, {})
    expect(cancel.status).toBe(202)
    await waitFor(
      async () =>
        ((await (await call('gina', `/api/jobs/${jobId}`)).json()) as { status: string }).status ===
        'cancelled',
      10_000,
      'the job cancelled by its short id',
    )
    expect((await call('gina', `/api/jobs/${again}/cancel`, {})).status).toBe(202)
  })

  it('a start several of the caller’s jobs share is a 409 naming them; under 8 characters is no job; a whole id wins', async () => {
    const start = `${tag}-sh`
    await row(`${start}-1`, 'gina', 'completed', 'one')
    await row(`${start}-2`, 'gina', 'completed', 'two')
    await row(`${start}`, 'hank', 'completed', 'hank’s own, with the very id gina’s start is')
    const res = await call('gina', `/api/jobs/${start}`)
    expect(res.status).toBe(409)
    const body = (await res.json()) as { error: { code: string; message: string } }
    expect(body.error.code).toBe('ambiguous_job_id')
    expect(body.error.message).toContain(`${start}-1`)
    expect(body.error.message).toContain(`${start}-2`)
    expect((await call('gina', `/api/jobs/${start}-2/logs`)).status).not.toBe(409)
    // hank sees his own job by its whole id, not gina's that start with it.
    expect(await (await call('hank', `/api/jobs/${start}`)).json()).toMatchObject({ jobId: start })
    expect((await call('gina', `/api/jobs/${tag.slice(0, 7)}`)).status).toBe(404)
    // LIKE's wildcards are literal: "_" matches only "_".
    await row(`${tag}_w-1`, 'gina', 'completed', 'underscore')
    await row(`${tag}Xw-1`, 'gina', 'completed', 'letter')
    expect(await (await call('gina', `/api/jobs/${tag}_w`)).json()).toMatchObject({ jobId: `${tag}_w-1` })
    expect((await call('gina', `/api/jobs/${tag}%25`)).status).toBe(404)
    // A UUID may begin with 8 digits, which no whole id may be: as a start, they name it all the same.
    const digits = `${String(Date.now()).slice(-8)}-${tag}`
    await row(digits, 'gina', 'completed', 'digits first')
    expect(await (await call('gina', `/api/jobs/${digits.slice(0, 8)}`)).json()).toMatchObject({
      jobId: digits,
    })
    expect(await (await call('gina', `/api/jobs/${digits.slice(0, 8)}/logs`)).json()).toMatchObject({
      jobId: digits,
    })
  })
})

const voice = (jobId?: string, epochs: unknown = 1) => ({
  type: 'train_voice',
  params: { speakerName: 'ann', datasetPath: 'ds', epochs },
  ...(jobId === undefined ? {} : { jobId }),
})
const batch = async (who: Who, body: unknown) => {
  const res = await call(who, '/api/jobs/batch', body)
  return { status: res.status, json: (await res.json()) as SubmitBatchResponse }
}
/** The stored rows among `jobIds`. */
const rowsOf = async (jobIds: string[]) =>
  (await stack.database.db.select({ id: jobs.id }).from(jobs).where(inArray(jobs.id, jobIds))).map(
    (r) => r.id,
  )

describe('POST /api/jobs/batch', () => {
  it('queues every job with one request and answers in order, each job queued with its event', async () => {
    const res = await batch('carol', { jobs: [voice(), voice(`${tag}-b`), voice()] })
    expect(res.status).toBe(202)
    const answers = res.json.jobs
    expect(answers).toHaveLength(3)
    expect(answers[1]?.jobId).toBe(`carol.${tag}-b`)
    for (const a of answers) {
      expect(a).toMatchObject({ status: 'queued', statusUrl: `/api/status/${a.jobId}` })
      expect(await stack.queue.getJobState(a.jobId)).toBe('waiting')
      const status = await (await call('carol', a.statusUrl)).json()
      expect(status).toMatchObject({ jobId: a.jobId, status: 'queued', seq: 1 })
    }
    // The same request again is a resubmit (its status); a new job beside it is queued.
    const again = await batch('carol', { jobs: [voice(`${tag}-b`), voice(`${tag}-c`)] })
    expect(again.status).toBe(202)
    expect(again.json.jobs.map((j) => [j.jobId, j.status])).toEqual([
      [`carol.${tag}-b`, 'queued'],
      [`carol.${tag}-c`, 'queued'],
    ])
    const resubmitOnly = await batch('carol', { jobs: [voice(`${tag}-b`)] })
    expect(resubmitOnly.status).toBe(200)
  })

  it('names the item and field of a bad body; nothing of the batch is kept', async () => {
    const res = await batch('frank', { jobs: [voice(`${tag}-ok`), voice(undefined, 0)] })
    expect(res.status).toBe(400)
    expect(res.json).toMatchObject({
      error: { code: 'invalid_params', issues: [{ path: 'jobs[1].params.epochs' }] },
    })
    expect(JSON.stringify(res.json)).toContain('jobs[1].params.epochs')
    // Every bad item is named in the one answer, not only the first.
    const several = await batch('frank', { jobs: [voice(`${tag}-ok2`), voice(undefined, 0), 7, []] })
    expect(several.status).toBe(400)
    expect(several.json).toMatchObject({
      error: {
        code: 'invalid_params',
        message: expect.stringMatching(/^invalid params: jobs\[1\]\.params\.epochs /),
        issues: [
          { path: 'jobs[1].params.epochs' },
          { path: 'jobs[2]', message: 'must be a JSON object' },
          { path: 'jobs[3]', message: 'must be a JSON object' },
        ],
      },
    })
    const unknownField = await batch('frank', { jobs: [{ ...voice(), nope: 1 }] })
    expect(unknownField.json).toMatchObject({
      error: { code: 'invalid_request', issues: [{ path: 'jobs[0].nope' }] },
    })
    const twice = await batch('frank', { jobs: [voice(`${tag}-d`), voice(`${tag}-d`)] })
    expect(twice.status).toBe(400)
    expect(twice.json).toMatchObject({ error: { issues: [{ path: 'jobs[1].jobId' }] } })
    for (const body of [
      {},
      { jobs: [] },
      { jobs: 'x' },
      { jobs: Array(101).fill(voice()) },
      { jobs: [voice()], x: 1 },
    ]) {
      const shell = await batch('frank', body)
      expect(shell.status, JSON.stringify(body).slice(0, 40)).toBe(400)
      expect(shell.json).toMatchObject({ error: { code: 'invalid_request' } })
    }
    expect(await rowsOf([`frank.${tag}-ok`, `frank.${tag}-d`])).toEqual([])
  })

  it('refuses the whole batch with 409 when one jobId holds a different request, before anything is queued', async () => {
    expect((await batch('dave', { jobs: [voice(`${tag}-x`)] })).status).toBe(202)
    const res = await batch('dave', { jobs: [voice(`${tag}-new`), voice(`${tag}-x`, 2)] })
    expect(res.status).toBe(409)
    expect(res.json).toMatchObject({ error: { code: 'conflict', issues: [{ path: 'jobs[1].jobId' }] } })
    expect(JSON.stringify(res.json)).toContain('nothing in this batch was queued')
    expect(await rowsOf([`dave.${tag}-new`])).toEqual([])
    expect(await stack.queue.getJobState(`dave.${tag}-new`)).toBe('unknown')
  })

  it('a conflict in the middle refuses the whole batch; resubmits inside a batch keep their rows; each new job has one queued event, seq 1', async () => {
    expect((await batch('dave', { jobs: [voice(`${tag}-m0`)] })).status).toBe(202)
    const mixed = [voice(`${tag}-m1`), voice(`${tag}-m0`, 3), voice(`${tag}-m2`)]
    const refused = await batch('dave', { jobs: mixed })
    expect(refused.status).toBe(409)
    expect(refused.json).toMatchObject({ error: { issues: [{ path: 'jobs[1].jobId' }] } })
    expect(await rowsOf([`dave.${tag}-m1`, `dave.${tag}-m2`])).toEqual([])
    for (const id of [`dave.${tag}-m1`, `dave.${tag}-m2`])
      expect(await stack.queue.getJobState(id)).toBe('unknown')
    const [before] = await stack.database.db
      .select()
      .from(jobs)
      .where(eq(jobs.id, `dave.${tag}-m0`))
    const res = await batch('dave', { jobs: [voice(`${tag}-m1`), voice(`${tag}-m0`), voice(`${tag}-m2`)] })
    expect(res.status).toBe(202)
    expect(res.json.jobs.map((j) => j.jobId)).toEqual([`dave.${tag}-m1`, `dave.${tag}-m0`, `dave.${tag}-m2`])
    const [after] = await stack.database.db
      .select()
      .from(jobs)
      .where(eq(jobs.id, `dave.${tag}-m0`))
    expect(after?.createdAt).toEqual(before?.createdAt)
    for (const id of [`dave.${tag}-m1`, `dave.${tag}-m0`, `dave.${tag}-m2`]) {
      const history = await stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, id))
      expect(
        history.map((e) => [e.seq, e.status, e.attempt]),
        id,
      ).toEqual([[1, 'queued', 0]])
      expect(
        (await readEvents(stack.redis, id)).map((e) => [e.seq, e.status]),
        id,
      ).toEqual([[1, 'queued']])
      expect((await stack.database.db.select().from(jobs).where(eq(jobs.id, id)))[0]?.lastSeq).toBe(1)
    }
  })

  it('keeps gpu with the job: stored, in the status body, compared on a resubmit', async () => {
    const gpu = { vramMb: 8000, exclusive: true }
    const first = await batch('bob', { jobs: [{ ...voice(`${tag}-g`), gpu }] })
    expect(first.status).toBe(202)
    const id = `bob.${tag}-g`
    expect(await (await call('bob', `/api/status/${id}`)).json()).toMatchObject({ jobId: id, gpu })
    expect((await stack.queue.getJob(id))?.data).toMatchObject({ gpu })
    expect((await batch('bob', { jobs: [{ ...voice(`${tag}-g`), gpu }] })).status).toBe(200)
    for (const other of [{ vramMb: 8000 }, { vramMb: 4000, exclusive: true }, undefined]) {
      const res = await call('bob', '/api/train', { ...voice(`${tag}-g`), ...(other ? { gpu: other } : {}) })
      expect(res.status, JSON.stringify(other)).toBe(409)
    }
    const plain = await call('bob', '/api/train', voice(`${tag}-nogpu`))
    expect(await (await call('bob', `/api/status/bob.${tag}-nogpu`)).json()).toMatchObject({ gpu: null })
    expect(plain.status).toBe(202)
  })

  it('an add that stalls answers 503; what landed is undone, and the same batch again is queued', async () => {
    const jobIds = [`${tag}-s1`, `${tag}-s2`]
    const body = { jobs: jobIds.map((id) => voice(id)) }
    const admin = createRedis(TEST_REDIS_URL)
    try {
      // Writes wait; the add reaches Redis and runs once the pause ends: its outcome is unknown to the gateway.
      await admin.call('CLIENT', 'PAUSE', '5000', 'WRITE')
      const t0 = Date.now()
      const res = await batch('frank', body)
      expect(Date.now() - t0).toBeLessThan(4500)
      expect(res.status).toBe(503)
      expect(res.json).toMatchObject({ error: { code: 'backend_unavailable' } })
      expect(JSON.stringify(res.json)).toContain('nothing was queued')
    } finally {
      await admin.call('CLIENT', 'UNPAUSE')
      admin.disconnect()
    }
    const scoped = jobIds.map((id) => `frank.${id}`)
    await waitFor(
      async () =>
        (await rowsOf(scoped)).length === 0 &&
        (await Promise.all(scoped.map((id) => stack.queue.getJobState(id)))).every((s) => s === 'unknown'),
      20_000,
      'the unqueued batch to be cleaned up',
    )
    const again = await batch('frank', body)
    expect(again.status).toBe(202)
    expect(again.json.jobs.map((j) => j.jobId)).toEqual(scoped)
  })

  it('counts the quota for the whole batch', async () => {
    const over = await batch('erin', {
      jobs: Array.from({ length: QUOTA + 1 }, (_, i) => voice(`${tag}-q${i}`)),
    })
    expect(over.status).toBe(429)
    expect(over.json).toMatchObject({ error: { code: 'quota_exceeded' } })
    expect(await rowsOf(Array.from({ length: QUOTA + 1 }, (_, i) => `erin.${tag}-q${i}`))).toEqual([])
    const fits = await batch('erin', { jobs: Array.from({ length: QUOTA }, () => voice()) })
    expect(fits.status).toBe(202)
  })

  it('is in the OpenAPI document, with q on the list', () => {
    const doc = openApiDocument() as {
      paths: Record<string, { post?: { operationId: string }; get?: { parameters: { name: string }[] } }>
      components: { schemas: Record<string, unknown> }
    }
    expect(doc.paths['/api/jobs/batch']?.post?.operationId).toBe('submitJobs')
    expect(doc.paths['/api/jobs']?.get?.parameters.map((p) => p.name)).toContain('q')
    expect(doc.components.schemas.SubmitBatchBody).toMatchObject({
      properties: { jobs: { items: { $ref: '#/components/schemas/SubmitJobBody' }, maxItems: 100 } },
    })
  })
})

describe('POST /api/jobs/batch with Redis down', () => {
  let proxy: TcpProxy
  let cut: Stack

  beforeAll(async () => {
    proxy = await startTcpProxy(
      Number(new URL(TEST_REDIS_URL).port || 6379),
      new URL(TEST_REDIS_URL).hostname,
    )
    cut = await startStack({ withHost: false, redisUrl: `redis://127.0.0.1:${proxy.port}` })
  })
  afterAll(async () => {
    await proxy?.restore().catch(() => {})
    await cut?.close()
    await proxy?.close()
  })

  it('answers 503 naming Redis, and nothing is queued or kept', async () => {
    const jobIds = [`${tag}-r1`, `${tag}-r2`]
    await proxy.cut()
    const res = await fetch(cut.url('/api/jobs/batch'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobs: jobIds.map((id) => voice(id)) }),
    })
    expect(res.status).toBe(503)
    expect(await res.json()).toMatchObject({ error: { code: 'backend_unavailable' } })
    expect(await rowsOf(jobIds)).toEqual([])
    // Straight to Redis, not through the cut proxy.
    const direct = createRedis(TEST_REDIS_URL)
    const queue = new Queue(QUEUE_NAME, { connection: direct, prefix: cut.prefix })
    try {
      for (const id of jobIds) expect(await queue.getJobState(id)).toBe('unknown')
    } finally {
      await queue.close()
      direct.disconnect()
    }
  })
})

describe('POST /api/jobs/batch and POST /api/train with Postgres down', () => {
  let proxy: TcpProxy
  let cut: Stack

  beforeAll(async () => {
    const pg = new URL(TEST_DATABASE_URL)
    proxy = await startTcpProxy(Number(pg.port || 5432), pg.hostname)
    pg.host = `127.0.0.1:${proxy.port}`
    cut = await startStack({ withHost: false, databaseUrl: pg.toString() })
  })
  afterAll(async () => {
    await proxy?.restore().catch(() => {})
    await cut?.close()
    await proxy?.close()
  })

  it('answers 503 naming Postgres, and nothing is queued', async () => {
    const jobIds = [`${tag}-p1`, `${tag}-p2`]
    await proxy.cut()
    const post = (route: string, body: unknown) =>
      fetch(cut.url(route), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
    for (const [route, body] of [
      ['/api/jobs/batch', { jobs: jobIds.map((id) => voice(id)) }],
      ['/api/train', voice(`${tag}-p3`)],
    ] as const) {
      const res = await post(route, body)
      expect(res.status, route).toBe(503)
      expect(JSON.stringify(await res.json()), route).toContain('Postgres')
    }
    for (const id of [...jobIds, `${tag}-p3`]) expect(await cut.queue.getJobState(id)).toBe('unknown')
    await proxy.restore()
    expect(await rowsOf([...jobIds, `${tag}-p3`])).toEqual([])
  })
})
