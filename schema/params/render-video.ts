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

/**
 * The template inputs the console's form offers, documented in JSON Schema (`inputs` itself takes any keys).
 * `TemplateInputs` in ../workflow.ts checks them, with the others, when a job is submitted.
 */
const TEMPLATE_INPUT_FIELDS = {
  prompt: { type: 'string', default: '', 'x-form': { rows: 2, placeholder: 'a red fox in the snow' } },
  seed: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
}

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
      v.metadata({ properties: TEMPLATE_INPUT_FIELDS }),
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
