/**
 * Entry of the fresh process that runs one job. It owns its process group (the host forks it detached),
 * gets the job over IPC, validates everything that arrives, runs the handler, reports, and exits. When
 * the IPC channel closes (the host died), it kills its whole group so no orphan keeps a GPU.
 */
import { mkdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import * as v from 'valibot'
import { handlerFor } from '../functions/index.ts'
import type { HandlerContext } from '../functions/sdk/context.ts'
import type { AnyHandler } from '../functions/sdk/define.ts'
import { NonRetryableError, RetryableError } from '../functions/sdk/errors.ts'
import { createModelCache } from '../functions/sdk/models.ts'
import { ProgressMetrics } from '../schema/events.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { AbortError } from '../schema/jobs/errors.ts'
import { HostArtifactStore } from './child-artifacts.ts'
import { HostModelFetcher } from './child-models.ts'
import { type ChildError, type ChildMessage, ParentMessage } from './ipc.ts'

const send = (msg: ChildMessage): Promise<void> =>
  new Promise((resolve) => {
    if (!process.connected || !process.send) return resolve()
    process.send(msg, undefined, {}, () => resolve())
  })

const controller = new AbortController()
let started = false
let artifacts: HostArtifactStore | undefined
const modelFetcher = new HostModelFetcher(send)

const abortReason = (reason: string): Error =>
  Object.assign(new Error(`job ${reason}`), { name: 'AbortError', reason })

// SIGTERM from the host (timeout, cancel, shutdown): abort the handler's signal and let it wind down
// within the grace period; the host sends SIGKILL after that.
process.on('SIGTERM', () => controller.abort(controller.signal.reason ?? abortReason('terminated')))

process.on('disconnect', () => {
  // The host is gone: take the whole group down, grandchildren included.
  try {
    process.kill(-process.pid, 'SIGKILL')
  } catch {
    process.exit(137)
  }
})

/**
 * Waits until what the handler wrote to stdout and stderr has reached the host: writes to a pipe the host
 * reads slowly are queued, and `process.exit` would drop them (the job's log would lose its last lines).
 */
const flushOutput = (): Promise<unknown> =>
  Promise.race([
    Promise.all([process.stdout, process.stderr].map((s) => new Promise((resolve) => s.write('', resolve)))),
    sleep(2000),
  ])

function toChildError(err: unknown): ChildError {
  if (controller.signal.aborted) {
    const reason = (controller.signal.reason as { reason?: string })?.reason
    const r = reason === 'timeout' || reason === 'cancelled' || reason === 'shutdown' ? reason : 'cancelled'
    return new AbortError(r).toWire()
  }
  if (err instanceof NonRetryableError || err instanceof RetryableError)
    return {
      name: err.name,
      message: err.message,
      code: err.code,
      reason: err.reason,
      retryable: err instanceof RetryableError,
    }
  const e = err instanceof Error ? err : new Error(String(err))
  return { name: e.name, message: e.message, code: 'HANDLER_ERROR', reason: 'handler_error', retryable: true }
}

/**
 * A handler module given by path (the host's `handlerModules`, test fixtures). This process may be
 * compiled JavaScript with no TypeScript loader: a `.ts` module is imported through tsx's API, which
 * loads tsx only then, and only for that module's graph.
 */
async function importHandler(file: string): Promise<AnyHandler> {
  const url = pathToFileURL(file).href
  const mod = (
    file.endsWith('.ts') ? await (await import('tsx/esm/api')).tsImport(url, url) : await import(url)
  ) as { default: AnyHandler }
  return mod.default
}

/** The handler modules the host named at fork (argv), imported before 'ready' like the catalog's. */
const preloaded = new Map<string, Promise<AnyHandler>>(
  process.argv.slice(2).map((f) => [f, importHandler(f)]),
)
// A module that fails to import fails the job that uses it (in run()), not the spare.
await Promise.allSettled(preloaded.values())

async function run(msg: Extract<ParentMessage, { kind: 'start' }>): Promise<void> {
  const handler = msg.handlerModule
    ? await (preloaded.get(msg.handlerModule) ?? importHandler(msg.handlerModule))
    : handlerFor(msg.job.type)
  if (!handler || typeof handler.run !== 'function')
    throw new Error('handler module has no default handler export')
  const parsed = v.safeParse(handler.params, msg.job.params)
  if (!parsed.success)
    throw new NonRetryableError(`invalid params: ${describeIssues(toFieldIssues(parsed.issues, 'params'))}`, {
      reason: 'invalid_params',
    })
  await mkdir(msg.paths.scratch, { recursive: true })
  const store = new HostArtifactStore(msg.paths.scratch, send)
  artifacts = store
  const log =
    (level: 'debug' | 'info' | 'warn' | 'error') =>
    (text: string, fields?: Record<string, unknown>): void => {
      void send({ kind: 'log', level, msg: text, fields })
    }
  let warnedMetrics = false
  const ctx: HandlerContext = {
    jobId: msg.job.jobId,
    type: msg.job.type,
    attempt: msg.job.attempt,
    signal: controller.signal,
    progress: (percent, message, metrics) => {
      const pct = Math.min(100, Math.max(0, Number.isFinite(percent) ? percent : 0))
      // Metrics the event cannot carry (NaN, too many, odd names) are left out, said once in the job's
      // log: a chart's bad point must not fail the job, as an invalid IPC message would.
      const checked = metrics === undefined ? undefined : v.safeParse(ProgressMetrics, metrics)
      if (checked && !checked.success && !warnedMetrics) {
        warnedMetrics = true
        log('warn')(`progress metrics left out: ${describeIssues(toFieldIssues(checked.issues, 'metrics'))}`)
      }
      void send({
        kind: 'progress',
        percent: pct,
        message,
        ...(checked?.success ? { metrics: checked.output } : {}),
      })
    },
    log: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
    artifacts: {
      put: (p, body, opts) =>
        store.put(p, body, opts).catch((err: unknown) => {
          // Storage trouble is worth another attempt; a bad path is the handler's bug and is not.
          if (err instanceof NonRetryableError || err instanceof RetryableError) throw err
          throw new RetryableError(
            `could not store artifact ${JSON.stringify(p)}: ${(err as Error).message}`,
            {
              reason: 'storage',
              cause: err,
            },
          )
        }),
    },
    paths: msg.paths,
    gpu: msg.gpu,
    models: createModelCache(msg.paths.models, {
      signal: controller.signal,
      s3: modelFetcher,
      onOutcome: (model, outcome, bytes) => void send({ kind: 'model-cache', model, outcome, bytes }),
    }),
    engines: msg.engines,
  }
  // Not waited for: IPC keeps the order, so 'started' still reaches the host before anything the
  // handler sends, and the handler need not wait a turn of the event loop for the write to finish.
  void send({ kind: 'started' })
  const result = await handler.run(
    { jobId: msg.job.jobId, type: msg.job.type, params: parsed.output, attempt: msg.job.attempt },
    ctx,
  )
  await send({ kind: 'result', result: JSON.parse(JSON.stringify(result ?? null)) })
}

process.on('message', (raw: unknown) => {
  const parsed = v.safeParse(ParentMessage, raw)
  if (!parsed.success) {
    process.stderr.write(
      `child: invalid message from host: ${describeIssues(toFieldIssues(parsed.issues))}\n`,
    )
    process.exit(70)
  }
  const msg = parsed.output
  if (msg.kind === 'abort') {
    controller.abort(abortReason(msg.reason))
    return
  }
  if (msg.kind === 'artifact-stored' || msg.kind === 'artifact-refused') {
    artifacts?.onReply(msg)
    return
  }
  if (msg.kind === 'model-fetched' || msg.kind === 'model-fetch-failed') {
    modelFetcher.onReply(msg)
    return
  }
  if (started) return
  started = true
  run(msg).then(
    async () => {
      await flushOutput()
      process.exit(0)
    },
    async (err: unknown) => {
      await send({ kind: 'error', error: toChildError(err) })
      await flushOutput()
      process.exit(1)
    },
  )
})

void send({ kind: 'ready' })
