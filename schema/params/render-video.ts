import * as v from 'valibot'
import { form } from './shared.ts'

/** One node of a ComfyUI API-format graph: `{ "<id>": { class_type, inputs } }`. */
export const ComfyNode = v.looseObject({
  class_type: v.pipe(v.string(), v.minLength(1)),
  inputs: v.record(v.string(), v.unknown()),
})
export const ComfyGraph = v.pipe(
  v.record(v.pipe(v.string(), v.regex(/^[A-Za-z0-9_:.-]+$/)), ComfyNode),
  v.check((g) => Object.keys(g).length > 0, 'must have at least one node'),
)
export type ComfyGraph = v.InferOutput<typeof ComfyGraph>

/** A workflow template kept in the repo (`schema/workflows/<name>.json`, see schema/workflow.ts). */
export const WorkflowName = v.pipe(
  v.string(),
  v.regex(/^[a-z0-9_-]{1,64}$/, 'must be a workflow template name'),
)

const dimension = v.pipe(
  v.number(),
  v.integer(),
  v.minValue(16),
  v.maxValue(4096),
  v.multipleOf(8, 'must be a multiple of 8'),
)

const DEFAULT_NEGATIVE = 'blurry, low quality, watermark, text, deformed'

/**
 * The job inputs a template understands, with their defaults; other keys may fill a custom template's
 * placeholders. Checked for inline graphs too, so a key means the same whatever the workflow (../workflow.ts,
 * when a job is submitted and again when it runs).
 */
export const TemplateInputs = v.looseObject({
  prompt: v.optional(v.pipe(v.string(), form({ rows: 2, placeholder: 'a red fox in the snow' })), ''),
  negative: v.optional(v.string(), DEFAULT_NEGATIVE),
  seed: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER))),
  steps: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(200)), 20),
  cfg: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(30)), 7),
  sampler: v.optional(v.pipe(v.string(), v.minLength(1)), 'euler'),
  scheduler: v.optional(v.pipe(v.string(), v.minLength(1)), 'normal'),
  checkpoint: v.optional(v.pipe(v.string(), v.minLength(1)), 'v1-5-pruned-emaonly.safetensors'),
})

export const RenderVideoParams = v.strictObject({
  workflow: v.optional(
    v.pipe(
      v.union([WorkflowName, ComfyGraph]),
      v.description('A template name, or an inline ComfyUI API-format graph (JSON).'),
      form({ rows: 1 }),
    ),
    'default',
  ),
  inputs: v.optional(
    v.pipe(
      v.record(v.string(), v.unknown()),
      v.description("The template's variables; other keys fill a custom template's placeholders."),
      // The inputs the console's form offers, as JSON Schema `properties` (see schema/json-schema.ts).
      v.metadata({ properties: v.pick(TemplateInputs, ['prompt', 'seed']) }),
    ),
    {},
  ),
  width: v.optional(dimension, 512),
  height: v.optional(dimension, 512),
  frames: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(2000)), 24),
  fps: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(120), v.title('FPS')), 8),
  engine: v.optional(v.picklist(['simulate', 'comfyui']), 'simulate'),
})
export type RenderVideoParams = v.InferOutput<typeof RenderVideoParams>
