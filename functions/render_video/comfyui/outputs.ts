/**
 * A finished prompt's outputs: every file `/history` lists for its output nodes, named and typed as
 * artifacts, and streamed from `/view` into the job's artifact store.
 */
import path from 'node:path'
import { Readable, Transform } from 'node:stream'
import type { ReadableStream as WebReadableStream } from 'node:stream/web'
import type { ArtifactRecord, HandlerContext } from '../../sdk/context.ts'
import { abortReason, RetryableError } from '../../sdk/errors.ts'
import { type ComfyEndpoint, type ComfyTimings, comfyFetch, ERR_CODE, unavailable } from './http.ts'

/** One file an output node wrote, as `/history` lists it. */
export interface ComfyFile {
  node: string
  filename: string
  subfolder: string
  type: string
}

/** Content types by extension, for a /view answer without a useful one. */
const TYPES: Record<string, string> = {
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.mov': 'video/quicktime',
  '.mkv': 'video/x-matroska',
  '.avi': 'video/x-msvideo',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.png': 'image/png',
  '.apng': 'image/apng',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.wav': 'audio/wav',
  '.flac': 'audio/flac',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.opus': 'audio/opus',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
}

/** The header's type, unless it is missing or generic; then the extension's. */
export function contentTypeOf(filename: string, header: string | null): string {
  const generic = !header || /^(application\/octet-stream|binary\/octet-stream)\b/i.test(header)
  return generic ? (TYPES[path.extname(filename).toLowerCase()] ?? 'application/octet-stream') : header
}

/**
 * Every file of every output node in a `/history` entry's `outputs`: `images` (core SaveVideo and
 * SaveAnimatedWEBP list their files there too, with `animated: [true]`), `gifs` (VideoHelperSuite),
 * `audio`, and any other list of `{filename, subfolder, type}`. Entries without a filename (text) are skipped.
 */
export function outputFiles(outputs: Record<string, unknown>): ComfyFile[] {
  const files: ComfyFile[] = []
  const ids = Object.keys(outputs).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
  for (const node of ids) {
    const ui = outputs[node]
    if (typeof ui !== 'object' || ui === null) continue
    for (const list of Object.values(ui)) {
      if (!Array.isArray(list)) continue
      for (const item of list) {
        const f = item as { filename?: unknown; subfolder?: unknown; type?: unknown }
        if (typeof f?.filename !== 'string' || f.filename === '') continue
        files.push({
          node,
          filename: f.filename,
          subfolder: typeof f.subfolder === 'string' ? f.subfolder : '',
          type: typeof f.type === 'string' ? f.type : 'output',
        })
      }
    }
  }
  return files
}

/** Artifact names for the files: the file name, or `<node>_<name>` when two outputs share one. */
export function artifactNames(files: ComfyFile[], reserved: ReadonlySet<string>): string[] {
  const taken = new Set(reserved)
  return files.map((f) => {
    const clean = f.filename.replace(/[\\\0]/g, '_').replace(/^\.+/, '_')
    let name = taken.has(clean) ? `node${f.node}_${clean}` : clean
    for (let i = 2; taken.has(name); i++) name = `node${f.node}_${i}_${clean}`
    taken.add(name)
    return name
  })
}

/** Streams one output from /view into the artifacts, never holding the whole file in memory. */
export async function download(
  ep: ComfyEndpoint,
  file: ComfyFile,
  name: string,
  ctx: HandlerContext,
  timings: ComfyTimings,
): Promise<ArtifactRecord> {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder, type: file.type })
  const idle = new AbortController()
  const { res } = await comfyFetch(ep, 'GET', `view?${query}`, {
    timeoutMs: timings.httpTimeoutMs,
    signal: AbortSignal.any([ctx.signal, idle.signal]),
  })
  if (res.status !== 200 || !res.body) {
    await res.body?.cancel().catch(() => {})
    // A 404 for a file /history just listed: ComfyUI's output folder was cleaned or is not shared.
    throw new RetryableError(
      `ComfyUI at COMFYUI_URL=${ep.display} answered ${res.status} to /view for ${file.subfolder ? `${file.subfolder}/` : ''}${file.filename} (node ${file.node})`,
      { code: ERR_CODE },
    )
  }
  const contentType = contentTypeOf(file.filename, res.headers.get('content-type'))
  let timer = setTimeout(() => idle.abort(new Error('idle')), timings.downloadIdleMs)
  const watchdog = new Transform({
    transform(chunk, _enc, cb) {
      clearTimeout(timer)
      timer = setTimeout(() => idle.abort(new Error('idle')), timings.downloadIdleMs)
      cb(null, chunk)
    },
    flush(cb) {
      clearTimeout(timer)
      cb()
    },
  })
  const body = Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>)
  body.on('error', (err) => watchdog.destroy(err))
  try {
    return await ctx.artifacts.put(name, body.pipe(watchdog), { contentType })
  } catch (err) {
    if (ctx.signal.aborted) throw abortReason(ctx.signal)
    if (idle.signal.aborted)
      throw unavailable(
        ep,
        `stalled for ${Math.round(timings.downloadIdleMs / 1000)} s sending ${file.filename}`,
        err,
      )
    throw err
  } finally {
    clearTimeout(timer)
  }
}
