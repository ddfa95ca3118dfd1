/**
 * The host's side of `ctx.models.ensure` for S3 sources: it streams an object into the temp file a job
 * process named, with the host's own credentials, after checking both against its policy. The job process
 * keeps the lock and does the verify and rename; the host only ever creates one new hidden `.partial`
 * file under its own MODELS_DIR.
 */
import { constants } from 'node:fs'
import { open, realpath, rm } from 'node:fs/promises'
import path from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { hashingTap, s3KeyProblem, syncFile } from '../functions/sdk/models.ts'

/** Why a fetch failed, and whether another attempt may help. */
export class ModelFetchError extends Error {
  override name = 'ModelFetchError'
  constructor(
    message: string,
    readonly retryable: boolean,
    opts: { cause?: unknown } = {},
  ) {
    super(message, { cause: opts.cause })
  }
}

/** What the runner needs of a fetcher (the host's S3 one; none for `npm run job`). */
export interface ModelObjectFetcher {
  fetch(
    req: { model: string; bucket: string; key: string; file: string },
    signal: AbortSignal,
  ): Promise<{ size: number; sha256: string }>
}

/** A temp name the cache makes: `.<model file name>.<random>.partial`. */
const PARTIAL = /^\.[A-Za-z0-9][A-Za-z0-9_.+=-]*\.[0-9a-f]{16}\.partial$/

/**
 * Fetches model objects from the host's bucket. Least privilege: only `bucket` (the host's S3_BUCKET)
 * and only keys under `models/`, so a job cannot copy another job's artifacts (`loras/<jobId>/...`, which
 * may belong to another API token) or any other bucket the host's credentials reach into the volume.
 *
 * @example
 * const fetcher = new S3ModelFetcher(s3, 'gpu-artifacts', '/opt/models')
 * await fetcher.fetch({ model: 'sd15.safetensors', bucket: 'gpu-artifacts', key: 'models/sd15.safetensors',
 *   file: '/opt/models/.sd15.safetensors.0123456789abcdef.partial' }, signal)
 */
export class S3ModelFetcher implements ModelObjectFetcher {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly modelsDir: string,
  ) {}

  async fetch(
    req: { model: string; bucket: string; key: string; file: string },
    signal: AbortSignal,
  ): Promise<{ size: number; sha256: string }> {
    const source = `s3://${req.bucket}/${req.key}`
    if (req.bucket !== this.bucket)
      throw new ModelFetchError(
        `model ${JSON.stringify(req.model)}: ${source} refused: models are fetched only from this host's bucket (S3_BUCKET), under models/`,
        false,
      )
    const keyProblem = s3KeyProblem(req.key)
    if (keyProblem)
      throw new ModelFetchError(`model ${JSON.stringify(req.model)}: S3 key ${keyProblem}`, false)
    const file = await this.checkTempFile(req.file)
    // O_EXCL and O_NOFOLLOW: never an existing file, never through a symlink.
    const out = await open(
      file,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o644,
    ).catch((err: NodeJS.ErrnoException) => {
      throw new ModelFetchError(
        `model ${JSON.stringify(req.model)}: cannot create its temp file (${err.code})`,
        false,
      )
    })
    let discard = true
    try {
      const obj = await this.s3
        .send(new GetObjectCommand({ Bucket: req.bucket, Key: req.key }), { abortSignal: signal })
        .catch((err: { name?: string; $metadata?: { httpStatusCode?: number }; message?: string }) => {
          const status = err.$metadata?.httpStatusCode
          if (err.name === 'NoSuchKey' || status === 404)
            throw new ModelFetchError(`model ${JSON.stringify(req.model)}: ${source} does not exist`, false, {
              cause: err,
            })
          if (err.name === 'AccessDenied' || status === 403)
            throw new ModelFetchError(
              `model ${JSON.stringify(req.model)}: access to ${source} denied`,
              false,
              {
                cause: err,
              },
            )
          throw new ModelFetchError(
            `model ${JSON.stringify(req.model)}: S3 unavailable fetching ${source}: ${err.message ?? err.name}`,
            true,
            { cause: err },
          )
        })
      if (!(obj.Body instanceof Readable))
        throw new ModelFetchError(
          `model ${JSON.stringify(req.model)}: S3 returned no body for ${source}`,
          true,
        )
      const { tap, digest } = hashingTap()
      try {
        // The write stream closes the handle when it ends (one without autoClose never reports its end).
        await pipeline(obj.Body, tap, out.createWriteStream(), { signal })
        // On disk before the job process renames it into place: a host crash must not leave a name with holes.
        await syncFile(file)
      } catch (err) {
        if (signal.aborted) throw err
        throw new ModelFetchError(
          `model ${JSON.stringify(req.model)}: download of ${source} broke off: ${(err as Error).message}`,
          true,
          { cause: err },
        )
      }
      const { size, sha256 } = digest()
      if (obj.ContentLength !== undefined && obj.ContentLength !== size)
        throw new ModelFetchError(
          `model ${JSON.stringify(req.model)}: got ${size} of ${obj.ContentLength} bytes of ${source}`,
          true,
        )
      discard = false
      return { size, sha256 }
    } finally {
      await out.close().catch(() => {})
      if (discard) await rm(file, { force: true }).catch(() => {})
    }
  }

  /** The job process names the file; it must be a cache temp name in a folder inside this host's MODELS_DIR. */
  private async checkTempFile(file: string): Promise<string> {
    const resolved = path.resolve(file)
    if (!PARTIAL.test(path.basename(resolved)))
      throw new ModelFetchError('model temp file: not a name the model cache makes', false)
    const [root, dir] = await Promise.all([
      realpath(this.modelsDir),
      realpath(path.dirname(resolved)).catch(() => null),
    ])
    if (!dir || (dir !== root && !dir.startsWith(root + path.sep)))
      throw new ModelFetchError('model temp file: not inside the models directory (MODELS_DIR)', false)
    return path.join(dir, path.basename(resolved))
  }
}
