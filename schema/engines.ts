/**
 * The engines: which ones each job type has, and the host's settings for them (one object from the
 * configuration through the job process's start message to a handler's `ctx.engines`).
 */
import * as v from 'valibot'
import { JOB_CATALOG, JOB_TYPES, type JobCatalog, type JobType } from './params/index.ts'

type EnginesOf<T extends JobType> = JobCatalog[T]['params']['entries']['engine']['wrapped']['options']

/**
 * Every engine of each job type, as its params schema's `engine` lists them; the first (`simulate`) is the
 * default when neither the job nor the host names one.
 */
export const ENGINES = Object.fromEntries(
  JOB_TYPES.map((type) => [type, JOB_CATALOG[type].params.entries.engine.wrapped.options]),
) as { readonly [T in JobType]: EnginesOf<T> }

export type EngineOf<T extends JobType> = (typeof ENGINES)[T][number]
export type Engine = EngineOf<JobType>

/** The environment variable that picks a type's engine when a job names none (`DEFAULT_ENGINE_TRAIN_LORA`). */
export const defaultEngineVar = (type: JobType): string => `DEFAULT_ENGINE_${type.toUpperCase()}`

/** The host's engine settings, as a handler sees them in `ctx.engines`. */
export const EngineSettings = v.object({
  /** Step length of the `simulate` engines (SIMULATE_STEP_MS). */
  simulateStepMs: v.number(),
  /** ComfyUI's HTTP endpoint (COMFYUI_URL). */
  comfyuiUrl: v.optional(v.string()),
  /** An sd-scripts checkout (KOHYA_DIR) and the Python of its environment (KOHYA_PYTHON). */
  kohyaDir: v.optional(v.string()),
  kohyaPython: v.optional(v.string(), 'python3'),
  /** An F5-TTS checkout (F5TTS_DIR) and the Python of its environment (F5TTS_PYTHON). */
  f5ttsDir: v.optional(v.string()),
  f5ttsPython: v.optional(v.string(), 'python3'),
})
export type EngineSettings = v.InferOutput<typeof EngineSettings>
/** What callers pass: the defaults (interpreters) may be left out. */
export type EngineSettingsInput = v.InferInput<typeof EngineSettings>

/** Fills in the defaults. */
export const engineSettings = (input: EngineSettingsInput): EngineSettings => v.parse(EngineSettings, input)

/**
 * What an operator sets on a GPU host so that it has each real engine (`simulate` needs nothing): the
 * words of the message a job waiting for that engine shows.
 */
export const ENGINE_SETUP: Record<Engine, string> = {
  simulate: 'nothing to set (every host has it)',
  comfyui: 'set COMFYUI_URL',
  kohya: 'set KOHYA_DIR and KOHYA_PYTHON',
  f5tts: 'set F5TTS_DIR and F5TTS_PYTHON',
}

/** Whether `engine` is one of the type's engines. */
export const isEngineOf = <T extends JobType>(type: T, engine: unknown): engine is EngineOf<T> =>
  (ENGINES[type] as readonly unknown[]).includes(engine)

/**
 * The engine of a job that names none: DEFAULT_ENGINE_<TYPE> when set, else the type's first (`simulate`).
 *
 * @example defaultEngineFor('train_lora', { train_lora: 'kohya' }) // 'kohya'
 */
export const defaultEngineFor = <T extends JobType>(
  type: T,
  defaults: Partial<Record<JobType, Engine>>,
): EngineOf<T> => {
  const chosen = defaults[type]
  return isEngineOf(type, chosen) ? chosen : ENGINES[type][0]
}

/**
 * A job's params with `engine` filled in when the job names none: the one place DEFAULT_ENGINE_<TYPE> is
 * applied, by the gateway before it stores the row (so the row and the queued params name the engine, and
 * the same body resubmitted resolves the same way) and by the host for jobs other producers added without
 * one. Params that name an engine, even one the type lacks, are returned as they are: the params schema
 * refuses a wrong one by name. Anything but a plain object is returned as it is too, for the schema to refuse.
 *
 * @example
 * withDefaultEngine('train_lora', { baseModel: 'sd15' }, { train_lora: 'kohya' })
 * // { baseModel: 'sd15', engine: 'kohya' }
 */
export function withDefaultEngine<P>(
  type: JobType,
  params: P,
  defaults: Partial<Record<JobType, Engine>>,
): P {
  if (typeof params !== 'object' || params === null || Array.isArray(params)) return params
  if ((params as { engine?: unknown }).engine !== undefined) return params
  return { ...params, engine: defaultEngineFor(type, defaults) }
}
