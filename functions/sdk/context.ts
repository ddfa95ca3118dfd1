import type { Readable } from 'node:stream'
import type { EngineSettings } from '../../schema/engines.ts'
import type { JobType } from '../../schema/params/index.ts'

export type { EngineSettings }

/** One stored output file; `path` is relative to the job's prefix. */
export interface ArtifactRecord {
  path: string
  key: string
  size: number
  sha256: string
  contentType: string
}

/** What a handler can store: bytes, a stream, or a file on disk. */
export type ArtifactBody = Uint8Array | string | Readable | { file: string }

export interface ArtifactStore {
  /** Stores `body` at `<outputPrefix>/<path>`; the content type is guessed from the extension if not given. */
  put(path: string, body: ArtifactBody, opts?: { contentType?: string }): Promise<ArtifactRecord>
}

export interface HandlerLogger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

/** The GPU this job's process may use (`CUDA_VISIBLE_DEVICES` is set to it), or nulls with no GPU. */
export interface GpuInfo {
  index: number | null
  uuid: string | null
  name: string | null
  vramTotalMb: number | null
  /**
   * The GPU memory the host reserved for this job on that device (its `gpu.vramMb`): other jobs may share
   * the device, so a job should not take more. Absent or null outside a GPU host.
   */
  vramReservedMb?: number | null
}

/**
 * Where `ctx.models.ensure` gets a model: `s3://<bucket>/<key>` (fetched by the GPU host: only its own
 * `S3_BUCKET`, keys under `models/`), or a path of a file or folder on a mounted volume (absolute, or
 * relative to MODELS_DIR). With `sha256` (64 lowercase hex digits; files only) the bytes are verified
 * before the model appears, and a copy already in place is checked against it.
 */
export type ModelSource = string | { source: string; sha256?: string }

export interface ModelCache {
  /**
   * Returns the absolute path of model `name` under MODELS_DIR, fetching it from `source` first if it is
   * not there. Fetched once across processes and hosts that share the volume (a lock per model, a temp
   * name, verify, atomic rename): concurrent callers wait and then get the same file, and a crashed fetch
   * leaves nothing under `name`. `name` is a relative path (`[A-Za-z0-9_.+=-]` segments, each starting
   * with a letter or digit). A model already under `name` is used as it is (checked when `sha256` is
   * given), whatever `source` says: a name stands for one content, so a new version needs a new name.
   *
   * Throws NonRetryableError for a bad name or source, a missing source object or a sha256 mismatch
   * (nothing is kept), RetryableError for storage trouble; rejects with the abort reason on `ctx.signal`.
   *
   * @example
   * const ckpt = await ctx.models.ensure('checkpoints/sd15.safetensors', {
   *   source: 's3://gpu-artifacts/models/sd15.safetensors',
   *   sha256: '6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa',
   * })
   * const vocab = await ctx.models.ensure('f5tts/vocab.txt', '/mnt/tank/incoming/vocab.txt')
   */
  ensure(name: string, source: ModelSource): Promise<string>
}

/** The second argument of every handler's `run(job, ctx)`. */
export interface HandlerContext {
  jobId: string
  type: JobType
  /** 1 for the first attempt. */
  attempt: number
  /** Aborted on cancel, timeout and shutdown; its `reason` says which. */
  signal: AbortSignal
  /**
   * Reports progress from 0 to 100 with an optional message, and optionally numbers to chart (e.g.
   * `{ loss: 0.34 }`: at most 16, finite; they ride on the event and are kept with the job); cheap, call it
   * as often as a step ends.
   */
  progress(percent: number, message?: string, metrics?: Record<string, number>): void
  log: HandlerLogger
  artifacts: ArtifactStore
  paths: {
    /** A per-job scratch directory, removed after the job. */
    scratch: string
    /** The shared models directory (MODELS_DIR). */
    models: string
    /** DATA_DIR: datasets live under it. */
    data: string
  }
  gpu: GpuInfo
  models: ModelCache
  engines: EngineSettings
}

/** What a handler's `run` sees as its job: the id, type and its validated params. */
export interface HandlerJob<P> {
  jobId: string
  type: JobType
  params: P
  attempt: number
}
