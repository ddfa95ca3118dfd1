import { randomUUID } from 'node:crypto'
import { mkdir, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import { eq, inArray } from 'drizzle-orm'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRedis } from '../../schema/clients.ts'
import { jobArtifacts, jobs } from '../../schema/db/tables.ts'
import { findUnsafeJson } from '../../schema/json-safety.ts'
import { cancelKey, eventLogKey, progressChannel, seqKey } from '../../schema/keys.ts'
import { type Stack, startStack, TEST_REDIS_URL } from '../helpers/stack.ts'

let stack: Stack
const FIXED_IDS = ['.', '..', '...']
/** Rows this file writes on purpose; removed afterwards, since other tests list the shared database. */
const created: string[] = []
/** Every progress channel a message was published on while this file ran. */
const published = new Set<string>()
let subscriber: Redis
beforeAll(async () => {
  stack = await startStack({ withHost: false })
  // Fixed ids of the table below, which a run from before a fix may have left behind (the database and
  // the per-job Redis keys are shared, not per test).
  await stack.database.db.delete(jobs).where(inArray(jobs.id, FIXED_IDS))
  await stack.redis.del(...FIXED_IDS.flatMap((id) => [seqKey(id), eventLogKey(id)]))
  await symlink('/etc', path.join(stack.dataDir, 'escape'))
  await mkdir(path.join(stack.dataDir, 'scratch', 'job-1'), { recursive: true })
  await symlink(path.join(stack.dataDir, 'scratch'), path.join(stack.dataDir, 'to-scratch'))
  subscriber = createRedis(TEST_REDIS_URL)
  subscriber.on('error', () => {})
  await subscriber.connect()
  subscriber.on('pmessage', (_pattern, channel) => published.add(channel))
  await subscriber.psubscribe('progress:*')
})
afterAll(async () => {
  subscriber?.disconnect()
  if (created.length > 0) await stack?.database.db.delete(jobs).where(inArray(jobs.id, created))
  await stack?.close()
})

const post = (body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
  fetch(stack.url('/api/train'), { method: 'POST', headers, body })

const loraParams = (params: Record<string, unknown> = {}) => ({
  baseModel: 'sd15',
  datasetPath: 'ds',
  ...params,
})
const lora = (params: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  type: 'train_lora',
  params: loraParams(params),
  ...extra,
})
const video = (params: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  type: 'render_video',
  params: { width: 64, height: 64, frames: 2, ...params },
  ...extra,
})
/** A minimal valid inline ComfyUI graph. */
const graph = {
  '1': { class_type: 'EmptyImage', inputs: { width: 64, height: 64, batch_size: 1, color: 0 } },
  '2': { class_type: 'SaveImage', inputs: { images: ['1', 0], filename_prefix: 'x' } },
}
/** `depth` nested arrays around 1, as JSON text (too deep to build as an object and stringify safely). */
const nested = (depth: number): string => `${'['.repeat(depth)}1${']'.repeat(depth)}`

interface Case {
  name: string
  /**
   * The body: an object, sent as JSON with a fresh `jobId` unless it names one; or a function of that
   * jobId that returns the raw text.
   */
  body: Record<string, unknown> | ((jobId: string) => string)
  status: number
  code: string
  /** A path the issues name (exactly, or as a prefix of a deeper path). */
  field?: string
  /** Text the response must not contain (besides DATA_DIR and the temp dir, checked always). */
  secret?: string
}

/** A train_lora submission whose datasetPath is refused (400 invalid_params naming params.datasetPath). */
const refusedDatasetPath = (name: string, datasetPath: string): Case => ({
  name,
  body: lora({ datasetPath }),
  status: 400,
  code: 'invalid_params',
  field: 'params.datasetPath',
})

const cases: Case[] = [
  { name: 'invalid JSON', body: (id) => `{"jobId":"${id}","type":`, status: 400, code: 'invalid_json' },
  ...['[]', 'null', '7', '"train_lora"'].map(
    (text): Case => ({
      name: `a body that is not an object: ${text}`,
      body: () => text,
      status: 400,
      code: 'invalid_request',
      field: '(body)',
    }),
  ),
  {
    name: 'unknown type',
    body: { type: 'mine_bitcoin', params: {} },
    status: 400,
    code: 'invalid_request',
    field: 'type',
  },
  {
    name: 'missing params',
    body: { type: 'train_lora' },
    status: 400,
    code: 'invalid_request',
    field: 'params',
  },
  {
    name: 'missing required param',
    body: { type: 'train_lora', params: { datasetPath: 'ds' } },
    status: 400,
    code: 'invalid_params',
    field: 'params.baseModel',
  },
  {
    name: 'wrongly typed param',
    body: lora({ epochs: 'sk-SECRET-TOKEN-123' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.epochs',
    secret: 'SECRET',
  },
  {
    name: 'non-integer param',
    body: lora({ rank: 2.75 }),
    status: 400,
    code: 'invalid_params',
    field: 'params.rank',
    secret: '2.75',
  },
  {
    name: 'number too large for a double (Infinity)',
    body: (id) => JSON.stringify(lora({}, { jobId: id })).replace('"ds"', '"ds","epochs":1e999'),
    status: 400,
    code: 'invalid_params',
    field: 'params.epochs',
    secret: 'Infinity',
  },
  {
    name: 'param out of range',
    body: lora({ epochs: 987654321 }),
    status: 400,
    code: 'invalid_params',
    field: 'params.epochs',
    secret: '987654321',
  },
  {
    name: 'unknown param',
    body: lora({ turbo: true }),
    status: 400,
    code: 'invalid_params',
    field: 'params.turbo',
  },
  {
    name: 'unknown body field',
    body: lora({}, { urgent: true }),
    status: 400,
    code: 'invalid_request',
    field: 'urgent',
  },
  // JavaScript keys that valibot's records drop silently: refused as unknown, wherever they are.
  ...['__proto__', 'constructor', 'prototype'].flatMap((key): Case[] => [
    {
      name: `params key ${key}`,
      body: (id) => JSON.stringify(lora({}, { jobId: id })).replace('"ds"', `"ds","${key}":{"x":1}`),
      status: 400,
      code: 'invalid_params',
      field: `params.${key}`,
    },
    {
      name: `render_video inputs key ${key}`,
      body: (id) =>
        JSON.stringify(video({ inputs: { prompt: 'a fox' } }, { jobId: id })).replace(
          '"a fox"',
          `"a fox","${key}":"y"`,
        ),
      status: 400,
      code: 'invalid_params',
      field: `params.inputs.${key}`,
    },
  ]),
  // Strings Postgres cannot store, anywhere in the body.
  ...(
    [
      ['NUL', '\u0000'],
      ['a lone high surrogate', '\ud800'],
      ['a lone low surrogate', '\udfff'],
    ] as const
  ).flatMap(([what, ch]): Case[] => [
    {
      name: `${what} in a param value`,
      body: lora({ baseModel: `sd${ch}15` }),
      status: 400,
      code: 'invalid_params',
      field: 'params.baseModel',
    },
    {
      name: `${what} in a nested input`,
      body: video({ inputs: { prompt: `a ${ch} fox` } }),
      status: 400,
      code: 'invalid_params',
      field: 'params.inputs.prompt',
    },
    {
      name: `${what} in a params key`,
      body: lora({ [`k${ch}`]: 1 }),
      status: 400,
      code: 'invalid_params',
      field: 'params',
    },
    {
      name: `${what} in a nested key`,
      body: video({ inputs: { [`p${ch}`]: 'x' } }),
      status: 400,
      code: 'invalid_params',
      field: 'params.inputs',
    },
    {
      name: `${what} in a body key`,
      body: lora({}, { [`x${ch}`]: 1 }),
      status: 400,
      code: 'invalid_request',
      field: '(body)',
    },
    {
      name: `${what} in jobId`,
      body: lora({}, { jobId: `job${ch}x` }),
      status: 400,
      code: 'invalid_request',
      field: 'jobId',
    },
    {
      name: `${what} in an inline workflow`,
      body: video({
        workflow: { ...graph, '2': { class_type: `Save${ch}Image`, inputs: { images: ['1', 0] } } },
      }),
      status: 400,
      code: 'invalid_params',
      field: 'params.workflow.2.class_type',
    },
  ]),
  {
    name: 'nesting thousands deep in params',
    body: (id) => `{"jobId":"${id}","type":"render_video","params":{"inputs":{"deep":${nested(5000)}}}}`,
    status: 400,
    code: 'invalid_params',
    field: 'params.inputs.deep',
  },
  {
    name: 'nesting hundreds of thousands deep in a body field',
    body: (id) => `{"jobId":"${id}","type":"train_lora","params":{},"priority":${nested(200_000)}}`,
    status: 400,
    code: 'invalid_request',
    field: 'priority',
  },
  {
    name: 'jobId with bad characters',
    body: lora({}, { jobId: 'a:b' }),
    status: 400,
    code: 'invalid_request',
    field: 'jobId',
  },
  {
    name: 'all-digit jobId',
    body: lora({}, { jobId: '12345' }),
    status: 400,
    code: 'invalid_request',
    field: 'jobId',
  },
  ...FIXED_IDS.map(
    (jobId): Case => ({
      name: `jobId ${jobId}`,
      body: lora({}, { jobId }),
      status: 400,
      code: 'invalid_request',
      field: 'jobId',
    }),
  ),
  {
    name: 'jobId over 128 characters',
    body: lora({}, { jobId: 'x'.repeat(129) }),
    status: 400,
    code: 'invalid_request',
    field: 'jobId',
  },
  {
    name: 'priority over BullMQ maximum (2097151)',
    body: lora({}, { priority: 2_097_152 }),
    status: 400,
    code: 'invalid_request',
    field: 'priority',
    secret: '2097152',
  },
  refusedDatasetPath('datasetPath with ..', '../etc'),
  refusedDatasetPath('absolute datasetPath elsewhere', '/etc'),
  refusedDatasetPath('symlink out of DATA_DIR', 'escape'),
  // DATA_DIR itself and the platform's own folders in it are not datasets.
  ...[
    '.',
    './',
    'ds/..',
    '',
    'scratch',
    'scratch/job-1',
    './scratch',
    'ds/../scratch',
    'SCRATCH',
    'pglite',
    's3',
    'redis',
    '.lock',
    '.hidden/x',
    'to-scratch',
  ].map((datasetPath) => refusedDatasetPath(`datasetPath "${datasetPath}"`, datasetPath)),
  refusedDatasetPath('absolute datasetPath of DATA_DIR itself', '<DATA_DIR>'),
  refusedDatasetPath('absolute datasetPath of a reserved folder', '<DATA_DIR>/pglite'),
  {
    name: 'timeoutSec out of range',
    body: lora({}, { timeoutSec: 0 }),
    status: 400,
    code: 'invalid_request',
    field: 'timeoutSec',
  },
  // render_video: everything that needs no engine is checked at submission.
  {
    name: 'render_video unknown template',
    body: video({ workflow: 'nope' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow',
    secret: 'nope',
  },
  {
    name: 'render_video workflow of the wrong type',
    body: video({ workflow: 42 }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow',
  },
  {
    name: 'render_video inline graph with no output node',
    body: video({ workflow: { '1': graph['1'] } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow',
  },
  {
    name: 'render_video inline graph with a link to a missing node',
    body: video({
      workflow: { ...graph, '2': { class_type: 'SaveImage', inputs: { images: ['zz-missing', 0] } } },
    }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow.2.inputs.images',
    secret: 'zz-missing',
  },
  {
    name: 'render_video inline graph with a negative output index',
    body: video({ workflow: { ...graph, '2': { class_type: 'SaveImage', inputs: { images: ['1', -1] } } } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow.2.inputs.images',
  },
  {
    name: 'render_video inline graph with a cycle',
    body: video({
      workflow: {
        ...graph,
        '1': { class_type: 'ImageInvert', inputs: { image: ['3', 0] } },
        '3': { class_type: 'ImageInvert', inputs: { image: ['1', 0] } },
      },
    }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow',
  },
  {
    name: 'render_video node without class_type',
    body: video({ workflow: { ...graph, '1': { inputs: {} } } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.workflow.1.class_type',
  },
  {
    name: 'render_video inputs.prompt not a string',
    body: video({ inputs: { prompt: 123 } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.inputs.prompt',
  },
  {
    name: 'render_video inputs.steps out of range',
    body: video({ inputs: { steps: 999 } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.inputs.steps',
    secret: '999',
  },
  {
    name: 'body over 1 MB',
    body: lora({ baseModel: 'x'.repeat(1024 * 1024 + 10) }),
    status: 413,
    code: 'too_large',
  },
]

/** The body to send, with `<DATA_DIR>` replaced, and the jobId whose traces must not exist afterwards. */
const prepare = (c: Case): { text: string; jobId: string } => {
  const fresh = `bad-${randomUUID()}`
  if (typeof c.body === 'function') return { text: c.body(fresh), jobId: fresh }
  const body = { jobId: fresh, ...c.body }
  const text = JSON.stringify(body).replaceAll('<DATA_DIR>', stack.dataDir)
  return { text, jobId: typeof body.jobId === 'string' ? body.jobId : fresh }
}

/** Nothing of the job anywhere: no BullMQ job, no row, no seq/event/cancel key, no published event. */
async function expectNoTrace(jobId: string): Promise<void> {
  expect(await stack.queue.getJob(jobId)).toBeUndefined()
  // Postgres cannot even be asked about an id it could not store.
  if (!findUnsafeJson(jobId))
    expect(await stack.database.db.select().from(jobs).where(eq(jobs.id, jobId))).toHaveLength(0)
  expect(await stack.redis.exists(seqKey(jobId), eventLogKey(jobId), cancelKey(jobId))).toBe(0)
  expect(published.has(progressChannel(jobId))).toBe(false)
}

describe('POST /api/train refuses bad input and leaves nothing behind', () => {
  const sentIds: string[] = []

  it.each(cases)('$name -> $status', async (c) => {
    const before = await stack.queue.count()
    const { text, jobId } = prepare(c)
    sentIds.push(jobId)
    const res = await post(text)
    const raw = await res.text()
    expect(res.status, raw.slice(0, 500)).toBe(c.status)
    const json = JSON.parse(raw) as {
      error: { code: string; message: string; issues?: { path: string; message: string }[] }
    }
    expect(json.error.code).toBe(c.code)
    expect(json.error.message.length).toBeGreaterThan(0)
    if (c.field) {
      const field = c.field
      const named = (p: string) => p === field || p.startsWith(`${field}.`)
      expect(json.error.issues?.map((i) => i.path).some(named), JSON.stringify(json.error.issues)).toBe(true)
      expect(json.error.message).toContain(field)
    }
    // Neither the rejected value nor where the gateway keeps its files.
    expect(raw).not.toContain(stack.dataDir)
    expect(raw).not.toContain(tmpdir())
    if (c.secret) expect(raw).not.toContain(c.secret)
    expect(await stack.queue.count()).toBe(before)
    await expectNoTrace(jobId)
  })

  it('published no event for any refused job', async () => {
    // Events published just before a response could arrive a moment after it; one round trip settles that.
    await subscriber.ping()
    for (const jobId of sentIds) expect(published.has(progressChannel(jobId))).toBe(false)
  })

  it('takes the boundary values: priority 2097151, a jobId with dots inside, an inline graph', async () => {
    for (const body of [
      lora({}, { priority: 2_097_151, jobId: `edge-${randomUUID()}` }),
      lora({}, { jobId: `a.b..c-${randomUUID()}` }),
      video(
        { workflow: graph, inputs: { prompt: 'emoji 🦊 pairs are fine' } },
        { jobId: `v-${randomUUID()}` },
      ),
    ]) {
      const res = await post(JSON.stringify(body))
      expect(res.status, await res.clone().text()).toBe(202)
      const { jobId } = (await res.json()) as { jobId: string }
      created.push(jobId)
      expect(await stack.queue.getJob(jobId)).toBeDefined()
    }
  })

  it('refuses a jobId that is not valid with no row written', async () => {
    await post(JSON.stringify(lora({}, { jobId: 'bad id' })))
    expect(await stack.database.db.select().from(jobs).where(eq(jobs.id, 'bad id'))).toHaveLength(0)
  })

  it('takes the same jobId twice, concurrently, as one job', async () => {
    const jobId = `same-${Date.now()}`
    created.push(jobId)
    const body = JSON.stringify(lora({}, { jobId }))
    const [a, b] = await Promise.all([post(body), post(body)])
    expect([a.status, b.status].sort()).toEqual([200, 202])
    expect(await stack.queue.count()).toBeGreaterThanOrEqual(1)
    expect((await stack.queue.getJobs(['wait', 'prioritized'])).filter((j) => j.id === jobId)).toHaveLength(1)
    expect(await stack.database.db.select().from(jobs).where(eq(jobs.id, jobId))).toHaveLength(1)
  })

  it('answers 404 for an unknown job and for unknown routes', async () => {
    expect((await fetch(stack.url('/api/status/nope-nope'))).status).toBe(404)
    expect((await fetch(stack.url('/api/nothing'))).status).toBe(404)
  })
})

describe('GET /api/jobs/:jobId/artifacts/<path> refuses bad paths and ranges', () => {
  const jobId = `art-${randomUUID()}`
  const content = Buffer.from('0123456789abcdefghij') // 20 bytes
  const size = content.length

  beforeAll(async () => {
    created.push(jobId)
    await stack.insertJob(jobId, 'completed')
    for (const rel of ['out.bin', 'sub dir/ü.bin']) {
      const key = `loras/${jobId}/${rel}`
      await stack.s3.client.send(
        new PutObjectCommand({ Bucket: stack.config.s3.bucket, Key: key, Body: content }),
      )
      await stack.database.db.insert(jobArtifacts).values({
        jobId,
        path: rel,
        key,
        size,
        sha256: 'x'.repeat(64),
        contentType: 'application/octet-stream',
      })
    }
  })

  const get = (rel: string, range?: string) =>
    fetch(stack.url(`/api/jobs/${jobId}/artifacts/${rel}`), { headers: range ? { range } : {} })

  it.each(['%ZZ', 'out%2', '%E0%A4%A', '%C0%AF', 'sub%20dir/%FF.bin', 'out.bin%'])(
    'malformed percent-encoding %s -> 400',
    async (rel) => {
      const res = await get(rel)
      expect(res.status).toBe(400)
      const json = (await res.json()) as { error: { code: string; issues?: { path: string }[] } }
      expect(json.error.code).toBe('invalid_path')
      expect(json.error.issues?.[0]?.path).toBe('path')
    },
  )

  it('decodes each segment: a path with a space and a non-ASCII letter is found', async () => {
    const res = await get(`${encodeURIComponent('sub dir')}/${encodeURIComponent('ü.bin')}`)
    expect(res.status).toBe(200)
    expect(Buffer.from(await res.arrayBuffer()).equals(content)).toBe(true)
  })

  it('finds the artifact when the job id in the URL is percent-encoded differently', async () => {
    const res = await fetch(
      stack.url(`/api/jobs/%${jobId.charCodeAt(0).toString(16)}${jobId.slice(1)}/artifacts/out.bin`),
    )
    expect(res.status).toBe(200)
  })

  it('answers 404 for an unknown path without echoing it', async () => {
    const res = await get('no-such-SECRET-file')
    expect(res.status).toBe(404)
    expect(await res.text()).not.toContain('SECRET')
  })

  const ranges: { range: string; status: number; contentRange?: string; body?: string }[] = [
    { range: 'bytes=0-3', status: 206, contentRange: `bytes 0-3/${size}`, body: '0123' },
    {
      range: 'bytes=5-',
      status: 206,
      contentRange: `bytes 5-19/${size}`,
      body: content.subarray(5).toString(),
    },
    { range: 'bytes=-4', status: 206, contentRange: `bytes 16-19/${size}`, body: 'ghij' },
    { range: 'bytes=18-999999', status: 206, contentRange: `bytes 18-19/${size}`, body: 'ij' },
    { range: 'bytes=-999', status: 206, contentRange: `bytes 0-19/${size}`, body: content.toString() },
    { range: 'bytes=19-19', status: 206, contentRange: `bytes 19-19/${size}`, body: 'j' },
    // Unsatisfiable or malformed: 416 with the size.
    { range: 'bytes=99999999-', status: 416, contentRange: `bytes */${size}` },
    { range: `bytes=${size}-`, status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=5-2', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=-0', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=abc', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=1-2-3', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=+1-2', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=0x1-2', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=--1', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes', status: 416, contentRange: `bytes */${size}` },
    { range: 'garbage', status: 416, contentRange: `bytes */${size}` },
    { range: 'bytes=99999999999999999999999-', status: 416, contentRange: `bytes */${size}` },
    // Documented fall-backs to the whole file: several ranges, or a unit other than bytes (RFC 9110 14.2).
    { range: 'bytes=0-1,4-5', status: 200, body: content.toString() },
    { range: 'items=0-3', status: 200, body: content.toString() },
  ]
  it.each(ranges)('Range: $range -> $status', async ({ range, status, contentRange, body }) => {
    const res = await get('out.bin', range)
    expect(res.status).toBe(status)
    if (contentRange) expect(res.headers.get('content-range')).toBe(contentRange)
    else expect(res.headers.get('content-range')).toBeNull()
    const bytes = Buffer.from(await res.arrayBuffer())
    if (body !== undefined) {
      expect(bytes.toString()).toBe(body)
      expect(res.headers.get('content-length')).toBe(String(bytes.length))
    }
    if (status === 416) expect(res.headers.get('content-type')).toContain('application/json')
  })
})
