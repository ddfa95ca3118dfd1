/**
 * What the host does with a BullMQ job before its attempt: validate the envelope (any producer can add
 * jobs), pick the handler, check the output prefix, resolve the default engine and the job's GPU needs
 * (its own `gpu` over its handler's), and create the job's row if no gateway did. An envelope no handler can run fails at once, through the lifecycle.
 */
import { type Job, UnrecoverableError } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import * as v from 'valibot'
import { handlerFor } from '../functions/index.ts'
import type { AnyHandler } from '../functions/sdk/define.ts'
import type { Config } from '../schema/config.ts'
import { withDefaultEngine } from '../schema/engines.ts'
import { JobEnvelope } from '../schema/envelope.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { apply } from '../schema/jobs/apply.ts'
import { decide, retryBackoff } from '../schema/jobs/lifecycle.ts'
import { eventPorts } from '../schema/jobs/requests.ts'
import { findUnsafeJson } from '../schema/json-safety.ts'
import { JOB_TYPES, type JobType, outputPrefixFor } from '../schema/params/index.ts'
import type { AttemptPlan } from './attempt.ts'
import type { HostMetrics } from './metrics.ts'
import { outputPrefixProblem } from './s3-artifacts.ts'
import type { JobState } from './state.ts'
import type { GpuRequest } from './vram-ledger.ts'

export interface IntakeDeps {
  config: Config
  logger: Logger
  redis: Redis
  state: JobState
  metrics: HostMetrics
}

/** The plan of `job`'s attempt; a job that cannot run is failed and thrown as UnrecoverableError. */
export async function admit(job: Job, deps: IntakeDeps): Promise<AttemptPlan> {
  const parsed = v.safeParse(JobEnvelope, { ...(job.data as object), jobId: job.id, type: job.name })
  if (!parsed.success)
    return refuse(job, deps, `invalid job payload: ${describeIssues(toFieldIssues(parsed.issues))}`)
  const envelope = parsed.output
  const { jobId, type } = envelope
  let handler: AnyHandler
  try {
    handler = handlerFor(type)
  } catch (err) {
    return refuse(job, deps, (err as Error).message)
  }
  // Any producer can send any prefix: only the type's own folder for this jobId is written to.
  const prefixProblem = outputPrefixProblem(type, jobId, envelope.artifacts?.outputPrefix)
  if (prefixProblem) return refuse(job, deps, `invalid job payload: ${prefixProblem}`, prefixProblem)
  // A job from another producer that names no engine gets this host's DEFAULT_ENGINE_<TYPE>, written
  // into the job (and its row) so that every host that meets it afterwards runs the same engine.
  const params = withDefaultEngine(type, envelope.params, deps.config.defaultEngines)
  const resolved = params !== envelope.params
  envelope.params = params
  const maxAttempts = envelope.maxAttempts ?? handler.maxAttempts
  const timeoutSec = envelope.timeoutSec ?? handler.timeoutSec
  const outputPrefix = outputPrefixFor(type, jobId)
  const gpu: GpuRequest = {
    vramMb: envelope.gpu?.vramMb ?? handler.gpu.vramMb,
    exclusive: envelope.gpu?.exclusive ?? handler.gpu.exclusive ?? false,
  }
  await deps.state.ensureJob({ ...envelope, maxAttempts, outputPrefix })
  // Best effort: this attempt runs on the resolved engine either way, and a failed write only means
  // that a host meeting the job later resolves it again by its own default.
  if (resolved)
    await job
      .updateData({ ...(job.data as object), params })
      .catch((err: unknown) =>
        deps.logger.warn({ jobId, err: (err as Error).message }, 'could not store the default engine'),
      )
  return { handler, maxAttempts, timeoutSec, outputPrefix, envelope, gpu }
}

/** Fails a job that cannot run (row, event, history), then throws for BullMQ (`reason` in its failure). */
async function refuse(job: Job, deps: IntakeDeps, message: string, reason = message): Promise<never> {
  await failInvalid(job, deps, message)
  throw new UnrecoverableError(reason)
}

async function failInvalid(job: Job, deps: IntakeDeps, message: string): Promise<void> {
  const { state, metrics } = deps
  const type = (JOB_TYPES as readonly string[]).includes(job.name) ? (job.name as JobType) : undefined
  const jobId = job.id
  deps.logger.warn({ jobId, name: job.name }, message)
  if (!type || !jobId) return
  // Params Postgres cannot store (NUL, lone surrogates, too deep) are left out of the row: the failure
  // must be recorded, and the message already says what was wrong with them.
  const params =
    typeof job.data?.params === 'object' && job.data.params && findUnsafeJson(job.data.params) === null
      ? (job.data.params as Record<string, unknown>)
      : {}
  await state.ensureJob({ jobId, type, params, maxAttempts: 1, outputPrefix: outputPrefixFor(type, jobId) })
  const row = await state.startAttempt(jobId)
  if (!row) return
  const t = decide({ kind: 'invalid', message }, row.attempt, {
    maxAttempts: 1,
    retry: retryBackoff(deps.config.retryBackoffMs),
  })
  await apply({ jobId, type }, t, {
    count: (counts) => metrics.count(type, counts),
    write: (w) => state.finishAttempt(jobId, w.attempt, w),
    ...eventPorts({ redis: deps.redis, records: state }),
  })
}
