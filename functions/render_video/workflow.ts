import type { RenderVideoParams } from '../../schema/params/index.ts'
import {
  type ResolvedWorkflow,
  resolveWorkflow as resolve,
  TemplateFileError,
  WorkflowError,
} from '../../schema/workflow.ts'
import { hashString } from '../formats/prng.ts'
import { NonRetryableError } from '../sdk/errors.ts'

/**
 * render_video's workflows on the GPU host. The templates and every check that needs no engine live in
 * schema/workflow.ts, which the gateway runs at submission; the handler runs the same code again, because
 * a job from another BullMQ producer never passed the gateway.
 */

export type { ResolvedWorkflow } from '../../schema/workflow.ts'
export { listTemplates, TemplateInputs } from '../../schema/workflow.ts'

/**
 * The graph a render_video job runs (see schema's `resolveWorkflow`), seeded from the job id so that
 * every attempt of a job renders the same video. A mistake of the job is `invalid_params`; a broken
 * template file in the repo fails the job without retries.
 *
 * @example const wf = await resolveWorkflow(job.params, job.jobId)
 */
export async function resolveWorkflow(params: RenderVideoParams, jobId: string): Promise<ResolvedWorkflow> {
  try {
    return await resolve(params, { jobId, defaultSeed: hashString(jobId) })
  } catch (err) {
    if (err instanceof WorkflowError)
      throw new NonRetryableError(err.message, { reason: 'invalid_params', cause: err })
    if (err instanceof TemplateFileError)
      throw new NonRetryableError(err.message, { reason: 'non_retryable', cause: err })
    throw err
  }
}
