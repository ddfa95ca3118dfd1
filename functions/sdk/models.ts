/**
 * The fetch-once model cache on the shared models volume (`ctx.models.ensure`). One protocol for every
 * process and host that mounts MODELS_DIR: a lock file per model (./model-lock.ts), the bytes written
 * to a hidden temp name beside the target, verified, then renamed into place. A model's name is only ever
 * seen complete: a crashed fetch leaves a `.partial` and a lock, which the next fetcher cleans up.
 */
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { cp, mkdir, open, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ModelCache, ModelSource } from './context.ts'
import { NonRetryableError, RetryableError } from './errors.ts'
import { hashingTap, sha256File, syncFile } from './file-digest.ts'
import { createLockFiles } from './model-lock.ts'
import { checkModelName, invalid, type ParsedModelSource, parseModelSource, quote } from './model-source.ts'

export { hashingTap, sha256File, syncFile } from './file-digest.ts'
export {
  checkModelName,
  MODELS_S3_PREFIX,
  type ParsedModelSource,
  parseModelSource,
  s3KeyProblem,
} from './model-source.ts'

/** A hit or a miss (this process fetched), with the bytes it fetched; the host counts them. */
export type ModelCacheOutcome = 'hit' | 'miss'

/** Fetches an S3 object into a new file; in a job process the host does it over IPC (no credentials here). */
export interface S3ObjectFetcher {
  /**
   * Streams `s3://bucket/key` into `file` (which must not exist yet; it is created), and returns its size
   * and sha256 as computed while streaming. Throws NonRetryableError / RetryableError.
   */
  fetchObject(
    req: { model: string; bucket: string; key: string; file: string },
    signal?: AbortSignal,
  ): Promise<{ size: number; sha256: string }>
}

export interface ModelCacheOptions {
  /** Aborts a wait or a fetch (the job's signal). */
  signal?: AbortSignal
  /** Serves `s3://` sources; without one they fail with a clear error. */
  s3?: S3ObjectFetcher
  /** Called once per successful or failed-after-fetch ensure, for the host's metrics. */
  onOutcome?(model: string, outcome: ModelCacheOutcome, bytes: number): void
  /** A lock whose heartbeat is older than this is taken over (default 120 s: NFS caches mtimes up to 60 s). */
  staleLockMs?: number
  /** How often the holder refreshes its lock's mtime (default 10 s). */
  heartbeatMs?: number
  /** How often a waiter looks for the model (default 250 ms). */
  pollMs?: number
}

const exists = (p: string): Promise<boolean> =>
  stat(p).then(
    () => true,
    () => false,
  )

/**
 * Creates `checkpoints/sd15.safetensors`-style models under `modelsDir` once, whoever asks first; see
 * `ModelCache.ensure` for what callers see.
 *
 * @example
 * const cache = createModelCache('/opt/models', { signal: ctx.signal })
 * const file = await cache.ensure('sd15.safetensors', '/mnt/tank/incoming/sd15.safetensors')
 */
export function createModelCache(modelsDir: string, opts: ModelCacheOptions = {}): ModelCache {
  const staleLockMs = opts.staleLockMs ?? 120_000
  const heartbeatMs = opts.heartbeatMs ?? 10_000
  const pollMs = opts.pollMs ?? 250
  const signal = opts.signal
  const locks = createLockFiles({ staleLockMs, heartbeatMs })

  /**
   * What a crashed fetch of this model left (its temp files and folders, a checksum record's temp file):
   * only called under the lock. Exact names, so model `a` never touches what model `a.b` is writing.
   */
  async function removeLeftovers(dir: string, base: string): Promise<void> {
    const mine = new RegExp(
      `^\\.${base.replace(/[.+=-]/g, '\\$&')}\\.(?:[0-9a-f]{16}|sha256\\.[0-9a-f]{12})\\.partial$`,
    )
    const entries = await readdir(dir).catch(() => [] as string[])
    await Promise.all(
      entries.filter((e) => mine.test(e)).map((e) => rm(path.join(dir, e), { recursive: true, force: true })),
    )
  }

  const checksumFile = (target: string) => path.join(path.dirname(target), `.${path.basename(target)}.sha256`)

  /** Records a file's verified sha256 with its size and mtime, so a later ensure need not hash GBs again. */
  async function writeChecksum(file: string, target: string, sha256: string): Promise<void> {
    const st = await stat(file)
    const out = checksumFile(target)
    const tmp = `${out}.${randomBytes(6).toString('hex')}.partial`
    await writeFile(tmp, JSON.stringify({ sha256, size: st.size, mtimeMs: st.mtimeMs }))
    await rename(tmp, out)
  }

  /** A model already in place, checked against `sha256` when given (from its checksum record, else hashed). */
  async function verifyInPlace(name: string, target: string, sha256: string | undefined): Promise<void> {
    if (!sha256) return
    const st = await stat(target)
    if (!st.isFile()) throw invalid('sha256', `applies to a file, and model ${quote(name)} is a folder`)
    const record = await readFile(checksumFile(target), 'utf8')
      .then((t) => JSON.parse(t) as { sha256?: string; size?: number; mtimeMs?: number })
      .catch(() => null)
    if (record && record.size === st.size && record.mtimeMs === st.mtimeMs && record.sha256 === sha256) return
    const actual = await sha256File(target, signal)
    if (actual !== sha256)
      throw new NonRetryableError(
        `model ${quote(name)}: the copy on the models volume has sha256 ${actual}, expected ${sha256}; remove it or use another name`,
        { reason: 'non_retryable', code: 'MODEL_CHECKSUM_MISMATCH' },
      )
    await writeChecksum(target, target, actual).catch(() => {})
  }

  /** Copies a path source to `tmp` (a file, hashed as it goes, or a folder); returns bytes and sha256. */
  async function copyPath(
    name: string,
    src: string,
    tmp: string,
  ): Promise<{ size: number; sha256: string | undefined }> {
    const st = await stat(src).catch((err: NodeJS.ErrnoException) => {
      throw new NonRetryableError(
        `model ${quote(name)}: source path does not exist or cannot be read (${err.code})`,
        {
          reason: 'non_retryable',
          code: 'MODEL_SOURCE_MISSING',
        },
      )
    })
    if (st.isDirectory()) {
      await cp(src, tmp, { recursive: true, errorOnExist: true, force: false })
      let size = 0
      for (const e of await readdir(tmp, { recursive: true, withFileTypes: true }))
        if (e.isFile()) size += (await stat(path.join(e.parentPath ?? e.path, e.name))).size
      return { size, sha256: undefined }
    }
    if (!st.isFile()) throw invalid('source', `of model ${quote(name)} must be a regular file or a folder`)
    const { tap, digest } = hashingTap()
    const out = await open(tmp, 'wx')
    // The write stream closes the handle when it ends (one without autoClose never reports its end).
    await pipeline(createReadStream(src), tap, out.createWriteStream(), { signal })
    await syncFile(tmp)
    return digest()
  }

  async function fetchInto(name: string, source: ParsedModelSource, target: string): Promise<void> {
    const dir = path.dirname(target)
    const base = path.basename(target)
    const tmp = path.join(dir, `.${base}.${randomBytes(8).toString('hex')}.partial`)
    try {
      let got: { size: number; sha256: string | undefined }
      if (source.kind === 's3') {
        if (!opts.s3)
          throw new NonRetryableError(
            `model ${quote(name)}: s3:// sources are fetched by a GPU host, and this runner has none; put the model on the volume`,
            { reason: 'non_retryable', code: 'MODEL_SOURCE_UNAVAILABLE' },
          )
        got = await opts.s3.fetchObject(
          { model: name, bucket: source.bucket, key: source.key, file: tmp },
          signal,
        )
      } else {
        if (source.sha256 && (await stat(source.path).catch(() => null))?.isDirectory())
          throw invalid('sha256', `applies to a file, and the source of model ${quote(name)} is a folder`)
        got = await copyPath(name, source.path, tmp)
      }
      // Counted before the check: the bytes were moved, whether or not they were the right ones.
      opts.onOutcome?.(name, 'miss', got.size)
      if (source.sha256 && got.sha256 !== source.sha256)
        throw new NonRetryableError(
          `model ${quote(name)}: sha256 mismatch: ${source.text} has ${got.sha256}, expected ${source.sha256}; nothing was kept`,
          { reason: 'non_retryable', code: 'MODEL_CHECKSUM_MISMATCH' },
        )
      if (got.sha256) await writeChecksum(tmp, target, got.sha256)
      await rename(tmp, target)
    } finally {
      await rm(tmp, { recursive: true, force: true }).catch(() => {})
    }
  }

  return {
    async ensure(nameArg, sourceArg) {
      try {
        return await ensureOnce(nameArg, sourceArg)
      } catch (err) {
        // Whatever step the abort interrupted, the caller sees the signal's reason (cancel, timeout).
        if (signal?.aborted) throw signal.reason
        throw err
      }
    },
  }

  async function ensureOnce(nameArg: string, sourceArg: ModelSource): Promise<string> {
    const name = checkModelName(nameArg)
    const source = parseModelSource(sourceArg, modelsDir)
    const target = path.join(modelsDir, name)
    const dir = path.dirname(target)
    const base = path.basename(target)
    await mkdir(dir, { recursive: true })
    // The name cannot leave MODELS_DIR by itself; a symlinked folder inside it must not take it out either.
    const [root, real] = await Promise.all([realpath(modelsDir), realpath(dir)])
    if (real !== root && !real.startsWith(root + path.sep))
      throw invalid('name', `${quote(name)} resolves outside the models directory (a symlinked folder)`)
    const lock = path.join(dir, `.${base}.lock`)
    for (;;) {
      signal?.throwIfAborted()
      if (await exists(target)) {
        await verifyInPlace(name, target, source.sha256)
        opts.onOutcome?.(name, 'hit', 0)
        return target
      }
      const release = await locks.acquire(lock)
      if (release) {
        try {
          // It may have appeared between the look and the lock.
          if (await exists(target)) {
            await verifyInPlace(name, target, source.sha256)
            opts.onOutcome?.(name, 'hit', 0)
            return target
          }
          await removeLeftovers(dir, base)
          await fetchInto(name, source, target).catch((err: unknown) => {
            if (err instanceof NonRetryableError || err instanceof RetryableError || signal?.aborted)
              throw err
            throw new RetryableError(
              `model ${quote(name)}: could not fetch ${source.text}: ${(err as Error).message}`,
              {
                reason: 'storage',
                code: 'MODEL_FETCH_FAILED',
                cause: err,
              },
            )
          })
          return target
        } finally {
          await release()
        }
      }
      if (!(await locks.takeOverIfStale(lock))) await sleep(pollMs, undefined, { signal })
    }
  }
}
