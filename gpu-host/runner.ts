import type { ChildProcess } from 'node:child_process'
import type { FileHandle } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import * as v from 'valibot'
import { checkArtifactPath } from '../functions/sdk/artifact-body.ts'
import type { ArtifactRecord, ArtifactStore, GpuInfo } from '../functions/sdk/context.ts'
import { checkModelName } from '../functions/sdk/models.ts'
import type { LogLevel, LogStream } from '../schema/db/logs.ts'
import { type EngineSettingsInput, engineSettings } from '../schema/engines.ts'
import type { ProgressMetrics } from '../schema/events.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import {
  AbortError,
  type AbortReason,
  ArtifactPathError,
  ProtocolError,
  UnexpectedExitError,
} from '../schema/jobs/errors.ts'
import type { JobType } from '../schema/params/index.ts'
import { ChildSpawn } from './child-spawn.ts'
import { type ChildError, ChildMessage, type ParentMessage } from './ipc.ts'
import { ModelFetchError, type ModelObjectFetcher } from './model-fetch.ts'
import { terminateGroup } from './process-group.ts'
import { openInside } from './scratch-file.ts'

const STDERR_TAIL_LINES = 40
/** After the job process group is gone, how long its stdout and stderr may take to be read to the end. */
const OUTPUT_DRAIN_MS = 1000

export type { AbortReason }

export interface RunJobOptions {
  job: { jobId: string; type: JobType; params: unknown; attempt: number }
  gpu: GpuInfo
  /** Value of CUDA_VISIBLE_DEVICES in the child; undefined leaves the host's. */
  cudaVisibleDevices: string | undefined
  paths: { scratch: string; models: string; data: string }
  engines: EngineSettingsInput
  /**
   * Where the job's artifacts go (S3 on a host, a folder for `npm run job`). It lives in this process: the
   * job process asks over IPC and never holds the store's credentials.
   */
  artifacts: ArtifactStore
  /**
   * Serves the job's `s3://` model sources with this process's credentials (`ctx.models.ensure`); without
   * one (`npm run job`) they are refused with a clear message.
   */
  models?: ModelObjectFetcher
  /** One `ctx.models.ensure` outcome the job process reported: for the host's model cache metrics. */
  onModelCache?(model: string, outcome: 'hit' | 'miss', bytes: number): void
  timeoutMs: number
  killGraceMs: number
  handlerModule?: string | undefined
  onProgress?(percent: number, message: string | undefined, metrics?: ProgressMetrics): void
  onLog?(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void
  /** Every line of the job process, for its log: stdout, stderr, and `ctx.log` (with its level and fields). */
  onLine?(stream: LogStream, text: string, level?: LogLevel, fields?: Record<string, unknown>): void
  onArtifact?(record: ArtifactRecord): void
  /** The handler is about to run: fork-to-start time, for the start-up histogram. */
  onStarted?(startupMs: number): void
}

export interface RunFailure extends ChildError {
  exitCode: number | null
  signal: NodeJS.Signals | null
  stderrTail: string
}

export type RunOutcome =
  | { ok: true; result: unknown; artifacts: ArtifactRecord[]; pid: number; groupGone: boolean }
  | { ok: false; error: RunFailure; artifacts: ArtifactRecord[]; pid: number; groupGone: boolean }

/**
 * One job in a fresh child process with its own process group. `abort()` (cancel, shutdown) and the
 * hard timeout both end in SIGTERM to the whole group, a grace period, then SIGKILL; `done` resolves
 * only once /proc shows no process of the group left.
 */
export class JobProcess {
  readonly done: Promise<RunOutcome>
  readonly pid: number
  private readonly child: ChildProcess
  private abortReason: AbortReason | undefined
  private termination: Promise<{ killed: boolean; gone: boolean }> | undefined
  /** Artifact uploads in flight, and the file streams they read (destroyed when the attempt is ended). */
  private readonly uploads = new Set<Promise<void>>()
  private readonly sources = new Set<Readable>()
  /** Aborts the model downloads of this job when it is aborted or its process is gone. */
  private readonly modelFetches = new AbortController()
  /** The job process asked for an artifact path outside its prefix: the attempt fails, not retryable. */
  private refusedPath: ChildError | undefined

  /** Runs the job in `spare` (a warm, unused job process) when given, else in a new fork. */
  constructor(
    private readonly opts: RunJobOptions,
    spare?: ChildSpawn,
  ) {
    const startedAt = performance.now()
    const spawned = spare?.alive ? spare : new ChildSpawn(opts.cudaVisibleDevices, opts.job.jobId)
    this.child = spawned.child
    this.pid = spawned.pid
    this.done = this.supervise(startedAt, spawned)
  }

  /** Ends the job: tells the handler why, then SIGTERM, grace, SIGKILL of the whole group. */
  abort(reason: AbortReason): void {
    if (this.abortReason) return
    this.abortReason = reason
    this.modelFetches.abort(new Error(`job ${reason}`))
    const message: ParentMessage = { kind: 'abort', reason }
    const terminate = () => {
      this.termination ??= terminateGroup(this.pid, this.opts.killGraceMs)
    }
    if (this.child.connected) {
      this.child.send(message, terminate)
      // A child that stopped reading IPC must not delay the kill.
      setTimeout(terminate, 200).unref()
    } else terminate()
  }

  private track(upload: Promise<void>): void {
    this.uploads.add(upload)
    void upload.finally(() => this.uploads.delete(upload))
  }

  private reply(msg: ParentMessage): void {
    if (this.child.connected) this.child.send(msg, () => {})
  }

  /**
   * Stores one artifact the job process asked for: the path is checked again here (the job process is
   * not trusted), the file must be a regular file inside the job's scratch dir, and the store streams and
   * hashes it, so size and sha256 are the host's own.
   */
  private async storeArtifact(
    msg: Extract<ChildMessage, { kind: 'artifact' }>,
    records: ArtifactRecord[],
  ): Promise<void> {
    let rel: string
    try {
      rel = checkArtifactPath(msg.path)
    } catch (err) {
      const message = (err as Error).message
      this.refusedPath ??= new ArtifactPathError(message).toWire()
      return this.reply({ kind: 'artifact-refused', id: msg.id, message, retryable: false })
    }
    let file: FileHandle
    try {
      file = await openInside(this.opts.paths.scratch, msg.file)
    } catch (err) {
      return this.reply({
        kind: 'artifact-refused',
        id: msg.id,
        message: `artifact ${JSON.stringify(rel)}: ${(err as Error).message}`,
        retryable: false,
      })
    }
    const source = file.createReadStream()
    this.sources.add(source)
    try {
      const record = await this.opts.artifacts.put(rel, source, {
        ...(msg.contentType ? { contentType: msg.contentType } : {}),
      })
      records.push(record)
      this.opts.onArtifact?.(record)
      this.reply({ kind: 'artifact-stored', id: msg.id, record })
    } catch (err) {
      this.reply({
        kind: 'artifact-refused',
        id: msg.id,
        message: `could not store artifact ${JSON.stringify(rel)}: ${(err as Error).message}`,
        retryable: true,
      })
    } finally {
      this.sources.delete(source)
      await file.close().catch(() => {})
    }
  }

  /** Streams a model object into the temp file the job process named, for its `ctx.models.ensure`. */
  private async fetchModel(msg: Extract<ChildMessage, { kind: 'model-fetch' }>): Promise<void> {
    const { models } = this.opts
    if (!models)
      return this.reply({
        kind: 'model-fetch-failed',
        id: msg.id,
        message: `model ${JSON.stringify(msg.model)}: this runner has no S3 (npm run job); put the model on the volume and use a path source`,
        retryable: false,
      })
    try {
      const { size, sha256 } = await models.fetch(msg, this.modelFetches.signal)
      this.reply({ kind: 'model-fetched', id: msg.id, size, sha256 })
    } catch (err) {
      this.reply({
        kind: 'model-fetch-failed',
        id: msg.id,
        message: (err as Error).message,
        retryable: err instanceof ModelFetchError ? err.retryable : true,
      })
    }
  }

  private supervise(startedAt: number, spawned: ChildSpawn): Promise<RunOutcome> {
    const { opts, child } = this
    const artifacts: ArtifactRecord[] = []
    const stderrTail: string[] = []
    let result: { value: unknown } | undefined
    let childError: ChildError | undefined
    let protocolError: string | undefined

    const keepTail = (line: string) => {
      stderrTail.push(line)
      if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift()
    }
    const drained: Promise<void>[] = []
    const lines = (stream: NodeJS.ReadableStream | null, onLine: (line: string) => void) => {
      let buffer = ''
      if (stream) drained.push(new Promise((resolve) => stream.once('close', resolve).once('end', resolve)))
      stream?.setEncoding('utf8')
      stream?.on('data', (chunk: string) => {
        buffer += chunk
        let nl = buffer.indexOf('\n')
        while (nl >= 0) {
          onLine(buffer.slice(0, nl))
          buffer = buffer.slice(nl + 1)
          nl = buffer.indexOf('\n')
        }
        if (buffer.length > 64 * 1024) {
          onLine(buffer)
          buffer = ''
        }
      })
      stream?.on('end', () => buffer && onLine(buffer))
    }
    lines(child.stdout, (line) => {
      opts.onLine?.('stdout', line)
      opts.onLog?.('info', line, { stream: 'stdout' })
    })
    lines(child.stderr, (line) => {
      keepTail(line)
      opts.onLine?.('stderr', line)
      opts.onLog?.('warn', line, { stream: 'stderr' })
    })

    let startSent = false
    const sendStart = () => {
      if (startSent) return
      startSent = true
      child.send({
        kind: 'start',
        job: opts.job,
        gpu: opts.gpu,
        paths: opts.paths,
        engines: engineSettings(opts.engines),
        handlerModule: opts.handlerModule,
      } satisfies ParentMessage)
    }
    // A warm spare said it was ready before this job existed.
    if (spawned.ready) sendStart()
    child.on('message', (raw: unknown) => {
      const parsed = v.safeParse(ChildMessage, raw)
      if (!parsed.success) {
        protocolError ??= `invalid message from the job process: ${describeIssues(toFieldIssues(parsed.issues))}`
        this.termination ??= terminateGroup(this.pid, 0)
        return
      }
      const msg = parsed.output
      switch (msg.kind) {
        case 'ready':
          sendStart()
          break
        case 'started':
          opts.onStarted?.(performance.now() - startedAt)
          break
        case 'progress':
          opts.onProgress?.(msg.percent, msg.message, msg.metrics)
          break
        case 'log':
          opts.onLine?.('log', msg.msg, msg.level, msg.fields)
          opts.onLog?.(msg.level, msg.msg, msg.fields)
          break
        case 'artifact':
          this.track(this.storeArtifact(msg, artifacts))
          break
        case 'model-fetch':
          this.track(this.fetchModel(msg))
          break
        case 'model-cache':
          // Only names the cache accepts become label values (the job process is not trusted).
          if (isModelName(msg.model)) opts.onModelCache?.(msg.model, msg.outcome, msg.bytes)
          break
        case 'result':
          result = { value: msg.result }
          break
        case 'error':
          childError = msg.error
          break
      }
    })

    const timer = setTimeout(() => this.abort('timeout'), opts.timeoutMs)
    timer.unref()

    return new Promise<RunOutcome>((resolve) => {
      let spawnError: Error | undefined
      child.on('error', (err) => {
        spawnError = err
      })
      child.on('exit', (exitCode, signal) => {
        clearTimeout(timer)
        // Nobody is left to use a model download: stop it (the fetcher removes its temp file).
        this.modelFetches.abort(new Error('the job process ended'))
        // The child is gone; grandchildren it left behind must go too before the slot is reused.
        const termination = this.termination ?? terminateGroup(this.pid, opts.killGraceMs)
        // Uploads of an attempt that did not end well are cut off; those of one that did may finish.
        if (this.abortReason || exitCode !== 0)
          for (const source of this.sources) source.destroy(new Error('the job process ended'))
        const settled = termination.then(async (t) => {
          while (this.uploads.size > 0) await Promise.allSettled([...this.uploads])
          // The group is gone: its last lines are read before the attempt ends (its log is complete).
          await Promise.race([Promise.all(drained), sleep(OUTPUT_DRAIN_MS)])
          return t
        })
        void settled.then(({ gone }) => {
          const base = { artifacts, pid: this.pid, groupGone: gone }
          const fail = (e: ChildError): RunOutcome => ({
            ok: false,
            error: { ...e, exitCode, signal, stderrTail: stderrTail.join('\n') },
            ...base,
          })
          if (this.abortReason) {
            const what = {
              timeout: `timed out after ${opts.timeoutMs / 1000}s`,
              cancelled: 'cancelled',
              shutdown: 'interrupted by host shutdown',
            }
            return resolve(fail(new AbortError(this.abortReason, `job ${what[this.abortReason]}`).toWire()))
          }
          if (this.refusedPath) return resolve(fail(this.refusedPath))
          if (protocolError) return resolve(fail(new ProtocolError(protocolError).toWire()))
          if (result && exitCode === 0) return resolve({ ok: true, result: result.value, ...base })
          if (childError) return resolve(fail(childError))
          const how = spawnError
            ? spawnError.message
            : signal
              ? `was killed by ${signal}`
              : `exited with code ${exitCode}`
          return resolve(fail(new UnexpectedExitError(how).toWire()))
        })
      })
    })
  }
}

const isModelName = (name: string): boolean => {
  try {
    checkModelName(name)
    return true
  } catch {
    return false
  }
}
