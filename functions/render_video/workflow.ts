import { readdir, readFile } from 'node:fs/promises'
import * as v from 'valibot'
import { describeIssues, toFieldIssues } from '../../schema/issues.ts'
import { ComfyGraph, type RenderVideoParams } from '../../schema/params/index.ts'
import { hashString } from '../formats/prng.ts'
import { NonRetryableError } from '../sdk/errors.ts'

/**
 * ComfyUI workflows for render_video: templates kept beside this module in `workflows/<name>.json`, in
 * ComfyUI's API format, whose input values may be placeholders `"{{name}}"` that the job fills in; or an
 * inline API-format graph sent in the job, used as is. Either way the result is checked before any engine
 * sees it: well-formed nodes, links that point at existing nodes, and at least one output node.
 */

const TEMPLATE_DIR = new URL('./workflows/', import.meta.url)
const TEMPLATE_NAME = /^[a-z0-9_-]{1,64}$/
/** A whole input value that names a variable; the value replaces it with its JSON type (a number stays a number). */
const PLACEHOLDER = /^\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}$/

const DEFAULT_NEGATIVE = 'blurry, low quality, watermark, text, deformed'

/** The job inputs a template understands, with their defaults; other keys may fill a custom template's placeholders. */
export const TemplateInputs = v.looseObject({
  prompt: v.optional(v.string(), ''),
  negative: v.optional(v.string(), DEFAULT_NEGATIVE),
  seed: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER))),
  steps: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(200)), 20),
  cfg: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(30)), 7),
  sampler: v.optional(v.pipe(v.string(), v.minLength(1)), 'euler'),
  scheduler: v.optional(v.pipe(v.string(), v.minLength(1)), 'normal'),
  checkpoint: v.optional(v.pipe(v.string(), v.minLength(1)), 'v1-5-pruned-emaonly.safetensors'),
})

/**
 * Node types that produce files, which ComfyUI requires a prompt to reach (`OUTPUT_NODE`). Custom output
 * nodes nearly always start with Save or Preview, so those prefixes count too.
 */
const OUTPUT_NODE_TYPES = new Set(['VHS_VideoCombine', 'SaveImageWebsocket'])
const OUTPUT_NODE_PREFIX = /^(Save|Preview)[A-Z]/

export interface ResolvedWorkflow {
  /** The template's name, or `inline`. */
  source: string
  graph: ComfyGraph
  /** Ids of the output nodes, in id order. */
  outputNodes: string[]
  /** The variables a template was filled with (empty for an inline graph). */
  variables: Record<string, unknown>
  /** Job inputs nothing used: a typo the handler should warn about. */
  unusedInputs: string[]
  /** The seed the graph samples with, when the template has one. */
  seed: number | null
}

const invalid = (message: string, cause?: unknown): NonRetryableError =>
  new NonRetryableError(message, { reason: 'invalid_params', cause })

/** Names of the templates in `workflows/`. */
export async function listTemplates(): Promise<string[]> {
  const files = await readdir(TEMPLATE_DIR).catch(() => [] as string[])
  return files
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort()
}

/** Reads template `name` as parsed JSON; an unknown name is the job's mistake (`invalid_params`). */
export async function loadTemplate(name: string): Promise<unknown> {
  // The schema checks the name too; checking again here keeps the path join safe for any caller.
  if (!TEMPLATE_NAME.test(name)) throw invalid(`params.workflow "${name}" is not a template name`)
  let text: string
  try {
    text = await readFile(new URL(`${name}.json`, TEMPLATE_DIR), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    const known = await listTemplates()
    throw invalid(`params.workflow: no template "${name}" (available: ${known.join(', ') || 'none'})`, err)
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    // A broken file in the repo is our bug, not the job's: say so, and do not retry it.
    throw new NonRetryableError(`workflow template "${name}" is not valid JSON: ${(err as Error).message}`, {
      reason: 'non_retryable',
      cause: err,
    })
  }
}

/**
 * Replaces every input value that is exactly `"{{name}}"` with `variables[name]`. Throws when a placeholder
 * has no value, naming each one, so a template and its inputs can never silently disagree.
 */
export function fillTemplate(
  template: unknown,
  variables: Readonly<Record<string, unknown>>,
): { graph: unknown; used: Set<string> } {
  if (typeof template !== 'object' || template === null || Array.isArray(template))
    throw invalid('workflow template must be an object of nodes')
  const used = new Set<string>()
  const missing = new Set<string>()
  const graph: Record<string, unknown> = {}
  for (const [id, node] of Object.entries(template)) {
    const inputs = (node as { inputs?: unknown } | null)?.inputs
    if (typeof inputs !== 'object' || inputs === null) {
      graph[id] = node
      continue
    }
    const filled: Record<string, unknown> = {}
    for (const [key, value] of Object.entries(inputs)) {
      const name = typeof value === 'string' ? PLACEHOLDER.exec(value)?.[1] : undefined
      if (name === undefined) filled[key] = value
      else if (variables[name] === undefined) missing.add(name)
      else {
        used.add(name)
        filled[key] = variables[name]
      }
    }
    graph[id] = { ...(node as object), inputs: filled }
  }
  if (missing.size > 0) throw invalid(`params.inputs: the workflow needs ${[...missing].sort().join(', ')}`)
  return { graph, used }
}

/** ComfyUI's own link test (`is_link`): a two-item list of a node id and an output index. */
const isLink = (value: unknown): value is [string, number] =>
  Array.isArray(value) && value.length === 2 && typeof value[0] === 'string' && Number.isInteger(value[1])

/** Checks a graph's shape and links and finds its output nodes; throws `invalid_params` with the reason. */
export function checkGraph(candidate: unknown, label: string): { graph: ComfyGraph; outputNodes: string[] } {
  const parsed = v.safeParse(ComfyGraph, candidate)
  if (!parsed.success)
    throw invalid(
      `${label} is not a ComfyUI API-format graph: ${describeIssues(toFieldIssues(parsed.issues))}`,
    )
  const graph = parsed.output
  for (const [id, node] of Object.entries(graph))
    for (const [key, value] of Object.entries(node.inputs))
      if (isLink(value) && !Object.hasOwn(graph, value[0]))
        throw invalid(
          `${label}: node ${id} input "${key}" links to node ${value[0]}, which is not in the graph`,
        )
  const outputNodes = Object.keys(graph)
    .filter((id) => {
      const type = graph[id]!.class_type
      return OUTPUT_NODE_TYPES.has(type) || OUTPUT_NODE_PREFIX.test(type)
    })
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
  if (outputNodes.length === 0)
    throw invalid(`${label} has no output node (such as SaveAnimatedWEBP, SaveVideo or VHS_VideoCombine)`)
  return { graph, outputNodes }
}

/**
 * The graph a render_video job runs: the named template filled with the job's inputs, size, frame count
 * and fps, or the job's inline graph as is.
 *
 * @example const wf = await resolveWorkflow(job.params, job.jobId)
 */
export async function resolveWorkflow(params: RenderVideoParams, jobId: string): Promise<ResolvedWorkflow> {
  if (typeof params.workflow !== 'string') {
    const { graph, outputNodes } = checkGraph(params.workflow, 'params.workflow')
    return {
      source: 'inline',
      graph,
      outputNodes,
      variables: {},
      unusedInputs: Object.keys(params.inputs),
      seed: null,
    }
  }
  const inputs = v.safeParse(TemplateInputs, params.inputs)
  if (!inputs.success)
    throw invalid(`invalid inputs: ${describeIssues(toFieldIssues(inputs.issues, 'params.inputs'))}`)
  // The same job gets the same seed on every attempt, so a retry renders the same video.
  const seed = inputs.output.seed ?? hashString(jobId)
  const variables: Record<string, unknown> = {
    ...inputs.output,
    seed,
    width: params.width,
    height: params.height,
    frames: params.frames,
    fps: params.fps,
    filename_prefix: `gpu-jobs/${jobId}`,
  }
  const { graph: filled, used } = fillTemplate(await loadTemplate(params.workflow), variables)
  const { graph, outputNodes } = checkGraph(filled, `workflow template "${params.workflow}"`)
  return {
    source: params.workflow,
    graph,
    outputNodes,
    variables,
    unusedInputs: Object.keys(params.inputs).filter((k) => !used.has(k)),
    seed: used.has('seed') ? seed : null,
  }
}
