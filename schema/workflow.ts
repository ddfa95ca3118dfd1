import { readdir, readFile } from 'node:fs/promises'
import * as v from 'valibot'
import { type FieldIssue, toFieldIssues } from './issues.ts'
import { ComfyGraph, type RenderVideoParams, TemplateInputs } from './params/render-video.ts'

/** Declared with render_video's params, whose JSON Schema documents the ones the console's form offers. */
export { TemplateInputs }

/**
 * render_video's workflows and every check of them that needs no engine, in one place: the gateway runs
 * them at submission (a 400 naming the node and input), the handler runs them again on the GPU host for
 * jobs from other producers. Templates are kept in `schema/workflows/<name>.json`, in ComfyUI's API format
 * (`{ "<id>": { class_type, inputs } }`, a link is `[nodeId, outputIndex]`); an input value that is exactly
 * `"{{name}}"` is a placeholder the job fills in. An inline graph sent in the job is used as is.
 */

const TEMPLATE_DIR = new URL('./workflows/', import.meta.url)
const TEMPLATE_NAME = /^[a-z0-9_-]{1,64}$/
/** A whole input value that names a variable; the value replaces it with its JSON type (a number stays a number). */
const PLACEHOLDER = /^\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}$/

/**
 * Node types that produce files, which ComfyUI requires a prompt to reach (`OUTPUT_NODE`). Custom output
 * nodes nearly always start with Save or Preview, so those prefixes count too.
 */
const OUTPUT_NODE_TYPES = new Set(['VHS_VideoCombine', 'SaveImageWebsocket'])
const OUTPUT_NODE_PREFIX = /^(Save|Preview)[A-Z]/

/** The job's workflow is not one ComfyUI could run: `issues` name the field (`params.workflow.3.inputs.model`). */
export class WorkflowError extends Error {
  override name = 'WorkflowError'
  constructor(readonly issues: FieldIssue[]) {
    super(`invalid params: ${issues.map((i) => `${i.path} ${i.message}`).join('; ')}`)
  }
}

/** A template file in the repo that does not parse: our bug, not the job's. */
export class TemplateFileError extends Error {
  override name = 'TemplateFileError'
}

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

/** Names of the templates in `schema/workflows/`. */
export async function listTemplates(): Promise<string[]> {
  const files = await readdir(TEMPLATE_DIR).catch(() => [] as string[])
  return files
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort()
}

/** Reads template `name` as parsed JSON; an unknown name is the job's mistake (a `WorkflowError`). */
export async function loadTemplate(name: string): Promise<unknown> {
  // The params schema checks the name too; checking again here keeps the path join safe for any caller.
  if (!TEMPLATE_NAME.test(name))
    throw new WorkflowError([{ path: 'params.workflow', message: 'must be a workflow template name' }])
  let text: string
  try {
    text = await readFile(new URL(`${name}.json`, TEMPLATE_DIR), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    const known = await listTemplates()
    throw new WorkflowError([
      { path: 'params.workflow', message: `no such template (available: ${known.join(', ') || 'none'})` },
    ])
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new TemplateFileError(`workflow template "${name}" is not valid JSON: ${(err as Error).message}`, {
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
    throw new TemplateFileError('workflow template must be an object of nodes')
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
      else if (!Object.hasOwn(variables, name) || variables[name] === undefined) missing.add(name)
      else {
        used.add(name)
        filled[key] = variables[name]
      }
    }
    graph[id] = { ...(node as object), inputs: filled }
  }
  if (missing.size > 0)
    throw new WorkflowError([
      { path: 'params.inputs', message: `the workflow needs ${[...missing].sort().join(', ')}` },
    ])
  return { graph, used }
}

/** ComfyUI's own link test (`is_link`): a two-item list of a node id (a string) and a number. */
const isLink = (value: unknown): value is [string, number] =>
  Array.isArray(value) && value.length === 2 && typeof value[0] === 'string' && typeof value[1] === 'number'

/** The first node found on a cycle of links, or null; iterative, so a long chain costs no stack. */
function nodeOnCycle(graph: ComfyGraph): string | null {
  const state = new Map<string, 'open' | 'done'>()
  const linksOf = (id: string): string[] =>
    Object.values(graph[id]?.inputs ?? {})
      .filter(isLink)
      .map((link) => link[0])
      .filter((target) => Object.hasOwn(graph, target))
  for (const start of Object.keys(graph)) {
    if (state.has(start)) continue
    const stack: { id: string; next: string[] }[] = [{ id: start, next: linksOf(start) }]
    state.set(start, 'open')
    while (stack.length > 0) {
      const top = stack[stack.length - 1] as { id: string; next: string[] }
      const target = top.next.pop()
      if (target === undefined) {
        state.set(top.id, 'done')
        stack.pop()
      } else if (state.get(target) === 'open') return target
      else if (!state.has(target)) {
        state.set(target, 'open')
        stack.push({ id: target, next: linksOf(target) })
      }
    }
  }
  return null
}

/**
 * Checks a graph's shape and links and finds its output nodes. Issues name the node and input under
 * `path` (`params.workflow.<id>.inputs.<name>`), never the value sent.
 */
export function checkGraph(
  candidate: unknown,
  path = 'params.workflow',
): { graph: ComfyGraph; outputNodes: string[] } {
  const parsed = v.safeParse(ComfyGraph, candidate)
  if (!parsed.success) throw new WorkflowError(toFieldIssues(parsed.issues, path))
  const graph = parsed.output
  const issues: FieldIssue[] = []
  for (const [id, node] of Object.entries(graph))
    for (const [key, value] of Object.entries(node.inputs)) {
      if (!isLink(value)) continue
      const at = `${path}.${id}.inputs.${key}`
      if (!Number.isInteger(value[1]) || value[1] < 0)
        issues.push({ path: at, message: 'links to an output index that is not an integer of 0 or more' })
      else if (!Object.hasOwn(graph, value[0]))
        issues.push({ path: at, message: 'links to a node that is not in the graph' })
    }
  if (issues.length > 0) throw new WorkflowError(issues)
  const cyclic = nodeOnCycle(graph)
  if (cyclic !== null)
    throw new WorkflowError([
      { path: `${path}.${cyclic}`, message: 'is on a cycle of links (ComfyUI needs a graph without cycles)' },
    ])
  const outputNodes = Object.keys(graph)
    .filter((id) => {
      const type = graph[id]?.class_type ?? ''
      return OUTPUT_NODE_TYPES.has(type) || OUTPUT_NODE_PREFIX.test(type)
    })
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
  if (outputNodes.length === 0)
    throw new WorkflowError([
      {
        path,
        message: 'has no output node (such as SaveImage, SaveAnimatedWEBP, SaveVideo or VHS_VideoCombine)',
      },
    ])
  return { graph, outputNodes }
}

/**
 * The graph a render_video job runs: the named template filled with the job's inputs, size, frame count
 * and fps, or the job's inline graph as is. Throws `WorkflowError` for anything the job got wrong.
 *
 * @example const wf = await resolveWorkflow(params, { jobId, defaultSeed: 42 })
 */
export async function resolveWorkflow(
  params: RenderVideoParams,
  { jobId, defaultSeed }: { jobId: string; defaultSeed: number },
): Promise<ResolvedWorkflow> {
  const inputs = v.safeParse(TemplateInputs, params.inputs)
  if (!inputs.success) throw new WorkflowError(toFieldIssues(inputs.issues, 'params.inputs'))
  if (typeof params.workflow !== 'string') {
    const { graph, outputNodes } = checkGraph(params.workflow)
    return {
      source: 'inline',
      graph,
      outputNodes,
      variables: {},
      unusedInputs: Object.keys(params.inputs),
      seed: null,
    }
  }
  const seed = inputs.output.seed ?? defaultSeed
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
  const { graph, outputNodes } = checkGraph(filled)
  return {
    source: params.workflow,
    graph,
    outputNodes,
    variables,
    unusedInputs: Object.keys(params.inputs).filter((k) => !used.has(k)),
    seed: used.has('seed') ? seed : null,
  }
}

/**
 * The engine-free checks of render_video params (already valid against `RenderVideoParams`), as field
 * issues: empty when the workflow would reach the engine intact.
 */
export async function renderVideoIssues(params: RenderVideoParams, jobId: string): Promise<FieldIssue[]> {
  try {
    await resolveWorkflow(params, { jobId, defaultSeed: 0 })
    return []
  } catch (err) {
    if (err instanceof WorkflowError) return err.issues
    throw err
  }
}
