/**
 * `POST /api/jobs/batch`: many submissions in one request, through the single submit's path
 * (routes/submit.ts): each body checked as one, then all queued together with one BullMQ `addBulk`, or
 * none (a conflict, the quota or Redis down refuses the whole batch before anything is queued).
 */
import { Hono } from 'hono'
import * as v from 'valibot'
import { MAX_BATCH_JOBS, type SubmitBatchResponse, type SubmitJobBody } from '../../schema/api.ts'
import type { Config } from '../../schema/config.ts'
import { type FieldIssue, toFieldIssues } from '../../schema/issues.ts'
import { isJsonObject, jsonSafetyIssue } from '../../schema/json-safety.ts'
import { ApiError } from '../errors.ts'
import { jsonBody } from '../middleware/body.ts'
import { checkBody, MAX_BODY_BYTES, readJson, type Submitter } from './submit.ts'

/** The largest batch body: a few full-size single bodies' worth. */
export const MAX_BATCH_BODY_BYTES = 4 * MAX_BODY_BYTES

/** The batch's own shape; each item is then checked as a single submit body. */
const BatchShell = v.strictObject({
  jobs: v.pipe(
    v.array(v.unknown(), 'must be an array of submit bodies'),
    v.minLength(1, 'must hold at least one job'),
    v.maxLength(MAX_BATCH_JOBS, `must hold at most ${MAX_BATCH_JOBS} jobs`),
  ),
})

/** `jobs[3]`: where an item is, in errors. */
const at = (i: number): string => `jobs[${i}]`

/** @example app.route('/', batchRoutes({ config, submitter })) */
export function batchRoutes({ config, submitter }: { config: Config; submitter: Submitter }): Hono {
  const app = new Hono()
  app.post('/api/jobs/batch', jsonBody({ maxBytes: MAX_BATCH_BODY_BYTES }), async (c) => {
    const raw = await readJson(c)
    // The shell's safety first (the items' is checked with each item, naming its own path).
    const isRecord = isJsonObject(raw)
    const { jobs: _items, ...shellRest } = isRecord ? raw : {}
    const unsafe = jsonSafetyIssue(isRecord ? shellRest : raw)
    const shell = unsafe ? null : v.safeParse(BatchShell, raw)
    if (unsafe || !shell?.success) {
      const issues = unsafe ? [unsafe] : toFieldIssues(shell?.issues ?? [])
      const first = issues[0] ?? { path: 'jobs', message: 'is not valid' }
      throw new ApiError(400, 'invalid_request', `invalid request: ${first.path} ${first.message}`, issues)
    }
    // Every item is checked, so one answer names all the bad ones (each issue's path says its item).
    const bodies: SubmitJobBody[] = []
    let refused: ApiError | undefined
    const issues: FieldIssue[] = []
    for (const [i, item] of shell.output.jobs.entries()) {
      try {
        bodies.push(await checkBody(item, config, at(i)))
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 400) throw err
        refused ??= err
        issues.push(...(err.issues ?? []))
      }
    }
    if (refused) throw new ApiError(400, refused.code, refused.message, issues)
    const answers = await submitter.submitMany(bodies, c.get('owner'), at)
    // 202 when this batch queued anything; 200 when every job existed already (as a single resubmit).
    const status = answers.some((a) => a.status === 202) ? 202 : 200
    return c.json({ jobs: answers.map((a) => a.body) } satisfies SubmitBatchResponse, status)
  })
  return app
}
