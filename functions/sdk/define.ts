import type * as v from 'valibot'
import { JOB_CATALOG, type JobCatalog, type JobType, type ParamsOf } from '../../schema/params/index.ts'
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
  /**
   * The GPU memory one job needs (MiB), reserved for it on the device it runs on, and whether it must
   * have the device to itself (a trainer that must not share); a job may override both (`gpu`).
   */
  gpu: { vramMb: number; exclusive?: boolean }
  run(job: HandlerJob<v.InferOutput<S>>, ctx: HandlerContext): Promise<R>
}

export type AnyHandler = HandlerDefinition<v.GenericSchema, JsonValue>

/**
 * The fields every handler's result starts with: the engine that ran, whether it was the simulation, and
 * the files stored (paths relative to the job's prefix).
 */
export const engineResult = <E extends string>(
  engine: E,
  files: string[],
): { engine: E; simulated: boolean; files: string[] } => ({ engine, simulated: engine === 'simulate', files })

/** A catalogued type's handler as its module writes it: the type and its `run`; the rest is the catalog's. */
export interface CatalogHandler<T extends JobType, R extends JsonValue> {
  type: T
  run(job: HandlerJob<ParamsOf<T>>, ctx: HandlerContext): Promise<R>
  /** Given, it is the other form: a definition with its own schema and limits. */
  params?: never
}

/**
 * Defines a job handler: one per job type, the default export of the module its catalog entry names
 * (schema/params/catalog.ts). Given the type and `run`, the params schema and the limits come from the
 * catalog; a test fixture may give them all itself instead, to run as that type with its own schema.
 *
 * @example
 * export default defineHandler({
 *   type: 'train_lora',
 *   async run(job, ctx) { ctx.progress(100, 'done'); return { ok: true } },
 * })
 */
export function defineHandler<T extends JobType, R extends JsonValue>(
  def: CatalogHandler<T, R>,
): HandlerDefinition<JobCatalog[T]['params'], R>
export function defineHandler<S extends v.GenericSchema, R extends JsonValue>(
  def: HandlerDefinition<S, R>,
): HandlerDefinition<S, R>
export function defineHandler(
  def: CatalogHandler<JobType, JsonValue> | AnyHandler,
): HandlerDefinition<v.GenericSchema, JsonValue> {
  const full: AnyHandler = def.params === undefined ? { ...def, ...catalogLimits(def.type) } : def
  if (!Number.isFinite(full.timeoutSec) || full.timeoutSec <= 0)
    throw new Error(`${full.type}: timeoutSec must be > 0`)
  if (!Number.isInteger(full.maxAttempts) || full.maxAttempts < 1)
    throw new Error(`${full.type}: maxAttempts must be >= 1`)
  return Object.freeze(full)
}

/** A type's schema and default limits from its catalog entry, in a handler definition's terms. */
const catalogLimits = (type: JobType): Omit<AnyHandler, 'type' | 'run'> => {
  const { params, defaults } = JOB_CATALOG[type]
  return {
    params,
    timeoutSec: defaults.timeoutSec,
    maxAttempts: defaults.maxAttempts,
    gpu: { vramMb: defaults.vramMb, ...(defaults.exclusive ? { exclusive: true } : {}) },
  }
}
