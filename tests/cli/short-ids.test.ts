/**
 * Short job ids in the CLI: `status`, `cancel` and `follow` take the start of a job's id and resolve it
 * through `GET /api/jobs?q=`; an ambiguous start lists the candidates; `list --q` searches. Against a real
 * gateway, Redis and Postgres (no GPU host: the rows are written as a host would have left them).
 */
import { randomUUID } from 'node:crypto'
import { eq } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AmbiguousJobIdError } from '../../gateway/cli/command.ts'
import { EXIT, run } from '../../gateway/cli/main.ts'
import type { JobSummary } from '../../schema/api.ts'
import { jobs } from '../../schema/db/tables.ts'
import { type Stack, startStack } from '../helpers/stack.ts'

let stack: Stack
/** Ids here start with a word no other test's ids start with. */
const tag = `s${randomUUID().slice(0, 7)}`

beforeAll(async () => {
  stack = await startStack({ withHost: false })
  const rows = [
    [`${tag}aaaa-1`, 'completed', 'Epoch 1/1'],
    [`${tag}aaaa-2`, 'completed', 'Epoch 1/1'],
    [`${tag}bbbb-1`, 'queued', 'waiting for a slot'],
    [`${tag}cccc-1`, 'completed', 'done'],
    // A message that holds another job's id start must not make that start ambiguous.
    [`z${tag}-other`, 'completed', `copied from ${tag}bbbb and ${tag}cccc`],
  ] as const
  for (const [id, status, message] of rows) {
    await stack.insertJob(id, status)
    await stack.database.db.update(jobs).set({ message, progress: 100 }).where(eq(jobs.id, id))
  }
})
afterAll(async () => {
  await stack?.close()
})

/** Runs the CLI in this process; its exit code and what it printed. */
async function cli(...args: string[]) {
  const printed = { out: '', err: '' }
  const code = await run(args, {
    stdout: { write: (chunk: string) => (printed.out += chunk) },
    stderr: { write: (chunk: string) => (printed.err += chunk) },
    env: { GPU_JOBS_URL: stack.url('') },
  })
  return { code, ...printed }
}

describe('short job ids', () => {
  it('status resolves the start of an id to the one job whose id starts with it', async () => {
    const res = await cli('status', `${tag}bbbb`, '--json')
    expect(res.err).toBe('')
    expect(res.code).toBe(EXIT.ok)
    expect(JSON.parse(res.out)).toMatchObject({ jobId: `${tag}bbbb-1`, status: 'queued' })
    // A full id needs no lookup; its answer is the same.
    expect(JSON.parse((await cli('status', `${tag}bbbb-1`, '--json')).out).jobId).toBe(`${tag}bbbb-1`)
  })

  it('an ambiguous start is an error listing the candidates, printed once', async () => {
    const res = await cli('status', `${tag}aaaa`)
    expect(res.code).toBe(EXIT.error)
    expect(res.out).toBe('')
    expect(res.err).toContain(`job id "${tag}aaaa" is ambiguous: 2 jobs' ids start with it`)
    expect(res.err).toContain(`${tag}aaaa-1  train_lora  completed`)
    expect(res.err).toContain(`${tag}aaaa-2  train_lora  completed`)
    expect(res.err.match(/ambiguous/g)).toHaveLength(1)
  })

  it('lists the candidates in aligned columns whatever their ids and statuses', () => {
    const summary = (jobId: string, status: JobSummary['status']) =>
      ({ jobId, type: 'train_lora', status, createdAt: '2026-12-08T01:00:00.000Z' }) as JobSummary
    const { message } = new AmbiguousJobIdError(
      'tmo-then',
      [summary('tmo-then-fail', 'retrying'), summary('tmo-then-ok', 'completed')],
      false,
    )
    const [, ...rows] = message.split('\n')
    expect(rows).toEqual([
      '  tmo-then-fail  train_lora  retrying   created 2026-12-08T01:00:00.000Z',
      '  tmo-then-ok    train_lora  completed  created 2026-12-08T01:00:00.000Z',
    ])
  })

  it('no job starting with it: the usual not-found', async () => {
    const res = await cli('status', `${tag}zzzz`)
    expect(res.code).toBe(EXIT.error)
    expect(res.err).toContain(`error: not_found: no job "${tag}zzzz"`)
    // Under 8 characters is no job's start (as in the API), though several jobs' ids start with it.
    const short = await cli('cancel', `${tag.slice(0, 7)}`)
    expect(short.code).toBe(EXIT.error)
    expect(short.err).toContain(`error: not_found: no job "${tag.slice(0, 7)}"`)
  })

  it('cancel and follow take the start of an id too', async () => {
    const cancelled = await cli('cancel', `${tag}bbbb`)
    expect(cancelled.err).toBe('')
    expect(cancelled.out).toContain(`cancelled ${tag}bbbb-1`)
    const followed = await cli('follow', `${tag}cccc`, '--json')
    expect(followed.code).toBe(EXIT.ok)
    expect(JSON.parse(followed.out.trim().split('\n').at(-1) ?? '')).toMatchObject({
      jobId: `${tag}cccc-1`,
      status: 'completed',
    })
    expect((await cli('follow', `${tag}aaaa`)).err).toContain('is ambiguous')
  })

  it('list --q (or --search) searches ids and messages', async () => {
    const byId = await cli('list', '--q', `${tag}aaaa`)
    expect(byId.code).toBe(EXIT.ok)
    expect(byId.out).toContain(`${tag}aaaa-1`)
    expect(byId.out).toContain(`${tag}aaaa-2`)
    expect(byId.out).not.toContain(`${tag}bbbb-1`)
    const byMessage = await cli('list', '--search', `FROM ${tag}BBBB`, '--json')
    expect(JSON.parse(byMessage.out).jobs.map((j: { jobId: string }) => j.jobId)).toEqual([`z${tag}-other`])
    expect((await cli('list', '--q', `${tag}nothing`)).out).toContain('no jobs match')
    const both = await cli('list', '--q', 'a', '--search', 'b')
    expect(both.code).toBe(EXIT.error)
    expect(both.err).toContain('--q and --search are the same option')
  })
})
