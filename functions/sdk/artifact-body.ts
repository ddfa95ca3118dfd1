import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { copyFile, link, mkdir, realpath } from 'node:fs/promises'
import path from 'node:path'
import { PassThrough, Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { ArtifactBody } from './context.ts'
import { NonRetryableError } from './errors.ts'

const CONTENT_TYPES: Record<string, string> = {
  '.safetensors': 'application/octet-stream',
  '.wav': 'audio/wav',
  '.avi': 'video/x-msvideo',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.log': 'text/plain; charset=utf-8',
  '.toml': 'application/toml',
  '.pt': 'application/octet-stream',
}

export const contentTypeFor = (file: string): string =>
  CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream'

/** The name the job manifest takes under the prefix; no artifact may use it. */
export const MANIFEST_NAME = 'manifest.json'

/**
 * Checks an artifact path: relative, forward slashes, no `..` or `.` segments, no empty segments, no
 * backslash or NUL, at most 512 characters, not the manifest's name. Returns it unchanged. The one home
 * of the rule: the child checks it before spooling, and the host again before storing (a job process is
 * not trusted), so a key never leaves `<prefix>/<jobId>/`.
 *
 * @throws NonRetryableError naming the path (a retry would send the same path)
 */
export function checkArtifactPath(p: string): string {
  const segments = p.split('/')
  if (
    p.length === 0 ||
    p.length > 512 ||
    p.startsWith('/') ||
    segments.some((s) => s === '' || s === '.' || s === '..' || s.includes('\\') || s.includes('\0')) ||
    p === MANIFEST_NAME
  )
    throw new NonRetryableError(
      `invalid artifact path ${JSON.stringify(p.slice(0, 200))}: use a relative path with "/" between names, without "..", ".", empty names, backslashes or NUL, and not "${MANIFEST_NAME}"`,
      { reason: 'non_retryable', code: 'INVALID_ARTIFACT_PATH' },
    )
  return p
}

/** A stream of `body` that counts and hashes what flows through; `digest()` is valid once it has ended. */
export function hashedStream(body: ArtifactBody): {
  stream: Readable
  digest: () => { size: number; sha256: string }
} {
  const hash = createHash('sha256')
  let size = 0
  const source: Readable =
    body instanceof Readable
      ? body
      : typeof body === 'string' || body instanceof Uint8Array
        ? Readable.from([typeof body === 'string' ? Buffer.from(body) : Buffer.from(body)])
        : createReadStream(body.file)
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk)
      size += chunk.length
      cb(null, chunk)
    },
  })
  source.on('error', (err) => meter.destroy(err))
  const out = source.pipe(meter).pipe(new PassThrough())
  meter.on('error', (err) => out.destroy(err))
  let sha256: string | undefined
  return {
    stream: out,
    digest: () => {
      sha256 ??= hash.digest('hex')
      return { size, sha256 }
    },
  }
}

/** Whether `file` resolves (symlinks followed) inside `dir`. */
export async function isInside(dir: string, file: string): Promise<boolean> {
  try {
    const [root, real] = await Promise.all([realpath(dir), realpath(file)])
    return real.startsWith(root + path.sep)
  } catch {
    return false
  }
}

/**
 * Writes `body` to the file `target`, streaming (a multi-GB checkpoint is never held in memory). A file
 * body is hard-linked when it can be (same file system: no copy), else copied.
 */
export async function spoolArtifact(body: ArtifactBody, target: string): Promise<void> {
  await mkdir(path.dirname(target), { recursive: true })
  if (!(body instanceof Readable) && typeof body === 'object' && 'file' in body) {
    await link(body.file, target).catch(() => copyFile(body.file, target))
    return
  }
  const source =
    body instanceof Readable ? body : Readable.from([typeof body === 'string' ? Buffer.from(body) : body])
  await pipeline(source, createWriteStream(target))
}
