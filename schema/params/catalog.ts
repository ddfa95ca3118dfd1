/**
 * The catalog of job types: one entry per type, the only place a type is declared. Everything else that
 * varies by type (JOB_TYPES, PARAMS_BY_TYPE, ARTIFACT_PREFIX, TYPE_DEFAULTS, ENGINES, the handler list in
 * functions/index.ts, the contract test's params, the web console's forms) is derived from it. It lives in schema/ so the gateway can
 * read it without loading handler code: the handler is named by its module path, which only the GPU host's
 * side (functions/index.ts) imports.
 */
import type * as v from 'valibot'
import { RenderVideoParams } from './render-video.ts'
import { TrainLoraParams } from './train-lora.ts'
import { TrainVoiceParams } from './train-voice.ts'

/** What every type's params schema has: an `engine`, optional, whose first option is the default. */
type ParamsWithEngine = v.StrictObjectSchema<
  {
    readonly engine: v.OptionalSchema<
      v.PicklistSchema<readonly ['simulate', ...string[]], v.ErrorMessage<v.PicklistIssue> | undefined>,
      'simulate'
    >
  } & v.ObjectEntries,
  v.ErrorMessage<v.StrictObjectIssue> | undefined
>

/** One job type, in the shape of a Trigger.dev task: everything about it but its `run`. */
export interface JobTypeEntry<P extends ParamsWithEngine = ParamsWithEngine> {
  /** What it is called in a few words (the console's type select and form): `LoRA training`. */
  title: string
  /** One line on what it does (its params' JSON Schema description, the console form's hint). */
  description: string
  /** The prefix of its console form's element ids (`lora-epochs`); the type name when absent. */
  formId?: string
  /** The params schema; unknown keys are rejected and `engine` picks the engine (`simulate` first). */
  params: P
  /** S3 key prefix of the artifacts: `<prefix>/<jobId>/...`. */
  artifactPrefix: string
  /**
   * Default limits, shared by the gateway (shown before a host takes the job) and the handler (its
   * `timeoutSec`, `maxAttempts`, `gpu.vramMb` and `gpu.exclusive`: the type's jobs must have a GPU to
   * themselves). A request may override them all.
   */
  defaults: { timeoutSec: number; maxAttempts: number; vramMb: number; exclusive?: boolean }
  /** The handler's module, from the repository root; its default export is `defineHandler({ type, run })`. */
  handler: `functions/${string}/index.ts`
  /** The smallest valid params (every default filled in by the schema): the contract test runs with them. */
  example: v.InferInput<P>
}

const entry = <P extends ParamsWithEngine>(e: JobTypeEntry<P>): JobTypeEntry<P> => e

/** Every job type. Adding one is adding an entry here (and its handler module). */
export const JOB_CATALOG = {
  train_lora: entry({
    title: 'LoRA training',
    description: 'Fine-tunes an SD1.5 model on a folder of captioned images (kohya sd-scripts).',
    formId: 'lora',
    params: TrainLoraParams,
    artifactPrefix: 'loras',
    defaults: { timeoutSec: 6 * 3600, maxAttempts: 3, vramMb: 12_000 },
    handler: 'functions/train_lora/index.ts',
    example: { baseModel: 'sd15', datasetPath: 'lora_ds' },
  }),
  train_voice: entry({
    title: 'Voice cloning',
    description: "Fine-tunes F5-TTS on a speaker's clips and their transcripts.",
    formId: 'voice',
    params: TrainVoiceParams,
    artifactPrefix: 'voices',
    defaults: { timeoutSec: 4 * 3600, maxAttempts: 3, vramMb: 8_000 },
    handler: 'functions/train_voice/index.ts',
    example: { speakerName: 'Ada', datasetPath: 'voice_ds' },
  }),
  render_video: entry({
    title: 'Video rendering',
    description: 'Runs a ComfyUI workflow: a template kept in the repo, or an inline graph.',
    formId: 'video',
    params: RenderVideoParams,
    artifactPrefix: 'videos',
    defaults: { timeoutSec: 2 * 3600, maxAttempts: 2, vramMb: 16_000 },
    handler: 'functions/render_video/index.ts',
    example: {},
  }),
} as const

export type JobCatalog = typeof JOB_CATALOG
