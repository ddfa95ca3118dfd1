/**
 * What `ctx.models.ensure` is given, checked: a model's name (a safe relative path under MODELS_DIR) and its
 * source (`s3://` under the host's models prefix, or a path on a mounted volume), with an optional sha256.
 */
import path from 'node:path'
import type { ModelSource } from './context.ts'
import { NonRetryableError } from './errors.ts'

/** Each `/`-separated segment of a model name: starts with a letter or digit, so never `.`, `..` or hidden. */
const NAME_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9_.+=-]{0,127}$/
const MAX_NAME_LENGTH = 512
const MAX_NAME_DEPTH = 8
const SHA256 = /^[0-9a-f]{64}$/

/** Where an S3 source may be read from: the host's own bucket, under a prefix (least privilege). */
export const MODELS_S3_PREFIX = 'models/'

/** A bad argument of `ctx.models.ensure`: non-retryable, the same call would fail again. */
export const invalid = (what: string, why: string): NonRetryableError =>
  new NonRetryableError(`ctx.models.ensure: ${what} ${why}`, {
    reason: 'invalid_params',
    code: 'INVALID_MODEL',
  })

export const quote = (s: string): string => JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}…` : s)

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
