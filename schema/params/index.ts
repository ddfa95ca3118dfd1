/**
 * The per-type names the rest of the code imports, each derived from the one catalog (./catalog.ts).
 */
import * as v from 'valibot'
import { JOB_CATALOG, type JobCatalog } from './catalog.ts'

export * from './catalog.ts'
export * from './render-video.ts'
export * from './train-lora.ts'
export * from './train-voice.ts'

type Key = keyof JobCatalog
const mapCatalog = <R>(f: (type: Key) => R): { [T in Key]: R } =>
  Object.fromEntries(JOB_TYPES.map((type) => [type, f(type)])) as { [T in Key]: R }

const [firstType, ...moreTypes] = Object.keys(JOB_CATALOG) as Key[]
if (firstType === undefined) throw new Error('the job catalog is empty')
/** Every job type, in catalog order. */
export const JOB_TYPES: readonly [Key, ...Key[]] = [firstType, ...moreTypes]
export const JobType = v.picklist(JOB_TYPES, `must be one of ${JOB_TYPES.join(', ')}`)
export type JobType = v.InferOutput<typeof JobType>

/** The params schema of each job type. */
export const PARAMS_BY_TYPE = mapCatalog((type) => JOB_CATALOG[type].params) as {
  readonly [T in JobType]: JobCatalog[T]['params']
}

export type ParamsOf<T extends JobType> = v.InferOutput<(typeof PARAMS_BY_TYPE)[T]>

/** S3 key prefix of each job type's artifacts: `<prefix>/<jobId>/...`. */
export const ARTIFACT_PREFIX: Record<JobType, string> = mapCatalog((type) => JOB_CATALOG[type].artifactPrefix)
export const outputPrefixFor = (type: JobType, jobId: string): string => `${ARTIFACT_PREFIX[type]}/${jobId}`

/**
 * Each type's default limits, shared by the gateway (shown before a host takes the job) and the handlers
 * (which use them as their `timeoutSec`, `maxAttempts` and `gpu.vramMb`). A request may override the first two.
 */
export const TYPE_DEFAULTS: Record<JobType, { timeoutSec: number; maxAttempts: number; vramMb: number }> =
  mapCatalog((type) => JOB_CATALOG[type].defaults)
