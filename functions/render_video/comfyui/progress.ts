/**
 * A prompt's progress from ComfyUI's events: nodes done (cached ones count as done) out of the nodes to
 * run, plus `value/max` inside the running node, mapped onto percent bands; messages name the node.
 */
import type { ComfyGraph } from '../../../schema/params/render-video.ts'
import type { HandlerContext } from '../../sdk/context.ts'

/** Nodes that lead to an output node: the ones ComfyUI will run (or serve from its cache). */
export function nodesToRun(graph: ComfyGraph, outputNodes: readonly string[]): Set<string> {
  const seen = new Set<string>()
  const stack = [...outputNodes]
  while (stack.length > 0) {
    const id = stack.pop() as string
    if (seen.has(id) || !Object.hasOwn(graph, id)) continue
    seen.add(id)
    for (const value of Object.values(graph[id]?.inputs ?? {}))
      if (Array.isArray(value) && value.length === 2 && typeof value[0] === 'string') stack.push(value[0])
  }
  return seen.size > 0 ? seen : new Set(Object.keys(graph))
}

/** Progress percent bands: queued, running the graph, downloading the outputs. */
export const RUN_FROM = 2
export const RUN_TO = 90
export const DOWNLOAD_TO = 99

/**
 * Progress of one prompt from ComfyUI's events: nodes done (cached ones count as done) out of the nodes to
 * run, plus `value/max` inside the running node. Messages name the node by class_type and id.
 */
export class PromptProgress {
  readonly done = new Set<string>()
  current: string | null = null
  value = 0
  max = 0
  cached = 0
  private lastPercent = 0
  private lastMessage = ''

  constructor(
    private readonly ctx: HandlerContext,
    private readonly graph: ComfyGraph,
    readonly toRun: Set<string>,
  ) {}

  private label(id: string): string {
    const type = this.graph[id]?.class_type
    return type ? `${type} #${id}` : `node #${id}`
  }

  cachedNodes(ids: string[]): void {
    for (const id of ids) {
      this.toRun.add(id)
      this.done.add(id)
    }
    this.cached = ids.length
    if (ids.length > 0) this.report(`ComfyUI: ${ids.length} of ${this.toRun.size} nodes cached`)
  }

  executing(id: string): void {
    if (this.current !== null && this.current !== id) this.done.add(this.current)
    if (this.current !== id) {
      this.value = 0
      this.max = 0
    }
    this.current = id
    this.toRun.add(id)
    this.report()
  }

  finished(id: string): void {
    this.toRun.add(id)
    this.done.add(id)
    if (this.current === id) {
      this.value = 0
      this.max = 0
    }
  }

  step(id: string, value: number, max: number): void {
    if (this.current !== id) this.executing(id)
    this.value = value
    this.max = max
    this.report()
  }

  percentNow(): number {
    const frac =
      this.current !== null && !this.done.has(this.current) && this.max > 0 ? this.value / this.max : 0
    const share = Math.min(
      1,
      (this.done.size + Math.min(1, Math.max(0, frac))) / Math.max(1, this.toRun.size),
    )
    return RUN_FROM + (RUN_TO - RUN_FROM) * share
  }

  report(message?: string): void {
    let text = message
    if (text === undefined) {
      // Between nodes (the last one finished, the next not started) the next node's start reports.
      if (this.current === null || this.done.has(this.current)) return
      const ordinal = Math.min(this.toRun.size, this.done.size + 1)
      text = `node ${ordinal}/${this.toRun.size}: ${this.label(this.current)}`
      if (this.max > 1 || (this.max > 0 && this.value > 0)) text += ` ${this.value}/${this.max}`
    }
    this.emit(this.percentNow(), text)
  }

  emit(percent: number, message: string): void {
    const p = Math.round(Math.max(this.lastPercent, Math.min(100, percent)) * 10) / 10
    if (p === this.lastPercent && message === this.lastMessage) return
    this.lastPercent = p
    this.lastMessage = message
    this.ctx.progress(p, message)
  }
}
