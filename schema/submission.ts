import * as v from 'valibot'
import { SubmitJobBody } from './api.ts'
import { DatasetPathError, resolveDatasetPath } from './dataset-path.ts'
import { type Engine, withDefaultEngine } from './engines.ts'
import { type FieldIssue, toFieldIssues } from './issues.ts'
import { isJsonObject, jsonSafetyIssue } from './json-safety.ts'
import { type JobType, PARAMS_BY_TYPE, type RenderVideoParams } from './params/index.ts'
import { renderVideoIssues } from './workflow.ts'

/** A submission refused: the API's error code, its one-line message and the issues, field by field. */
export interface SubmissionRefused {
  ok: false
  code: 'invalid_request' | 'invalid_params'
  message: string
  issues: FieldIssue[]
}
export interface SubmissionAccepted {
  ok: true
  body: SubmitJobBody
}

const inParams = (issue: FieldIssue): boolean => issue.path === 'params' || issue.path.startsWith('params.')

const refused = (code: SubmissionRefused['code'], issues: FieldIssue[]): SubmissionRefused => {
  const first = issues[0] ?? { path: '(body)', message: 'is not valid' }
  const what = code === 'invalid_params' ? 'invalid params' : 'invalid request'
  return { ok: false, code, message: `${what}: ${first.path} ${first.message}`, issues }
}

/**
 * Every check of a `POST /api/train` body that needs neither Redis nor Postgres nor an engine, in the
 * order that keeps each one safe: JSON the stores can keep (json-safety.ts) before any schema walks it,
 * the body, the type's params, `datasetPath` against DATA_DIR, render_video's workflow. The body is sent
 * as JSON text already parsed; nothing in the result echoes a rejected value or an absolute path.
 * Params that name no engine get DEFAULT_ENGINE_<TYPE>'s (`defaultEngines`) in the accepted body, so the
 * stored row and the queued job name the engine the job runs on.
 *
 * @example
 * const r = await checkSubmission(JSON.parse(text), { dataDir: config.dataDir, defaultEngines: config.defaultEngines })
 * if (!r.ok) throw new ApiError(400, r.code, r.message, r.issues)
 */
export async function checkSubmission(
  raw: unknown,
  { dataDir, defaultEngines }: { dataDir: string; defaultEngines: Partial<Record<JobType, Engine>> },
): Promise<SubmissionAccepted | SubmissionRefused> {
  // An array passes for an object in the schema ("type is required"); null, a number or a string would be
  // "must be Object": one message for every body that is not an object.
  if (!isJsonObject(raw))
    return refused('invalid_request', [{ path: '(body)', message: 'must be a JSON object' }])
  const unsafe = jsonSafetyIssue(raw)
  if (unsafe) return refused(inParams(unsafe) ? 'invalid_params' : 'invalid_request', [unsafe])
  const body = v.safeParse(SubmitJobBody, raw)
  if (!body.success) return refused('invalid_request', toFieldIssues(body.issues))
  const { type } = body.output
  body.output.params = withDefaultEngine(type, body.output.params, defaultEngines)
  const params = v.safeParse(PARAMS_BY_TYPE[type], body.output.params)
  if (!params.success) return refused('invalid_params', toFieldIssues(params.issues, 'params'))
  if ('datasetPath' in params.output) {
    try {
      await resolveDatasetPath(dataDir, params.output.datasetPath)
    } catch (err) {
      if (!(err instanceof DatasetPathError)) throw err
      return refused('invalid_params', [{ path: 'params.datasetPath', message: err.message }])
    }
  }
  if (type === 'render_video') {
    const issues = await renderVideoIssues(params.output as RenderVideoParams, body.output.jobId ?? 'new')
    if (issues.length > 0) return refused('invalid_params', issues)
  }
  return { ok: true, body: body.output }
}
