/**
 * The `comfyui` engine of render_video: one prompt on a ComfyUI server over its HTTP + WebSocket API
 * (shared/reference/engines.md section 1, checked against the recorded transcripts). It submits the graph
 * with a `client_id`, follows `/ws?clientId=` for progress, falls back to polling `/history/<id>` when the
 * socket drops, streams every output file from `/view` into the job's artifacts, and on cancel or timeout
 * deletes the prompt from ComfyUI's queue or interrupts it, so ComfyUI is idle when the job ends.
 */

import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ComfyGraph } from '../../../schema/params/render-video.ts'
import type { ArtifactRecord, HandlerContext } from '../../sdk/context.ts'
import { abortReason, NonRetryableError, RetryableError } from '../../sdk/errors.ts'
import { cancelPrompt } from './cancel.ts'
import { describeRefusal, type ExecutionError, executionFailure, type PromptRefusal } from './errors.ts'
import {
  type ComfyTimings,
  causeText,
  comfyEndpoint,
  comfyJson,
  DEFAULT_TIMINGS,
  type HistoryEntry,
  historyOf,
  queueState,
  unavailable,
} from './http.ts'
import { artifactNames, download, outputFiles } from './outputs.ts'
import { DOWNLOAD_TO, nodesToRun, PromptProgress, RUN_FROM, RUN_TO } from './progress.ts'
import { type ComfyEvent, ComfySocket } from './socket.ts'

export { describeRefusal } from './errors.ts'
export { type ComfyEndpoint, type ComfyTimings, comfyEndpoint, DEFAULT_TIMINGS } from './http.ts'
export { artifactNames, type ComfyFile, contentTypeOf, outputFiles } from './outputs.ts'

export interface ComfyRunResult {
  promptId: string
  /** The artifacts stored from ComfyUI's outputs, in output-node order. */
  files: ArtifactRecord[]
  cachedNodes: number
  executedNodes: number
}

type Outcome =
  | { kind: 'success' }
  | { kind: 'error'; data: ExecutionError }
  | { kind: 'interrupted'; data: { node_id?: string; node_type?: string } }

/** What a `/history` entry says about how the prompt ended. */
function outcomeOfHistory(entry: HistoryEntry): Outcome | null {
  const messages = entry.status?.messages ?? []
  const find = (type: string) => messages.find((m) => Array.isArray(m) && m[0] === type)?.[1]
  const error = find('execution_error')
  if (error) return { kind: 'error', data: error as ExecutionError }
  const interrupted = find('execution_interrupted')
  if (interrupted) return { kind: 'interrupted', data: interrupted as { node_id?: string } }
  if (entry.status?.status_str === 'success' || entry.status?.completed) return { kind: 'success' }
  if (entry.status?.status_str === 'error') return { kind: 'error', data: {} }
  // An old ComfyUI without `status`: history is written when the prompt is done.
  return entry.status ? null : { kind: 'success' }
}

/**
 * Runs `graph` on ComfyUI and stores every output file as an artifact. Rejects with the signal's reason
 * after cleaning up in ComfyUI when the job is cancelled or times out; with a RetryableError naming
 * ComfyUI and COMFYUI_URL when it cannot be reached; with a NonRetryableError when it refuses the graph.
 *
 * @example const run = await runComfyPrompt(ctx, workflow.graph, workflow.outputNodes, { reserved: new Set(['workflow.json']) })
 */
export async function runComfyPrompt(
  ctx: HandlerContext,
  graph: ComfyGraph,
  outputNodes: readonly string[],
  opts: { timings?: Partial<ComfyTimings>; reserved?: ReadonlySet<string>; clientId?: string } = {},
): Promise<ComfyRunResult> {
  const url = ctx.engines.comfyuiUrl
  if (!url) throw new Error('runComfyPrompt needs ctx.engines.comfyuiUrl')
  const ep = comfyEndpoint(url)
  const timings = { ...DEFAULT_TIMINGS, ...opts.timings }
  const clientId = opts.clientId ?? `gpu-jobs-${randomUUID()}`
  const progress = new PromptProgress(ctx, graph, nodesToRun(graph, outputNodes))
  const { signal } = ctx

  let promptId: string | null = null
  let settle: ((outcome: Outcome) => void) | null = null
  let fail: ((err: Error) => void) | null = null
  const finished = new Promise<Outcome>((resolve, reject) => {
    settle = resolve
    fail = reject
  })
  // A fatal error can come before anything awaits `finished` (the socket lost during POST /prompt).
  finished.catch(() => {})
  let outcome: Outcome | null = null
  let interruptedSeen = false
  let started = false
  const early: ComfyEvent[] = []
  const end = (o: Outcome) => {
    if (o.kind === 'interrupted') interruptedSeen = true
    if (outcome) return
    outcome = o
    settle?.(o)
  }

  const onEvent = (event: ComfyEvent): void => {
    const data = event.data ?? {}
    // Events of other prompts (other clients' broadcasts) are not ours; `status` has no prompt id.
    if (typeof data.prompt_id === 'string' && promptId !== null && data.prompt_id !== promptId) return
    if (promptId === null && typeof data.prompt_id === 'string') {
      // Our POST /prompt has not answered yet; keep the event until we know our id.
      early.push(event)
      return
    }
    switch (event.type) {
      case 'status': {
        const remaining = (data.status as { exec_info?: { queue_remaining?: number } })?.exec_info
          ?.queue_remaining
        if (!started && promptId !== null && typeof remaining === 'number' && remaining > 1)
          progress.emit(1, `waiting in ComfyUI's queue (${remaining} prompts queued or running)`)
        return
      }
      case 'execution_start':
        started = true
        progress.emit(RUN_FROM, 'ComfyUI started the prompt')
        return
      case 'execution_cached':
        started = true
        progress.cachedNodes(Array.isArray(data.nodes) ? data.nodes.map(String) : [])
        return
      case 'executing': {
        const node = data.node
        if (node === null) {
          // The classic "done" (main.py): after execution_success, or after an error or interrupt. If
          // neither came (an old ComfyUI, or a frame lost while the socket was down), ask /history.
          if (data.prompt_id === promptId && !outcome) void checkHistory()
          return
        }
        if (typeof node === 'string') {
          started = true
          progress.executing(node)
        }
        return
      }
      case 'progress':
        if (typeof data.node === 'string' && typeof data.value === 'number' && typeof data.max === 'number')
          progress.step(data.node, data.value, data.max)
        return
      case 'progress_state': {
        const nodes = (data.nodes ?? {}) as Record<string, { value?: number; max?: number; state?: string }>
        let running: string | null = null
        for (const [id, n] of Object.entries(nodes)) {
          if (n?.state === 'finished') progress.finished(id)
          else if (n?.state === 'running') running = id
        }
        const n = running === null ? undefined : nodes[running]
        if (running !== null && n && typeof n.value === 'number' && typeof n.max === 'number')
          progress.step(running, n.value, n.max)
        else progress.report()
        return
      }
      case 'execution_success':
        end({ kind: 'success' })
        return
      case 'execution_error':
        end({ kind: 'error', data: data as ExecutionError })
        return
      case 'execution_interrupted':
        end({ kind: 'interrupted', data: data as { node_id?: string } })
        return
    }
  }

  let fatal: Error | null = null
  const onFatal = (err: Error) => {
    fatal ??= err
    fail?.(err)
  }

  let polling = false
  let lastReached = Date.now()
  /** Reads /history once; a finished prompt settles the run; a prompt ComfyUI no longer knows fails it. */
  const checkHistory = async (queueToo = false): Promise<void> => {
    if (polling || promptId === null || outcome) return
    polling = true
    try {
      const entry = await historyOf(ep, promptId, timings)
      lastReached = Date.now()
      if (entry) {
        const o = outcomeOfHistory(entry)
        if (o) end(o)
        return
      }
      if (!queueToo) return
      const q = await queueState(ep, promptId, timings)
      if (q.running || q.pending) return
      // Not queued and no history: finished between the two reads, or ComfyUI restarted and lost it.
      const again = await historyOf(ep, promptId, timings)
      if (again) {
        const o = outcomeOfHistory(again)
        if (o) end(o)
      } else
        onFatal(unavailable(ep, `no longer knows prompt ${promptId} (not queued, no history: restarted?)`))
    } catch (err) {
      // Unreachable: the socket's reconnect loop and lastReached bound how long this may go on.
      if (Date.now() - lastReached > timings.maxDownMs)
        onFatal(err instanceof Error ? err : new Error(String(err)))
    } finally {
      polling = false
    }
  }

  // Events sent while the socket was down are lost: the end may have passed meanwhile, so read /history
  // (and /queue) as soon as it is back rather than at the next poll.
  const socket = new ComfySocket(ep, clientId, timings, onEvent, onFatal, ctx.log, () => {
    void checkHistory(true)
  })
  let poller: NodeJS.Timeout | undefined
  let pollCount = 0
  let onAbort: (() => void) | undefined
  try {
    await socket.open()
    if (signal.aborted) throw abortReason(signal)
    // Not tied to ctx.signal: an aborted POST could still queue the prompt without our knowing its id.
    // A cancel that comes meanwhile is handled as soon as the id is known.
    const { status, json } = await comfyJson<PromptRefusal & { prompt_id?: string; node_errors?: unknown }>(
      ep,
      'POST',
      'prompt',
      { body: { prompt: graph, client_id: clientId }, timeoutMs: timings.httpTimeoutMs },
    )
    if (status === 400)
      throw new NonRetryableError(describeRefusal(json), {
        reason: 'invalid_params',
        code: 'COMFYUI_INVALID_PROMPT',
      })
    if (status !== 200 || typeof json.prompt_id !== 'string')
      throw unavailable(ep, `answered ${status} to POST /prompt without a prompt id`)
    promptId = json.prompt_id
    const partial =
      json.node_errors && typeof json.node_errors === 'object' ? Object.keys(json.node_errors) : []
    if (partial.length > 0)
      ctx.log.warn(
        `ComfyUI queued the prompt but refused output nodes ${partial.join(', ')}: ${describeRefusal(json)}`,
      )
    ctx.log.info(`ComfyUI prompt ${promptId} queued (client ${clientId})`)
    progress.emit(1, `queued in ComfyUI as prompt ${promptId} (${progress.toRun.size} nodes)`)
    for (const event of early.splice(0)) onEvent(event)

    const cancelled = new Promise<never>((_, reject) => {
      onAbort = () => {
        void cancelPrompt(ep, promptId as string, timings, ctx, () => interruptedSeen || outcome !== null)
          .catch((err) => ctx.log.warn(`ComfyUI cleanup after cancel failed: ${causeText(err)}`))
          .finally(() => reject(abortReason(signal)))
      }
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
    const tick = () => {
      pollCount++
      const interval = socket.up ? timings.pollMs : timings.pollWhileDownMs
      // Every poll reads /history; every third also /queue, to notice a prompt ComfyUI dropped.
      void checkHistory(pollCount % 3 === 0 || !socket.up).finally(() => {
        if (!outcome && !fatal && !signal.aborted) poller = setTimeout(tick, interval)
      })
    }
    poller = setTimeout(tick, timings.pollMs)

    const result = await Promise.race([finished, cancelled])
    if (signal.aborted) await cancelled
    clearTimeout(poller)
    if (result.kind === 'error') {
      // The traceback goes to the job's log (GET /api/jobs/:id/logs), not into its one-line error.
      const trace = Array.isArray(result.data.traceback) ? result.data.traceback.join('').trimEnd() : ''
      if (trace)
        ctx.log.error(`ComfyUI traceback of node ${result.data.node_id ?? '?'}:\n${trace.slice(-4000)}`)
      throw executionFailure(result.data, graph)
    }
    if (result.kind === 'interrupted')
      throw new RetryableError(
        `ComfyUI interrupted prompt ${promptId} in node ${result.data.node_id ?? '?'} (${result.data.node_type ?? 'node'}), not at this job's request (someone interrupted ComfyUI)`,
        { code: 'COMFYUI_INTERRUPTED' },
      )
    socket.close()

    // Success: the files from /history, streamed one by one from /view.
    // ComfyUI sends execution_success before it writes the history (main.py: execute, then task_done,
    // then `executing` null): a read right away can still be `{}`. Wait for the entry, within a bound.
    let entry = await historyOf(ep, promptId, timings)
    const historyDeadline = Date.now() + timings.httpTimeoutMs
    while (!entry && Date.now() < historyDeadline) {
      if (signal.aborted) throw abortReason(signal)
      await sleep(100)
      entry = await historyOf(ep, promptId, timings)
    }
    if (!entry) throw unavailable(ep, `has no /history entry for finished prompt ${promptId}`)
    const files = outputFiles(entry.outputs ?? {})
    if (files.length === 0) ctx.log.warn(`ComfyUI prompt ${promptId} finished with no output files`)
    progress.emit(
      RUN_TO,
      `ComfyUI finished; fetching ${files.length} output file${files.length === 1 ? '' : 's'}`,
    )
    const names = artifactNames(files, opts.reserved ?? new Set())
    const records: ArtifactRecord[] = []
    for (const [i, file] of files.entries()) {
      if (signal.aborted) throw abortReason(signal)
      const record = await download(ep, file, names[i] as string, ctx, timings)
      records.push(record)
      progress.emit(
        RUN_TO + ((DOWNLOAD_TO - RUN_TO) * (i + 1)) / files.length,
        `saved ${record.path} (${record.contentType}, ${record.size} bytes) from node ${file.node}`,
      )
    }
    return {
      promptId,
      files: records,
      cachedNodes: progress.cached,
      executedNodes: progress.done.size - progress.cached,
    }
  } finally {
    clearTimeout(poller)
    if (onAbort) signal.removeEventListener('abort', onAbort)
    socket.close()
  }
}
