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
}

export interface ModelCache {
  /**
   * Returns the path of model `name` under the models dir, fetching it once: concurrent jobs that need the
   * same model wait on one lock, and the file appears by atomic rename. `fetch` writes to the temp path.
   */
  ensure(name: string, fetch: (tmpPath: string) => Promise<void>): Promise<string>
}

/** The second argument of every handler's `run(job, ctx)`. */
export interface HandlerContext {
  jobId: string
  type: JobType
  /** 1 for the first attempt. */
  attempt: number
  /** Aborted on cancel, timeout and shutdown; its `reason` says which. */
  signal: AbortSignal
  /** Reports progress from 0 to 100 with an optional message; cheap, call it as often as a step ends. */
  progress(percent: number, message?: string): void
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
