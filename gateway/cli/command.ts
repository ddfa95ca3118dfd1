import { parseArgs } from 'node:util'
import type { JobSummary } from '../../schema/api.ts'
import { SHORT_ID_LENGTH } from '../../schema/common.ts'
import { ApiRequestError, GatewayClient, parseBaseUrl } from './client.ts'
import type { ReconnectPolicy } from './follow.ts'
import { HELP } from './help.ts'
import { UsageError } from './params.ts'
import { alignRows } from './table.ts'

// What every command shares: its input and output, exit codes, option parsing, the client it talks with.

/** Exit codes (documented in `gpu-jobs --help` and the README). */
export const EXIT = {
  ok: 0,
  /** `follow` / `submit --follow`: the job failed. */
  failed: 1,
  /** `follow` / `submit --follow`: the job was cancelled. */
  cancelled: 2,
  /** Bad usage, gateway unreachable, or the API refused the request (invalid params, unknown job, ...). */
  error: 3,
  /** Interrupted (Ctrl-C) while following. */
  interrupted: 130,
} as const

export interface Output {
  write(chunk: string): unknown
  isTTY?: boolean
  columns?: number
}

export interface RunIO {
  stdout: Output
  stderr: Output
  env: Record<string, string | undefined>
  /** Aborting it stops a `follow` (the bin wires it to SIGINT). */
  signal?: AbortSignal
  /** Reconnect timings of `follow` (tests shorten them). */
  reconnect?: Partial<ReconnectPolicy>
}

/** A command: its arguments (after the command's name) in, its exit code out. */
export type Command = (args: string[], io: RunIO) => Promise<number>

const COMMON_OPTIONS = {
  url: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>

/** A command's options (with --url and --help), node:util's errors turned into UsageErrors. */
export function parse<T extends OptionSpec>(args: string[], options: T) {
  try {
    return parseArgs({
      args,
      options: { ...COMMON_OPTIONS, ...options },
      allowPositionals: true,
      strict: true,
    })
  } catch (err) {
    const e = err as { code?: string; message: string }
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const opt = e.message.match(/'([^']+)'/)?.[1] ?? ''
      throw new UsageError(`unknown option ${opt}`.trim())
    }
    if (e.code?.startsWith('ERR_PARSE_ARGS')) throw new UsageError(e.message.split('. ')[0] ?? e.message)
    throw err
  }
}

/** A `--help`-style usage error knows which command to point at. */
export class CommandUsageError extends UsageError {
  constructor(
    message: string,
    readonly command: string,
  ) {
    super(message)
  }
}

export const line = (out: Output, text = '') => out.write(`${text}\n`)

/** Prints a command's --help (or the main one). */
export function help(io: RunIO, topic: string): number {
  line(io.stdout, HELP[topic] ?? HELP.main)
  return EXIT.ok
}

/** The one job id a command takes. */
export function oneId(positionals: string[], command: string): string {
  // An empty one ('' from a shell variable that was unset) is missing too, not a request for the list.
  if (positionals.length === 0 || positionals[0]?.trim() === '')
    throw new CommandUsageError('missing the job id', command)
  if (positionals.length > 1)
    throw new CommandUsageError(`unexpected argument "${positionals[1]}" (one job id only)`, command)
  return positionals[0] as string
}

/** The gateway client of `--url` (or GPU_JOBS_URL) and GPU_JOBS_TOKEN. */
export function clientFor(io: RunIO, url: string | undefined): GatewayClient {
  const token = io.env.GPU_JOBS_TOKEN?.trim()
  return new GatewayClient(parseBaseUrl(url ?? io.env.GPU_JOBS_URL), token || undefined)
}

/** How many list pages (of 100) a short id's lookup reads before it settles with what it found. */
const ID_LOOKUP_PAGES = 5
/** How many candidates an ambiguous short id's error lists. */
const SHOWN_CANDIDATES = 10

/** A short id that starts more than one job's id: the error lists them (exit 3). */
export class AmbiguousJobIdError extends Error {
  override name = 'AmbiguousJobIdError'
  constructor(
    readonly typed: string,
    readonly candidates: JobSummary[],
    more: boolean,
  ) {
    const shown = candidates.slice(0, SHOWN_CANDIDATES)
    super(
      [
        `job id "${typed}" is ambiguous: ${more ? 'at least ' : ''}${candidates.length} jobs' ids start with it; type more of it`,
        ...alignRows(
          shown.map((j) => [j.jobId, j.type, j.status, `created ${j.createdAt}`]),
          { indent: '  ' },
        ),
        ...(candidates.length > shown.length ? [`  (and ${candidates.length - shown.length} more)`] : []),
      ].join('\n'),
    )
  }
}

/**
 * The jobs whose id starts with `prefix`, from `GET /api/jobs?q=` (which also matches messages: those are
 * left out); stops once two are found. Null when the API refuses the search.
 */
async function jobsStartingWith(
  client: GatewayClient,
  prefix: string,
): Promise<{ found: JobSummary[]; more: boolean } | null> {
  const found: JobSummary[] = []
  let cursor: string | undefined
  for (let page = 0; page < ID_LOOKUP_PAGES; page++) {
    let body: Awaited<ReturnType<GatewayClient['list']>>
    try {
      body = await client.list({ q: prefix, limit: '100', cursor })
    } catch (err) {
      // Refused (a prefix no id can have), or not the gateway's list: the typed id's own error stands.
      if (err instanceof ApiRequestError && (err.status === 400 || err.status === 404)) return null
      throw err
    }
    found.push(...body.jobs.filter((j) => j.jobId.startsWith(prefix)))
    if (found.length > 1 || body.nextCursor === null) return { found, more: body.nextCursor !== null }
    cursor = body.nextCursor
  }
  return { found, more: true }
}

/**
 * Runs `run` with the job id as typed, or, when the API knows no job by that id, with the one job whose
 * id starts with it (at least SHORT_ID_LENGTH characters, the 8 the console and the CLI show, as the API
 * takes: a shorter start names no job, so that `cancel a` cannot act on the one job that starts with a). Every command that takes a job id
 * goes through it; `run` must be a call whose 404 means "no such job". No such job: the API's 404;
 * several: an AmbiguousJobIdError listing them.
 *
 * @example const job = await withJobId(client, oneId(positionals, 'status'), (id) => client.status(id))
 */
export async function withJobId<T>(
  client: GatewayClient,
  typed: string,
  run: (jobId: string) => Promise<T>,
): Promise<T> {
  try {
    return await run(typed)
  } catch (err) {
    // The API itself takes a unique start of 8 characters or more; several jobs that share it (409
    // ambiguous_job_id), or a shorter start (404), are looked up here, so that the candidates are listed.
    const unresolved =
      err instanceof ApiRequestError &&
      (err.status === 404 || (err.status === 409 && err.code === 'ambiguous_job_id'))
    if (!unresolved || typed.length < SHORT_ID_LENGTH) throw err
    const lookup = await jobsStartingWith(client, typed)
    const [only, ...others] = lookup?.found ?? []
    if (!lookup || !only) throw err
    if (others.length > 0) throw new AmbiguousJobIdError(typed, lookup.found, lookup.more)
    return run(only.jobId)
  }
}
