/**
 * How the artifact download route (`GET /api/jobs/:jobId/artifacts/<path>`) reads its request: the
 * artifact path, percent-decoded one segment at a time, and the `Range` header against the file's size.
 * Both are pure, so every malformed form is a unit-testable answer (400, 416) rather than a throw.
 */

/**
 * The artifact path of a download URL's raw pathname, segments decoded one by one (so `%2F` inside a
 * segment cannot differ from what the route matched, and however the client encoded the job id, the rest
 * is found); null when a segment's percent-encoding is malformed (`%ZZ`, `%E0%A4%A`, a lone `%`).
 *
 * @example artifactPathOf('/api/jobs/j1/artifacts/sub%20dir/a.bin') // 'sub dir/a.bin'
 */
export function artifactPathOf(pathname: string): string | null {
  // ['', 'api', 'jobs', '<jobId>', 'artifacts', ...path]
  const segments = pathname.split('/').slice(5)
  try {
    return segments.map((s) => decodeURIComponent(s)).join('/')
  } catch {
    return null
  }
}

/** What to send for a `Range` header: the whole file, one inclusive byte range of it, or a 416. */
export type RangeAnswer =
  | { kind: 'full' }
  | { kind: 'partial'; start: number; end: number }
  | { kind: 'unsatisfiable' }

const INT_RANGE = /^(\d+)-(\d*)$/
const SUFFIX_RANGE = /^-(\d+)$/

/**
 * Reads a `Range` header (RFC 9110 section 14) for a file of `size` bytes. One range is served as a 206. A
 * unit other than `bytes` is ignored, as the RFC requires, and so are several ranges (no multipart
 * answers): both get the whole file, a 200. Malformed syntax (`bytes=abc`, `bytes=5-2`, no `=`) and a
 * range that starts at or after the end of the file are a 416, `content-range: bytes *\/<size>`.
 *
 * @example byteRange('bytes=-4', 20) // { kind: 'partial', start: 16, end: 19 }
 */
export function byteRange(header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: 'full' }
  const eq = header.indexOf('=')
  if (eq < 0) return { kind: 'unsatisfiable' }
  if (header.slice(0, eq).trim().toLowerCase() !== 'bytes') return { kind: 'full' }
  const specs = header
    .slice(eq + 1)
    .split(',')
    .map((s) => s.trim())
  const parsed: ({ start: number; end: number } | null)[] = specs.map((spec) => {
    const int = INT_RANGE.exec(spec)
    if (int) {
      const start = Number(int[1])
      const end = int[2] === '' ? Number.POSITIVE_INFINITY : Number(int[2])
      return start <= end ? { start, end } : null
    }
    const suffix = SUFFIX_RANGE.exec(spec)
    if (suffix) {
      const length = Number(suffix[1])
      return length > 0 ? { start: Math.max(0, size - length), end: Number.POSITIVE_INFINITY } : null
    }
    return null
  })
  if (parsed.some((r) => r === null)) return { kind: 'unsatisfiable' }
  if (parsed.length > 1) return { kind: 'full' }
  const range = parsed[0]
  if (!range || range.start >= size) return { kind: 'unsatisfiable' }
  return { kind: 'partial', start: range.start, end: Math.min(range.end, size - 1) }
}

/**
 * A `content-disposition` that any file name survives: an ASCII fallback (quotes, backslashes, control
 * and non-ASCII characters replaced) and the exact name in RFC 8187 form.
 */
export function attachmentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_') || 'artifact'
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`
}
