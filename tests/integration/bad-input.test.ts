import { symlink } from 'node:fs/promises'
import path from 'node:path'
import { eq } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { jobs } from '../../schema/db/tables.ts'
import { type Stack, startStack } from '../helpers/stack.ts'

let stack: Stack
beforeAll(async () => {
  stack = await startStack({ withHost: false })
  await symlink('/etc', path.join(stack.dataDir, 'escape'))
})
afterAll(async () => {
  await stack?.close()
})

const post = (body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
  fetch(stack.url('/api/train'), { method: 'POST', headers, body })

const lora = (params: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: 'train_lora',
    params: { baseModel: 'sd15', datasetPath: 'ds', ...params },
    ...extra,
  })

const cases: { name: string; body: string; status: number; code: string; field?: string }[] = [
  { name: 'invalid JSON', body: '{"type":', status: 400, code: 'invalid_json' },
  {
    name: 'unknown type',
    body: JSON.stringify({ type: 'mine_bitcoin', params: {} }),
    status: 400,
    code: 'invalid_request',
    field: 'type',
  },
  {
    name: 'missing params',
    body: JSON.stringify({ type: 'train_lora' }),
    status: 400,
    code: 'invalid_request',
    field: 'params',
  },
  {
    name: 'missing required param',
    body: JSON.stringify({ type: 'train_lora', params: { datasetPath: 'ds' } }),
    status: 400,
    code: 'invalid_params',
    field: 'params.baseModel',
  },
  {
    name: 'wrongly typed param',
    body: lora({ epochs: 'ten' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.epochs',
  },
  {
    name: 'non-integer param',
    body: lora({ rank: 2.5 }),
    status: 400,
    code: 'invalid_params',
    field: 'params.rank',
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
  {
    name: 'jobId over 128 characters',
    body: lora({}, { jobId: 'x'.repeat(129) }),
    status: 400,
    code: 'invalid_request',
    field: 'jobId',
  },
  {
    name: 'datasetPath with ..',
    body: lora({ datasetPath: '../etc' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.datasetPath',
  },
  {
    name: 'absolute datasetPath elsewhere',
    body: lora({ datasetPath: '/etc' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.datasetPath',
  },
  {
    name: 'symlink out of DATA_DIR',
    body: lora({ datasetPath: 'escape' }),
    status: 400,
    code: 'invalid_params',
    field: 'params.datasetPath',
  },
  {
    name: 'timeoutSec out of range',
    body: lora({}, { timeoutSec: 0 }),
    status: 400,
    code: 'invalid_request',
    field: 'timeoutSec',
  },
  {
    name: 'body over 1 MB',
    body: lora({ baseModel: 'x'.repeat(1024 * 1024 + 10) }),
    status: 413,
    code: 'too_large',
  },
]

describe('POST /api/train refuses bad input and queues nothing', () => {
  it.each(cases)('$name -> $status', async ({ body, status, code, field }) => {
    const before = await stack.queue.count()
    const res = await post(body)
    expect(res.status).toBe(status)
    const json = (await res.json()) as {
      error: { code: string; message: string; issues?: { path: string; message: string }[] }
    }
    expect(json.error.code).toBe(code)
    expect(json.error.message.length).toBeGreaterThan(0)
    if (field) {
      expect(json.error.issues?.map((i) => i.path)).toContain(field)
      expect(json.error.message).toContain(field)
    }
    expect(await stack.queue.count()).toBe(before)
  })

  it('never echoes the rejected value back', async () => {
    const res = await post(lora({ epochs: 'sk-SECRET-TOKEN-123' }))
    expect(await res.text()).not.toContain('SECRET')
  })

  it('refuses a jobId that is not valid with no row written', async () => {
    await post(lora({}, { jobId: 'bad id' }))
    expect(await stack.database.db.select().from(jobs).where(eq(jobs.id, 'bad id'))).toHaveLength(0)
  })

  it('takes the same jobId twice, concurrently, as one job', async () => {
    const jobId = `same-${Date.now()}`
    const [a, b] = await Promise.all([post(lora({}, { jobId })), post(lora({}, { jobId }))])
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
