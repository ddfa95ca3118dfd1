/**
 * The fetch-once model cache on the shared models volume (`ctx.models.ensure`). One protocol for every
 * process and host that mounts MODELS_DIR: a lock file per model (O_EXCL, heartbeated), the bytes written
 * to a hidden temp name beside the target, verified, then renamed into place. A model's name is only ever
 * seen complete: a crashed fetch leaves a `.partial` and a lock, which the next fetcher cleans up.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import {
  cp,
  link,
  mkdir,
  open,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from 'node:fs/promises'
import { hostname } from 'node:os'
import path from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ModelCache, ModelSource } from './context.ts'
import { NonRetryableError, RetryableError } from './errors.ts'

/** Each `/`-separated segment of a model name: starts with a letter or digit, so never `.`, `..` or hidden. */
const NAME_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9_.+=-]{0,127}$/
const MAX_NAME_LENGTH = 512
const MAX_NAME_DEPTH = 8
const SHA256 = /^[0-9a-f]{64}$/

/** Where an S3 source may be read from: the host's own bucket, under a prefix (least privilege). */
export const MODELS_S3_PREFIX = 'models/'

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

const invalid = (what: string, why: string): NonRetryableError =>
  new NonRetryableError(`ctx.models.ensure: ${what} ${why}`, {
    reason: 'invalid_params',
    code: 'INVALID_MODEL',
  })

const quote = (s: string): string => JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}…` : s)

/**
 * Checks a model name: a relative path of 1 to 8 segments of `[A-Za-z0-9_.+=-]` (each starting with a
 * letter or digit, so no `.`, `..`, hidden or empty segment and no absolute path), at most 512 characters.
 * Hidden names are the cache's own (locks, temp files, checksums), so no model can collide with them.
 *
 * @example checkModelName('checkpoints/sd15.safetensors') // 'checkpoints/sd15.safetensors'
 */
export function checkModelName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw invalid('name', 'must be a non-empty string')
  if (name.length > MAX_NAME_LENGTH) throw invalid('name', `must be at most ${MAX_NAME_LENGTH} characters`)
  const segments = name.split('/')
  if (segments.length > MAX_NAME_DEPTH) throw invalid('name', `must have at most ${MAX_NAME_DEPTH} segments`)
  for (const s of segments)
    if (!NAME_SEGMENT.test(s))
      throw invalid(
        'name',
        `${quote(name)} must be a relative path of segments of [A-Za-z0-9_.+=-] that start with a letter or digit (no "..", no leading "/")`,
      )
  return name
}

export type ParsedModelSource =
  | { kind: 's3'; bucket: string; key: string; sha256: string | undefined; text: string }
  | { kind: 'path'; path: string; sha256: string | undefined; text: string }

/**
 * Checks an S3 key of a model source: under MODELS_S3_PREFIX, no empty, `.` or `..` segment (S3 does not
 * resolve them, but some S3-compatible servers and every reader of the key might).
 */
export function s3KeyProblem(key: string): string | undefined {
  if (!key.startsWith(MODELS_S3_PREFIX)) return `must be under "${MODELS_S3_PREFIX}"`
  if (key.length > 1024) return 'must be at most 1024 characters'
  if (key.split('/').some((s) => s === '' || s === '.' || s === '..' || s.includes('\0')))
    return 'must have no empty, "." or ".." segment'
  return undefined
}

/** Parses the second argument of `ensure`: `s3://bucket/key` or a path (absolute, or relative to MODELS_DIR). */
export function parseModelSource(source: ModelSource, modelsDir: string): ParsedModelSource {
  const spec = typeof source === 'string' ? { source } : source
  if (!spec || typeof spec !== 'object' || typeof spec.source !== 'string' || spec.source === '')
    throw invalid('source', 'must be "s3://bucket/key" or a path, or { source, sha256? }')
  const sha256 = spec.sha256
  if (sha256 !== undefined && (typeof sha256 !== 'string' || !SHA256.test(sha256)))
    throw invalid('sha256', 'must be 64 lowercase hex digits')
  const text = spec.source
  if (text.includes('\0')) throw invalid('source', 'must not contain NUL')
  if (text.startsWith('s3://')) {
    const rest = text.slice('s3://'.length)
    const slash = rest.indexOf('/')
    const bucket = slash > 0 ? rest.slice(0, slash) : ''
    const key = slash > 0 ? rest.slice(slash + 1) : ''
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || key === '')
      throw invalid('source', `${quote(text)} must be s3://<bucket>/<key>`)
    const problem = s3KeyProblem(key)
    if (problem) throw invalid('source', `S3 key ${problem}`)
    return { kind: 's3', bucket, key, sha256, text }
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text))
    throw invalid('source', `${quote(text)}: only s3:// URLs and paths on a mounted volume are supported`)
  return { kind: 'path', path: path.resolve(modelsDir, text), sha256, text }
}

const exists = (p: string): Promise<boolean> =>
  stat(p).then(
    () => true,
    () => false,
  )

/** A pass-through that hashes and counts what flows through it (read `digest()` once it has ended). */
export function hashingTap(): { tap: Transform; digest: () => { size: number; sha256: string } } {
  const hash = createHash('sha256')
  let size = 0
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk)
      size += chunk.length
      done(null, chunk)
    },
  })
  return { tap, digest: () => ({ size, sha256: hash.digest('hex') }) }
}

/** Flushes a written file to disk, so that a name renamed into place never has holes after a crash. */
export async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** sha256 of a file, streamed. */
export async function sha256File(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file, { signal })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

interface LockInfo {
  token: string
  host: string
  pid: number
}

/** A process of this machine that is gone or a zombie (from /proc; kill(pid, 0) elsewhere). */
async function pidDead(pid: number): Promise<boolean> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
  if (s !== null) {
    const state = s.slice(s.lastIndexOf(')') + 2).split(' ')[0]
    return state === 'Z' || state === 'X'
  }
  try {
    process.kill(pid, 0)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH'
  }
}

const readLock = async (lock: string): Promise<LockInfo | null> => {
  try {
    const info = JSON.parse(await readFile(lock, 'utf8')) as Partial<LockInfo>
    return typeof info.token === 'string' && typeof info.host === 'string' && typeof info.pid === 'number'
      ? (info as LockInfo)
      : null
  } catch {
    return null
  }
}

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
  const me = hostname()

  /** The lock of a dead holder: no heartbeat for staleLockMs, or a pid of this host that is gone. */
  async function isStale(lock: string): Promise<{ ino: number } | null> {
    const st = await stat(lock).catch(() => null)
    if (!st) return null
    if (Date.now() - st.mtimeMs > staleLockMs) return { ino: st.ino }
    const info = await readLock(lock)
    if (info && info.host === me && info.pid !== process.pid && (await pidDead(info.pid)))
      return { ino: st.ino }
    return null
  }

  /**
   * Removes a stale lock without ever removing a fresh one: rename it aside (atomic), and if what was
   * moved is not the inode judged stale (a new holder came in between), link it back.
   */
  async function takeOver(lock: string, ino: number): Promise<void> {
    const aside = `${lock}.${randomBytes(6).toString('hex')}.stale`
    try {
      await rename(lock, aside)
    } catch {
      return
    }
    const moved = await stat(aside).catch(() => null)
    if (moved && moved.ino !== ino) await link(aside, lock).catch(() => {})
    await rm(aside, { force: true })
  }

  async function acquire(lock: string): Promise<(() => Promise<void>) | null> {
    const token = randomBytes(12).toString('hex')
    const handle = await open(lock, 'wx').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') return null
      throw err
    })
    if (!handle) return null
    try {
      await handle.writeFile(
        JSON.stringify({ token, host: me, pid: process.pid, at: new Date().toISOString() }),
      )
    } finally {
      await handle.close()
    }
    // The heartbeat tells waiters on other hosts that this fetch is alive, however long it takes.
    const beat = setInterval(() => {
      const now = new Date()
      void utimes(lock, now, now).catch(() => {})
    }, heartbeatMs)
    beat.unref()
    return async () => {
      clearInterval(beat)
      // Only our own lock: after a takeover (we looked dead) it is someone else's.
      if ((await readLock(lock))?.token === token) await rm(lock, { force: true })
    }
  }

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
      const release = await acquire(lock)
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
      const stale = await isStale(lock)
      if (stale) await takeOver(lock, stale.ino)
      else await sleep(pollMs, undefined, { signal })
    }
  }
}
