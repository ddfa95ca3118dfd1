import type * as v from 'valibot'
import { type JobType, TYPE_DEFAULTS } from '../../schema/params/index.ts'
import type { HandlerContext, HandlerJob } from './context.ts'

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }

export interface HandlerDefinition<S extends v.GenericSchema, R extends JsonValue> {
  type: JobType
  /** The params schema, from schema/. */
  params: S
  /** Hard timeout of one attempt, in seconds; a job may override it. */
  timeoutSec: number
  /** Attempts before the job fails; a job may override it. */
  maxAttempts: number
  gpu: { vramMb: number }
  run(job: HandlerJob<v.InferOutput<S>>, ctx: HandlerContext): Promise<R>
}

export type AnyHandler = HandlerDefinition<v.GenericSchema, JsonValue>

/**
 * Defines a job handler: one per job type, the default export of `functions/<type>/index.ts`.
 *
 * @example
 * export default defineHandler({
 *   type: 'train_lora', params: TrainLoraParams, timeoutSec: 6 * 3600, maxAttempts: 3,
 *   gpu: { vramMb: 12_000 },
 *   async run(job, ctx) { ctx.progress(100, 'done'); return { ok: true } },
 * })
 */
export function defineHandler<S extends v.GenericSchema, R extends JsonValue>(
  def: HandlerDefinition<S, R>,
): HandlerDefinition<S, R> {
  if (!Number.isFinite(def.timeoutSec) || def.timeoutSec <= 0)
    throw new Error(`${def.type}: timeoutSec must be > 0`)
  if (!Number.isInteger(def.maxAttempts) || def.maxAttempts < 1)
    throw new Error(`${def.type}: maxAttempts must be >= 1`)
  return Object.freeze(def)
}

/**
 * A type's default limits from schema/ (`timeoutSec`, `maxAttempts`, `gpu.vramMb`), to spread into its
 * `defineHandler({...})`, so the gateway and the handler agree on them.
 */
export const defaultLimits = (type: JobType): Pick<AnyHandler, 'timeoutSec' | 'maxAttempts' | 'gpu'> => {
  const { timeoutSec, maxAttempts, vramMb } = TYPE_DEFAULTS[type]
  return { timeoutSec, maxAttempts, gpu: { vramMb } }
}
