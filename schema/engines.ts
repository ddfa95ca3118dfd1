/**
 * The engines: which ones each job type has, and the host's settings for them (one object from the
 * configuration through the job process's start message to a handler's `ctx.engines`).
 */
import * as v from 'valibot'
import type { JobType } from './params/index.ts'

/** Every engine of each job type; the first is the default when neither the job nor the host names one. */
export const ENGINES = {
  train_lora: ['simulate', 'kohya'],
  train_voice: ['simulate', 'f5tts'],
  render_video: ['simulate', 'comfyui'],
} as const satisfies Record<JobType, readonly [string, ...string[]]>

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
