import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import path from 'node:path'
import { PassThrough, Readable, Transform } from 'node:stream'
import type { ArtifactBody } from './context.ts'

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
 * Checks an artifact path: relative, forward slashes, no `..`, no empty or hidden-dot segments, not the
 * manifest's name. Returns it normalised.
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
    throw new Error(`invalid artifact path "${p}": use a relative path without "..", not "${MANIFEST_NAME}"`)
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
