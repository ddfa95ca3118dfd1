import { parseArgs } from 'node:util'
import { GatewayClient, parseBaseUrl } from './client.ts'
import type { ReconnectPolicy } from './follow.ts'
import { HELP } from './help.ts'
import { UsageError } from './params.ts'

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
  if (positionals.length === 0) throw new CommandUsageError('missing the job id', command)
  if (positionals.length > 1)
    throw new CommandUsageError(`unexpected argument "${positionals[1]}" (one job id only)`, command)
  return positionals[0] as string
}

/** The gateway client of `--url` (or GPU_JOBS_URL) and GPU_JOBS_TOKEN. */
export function clientFor(io: RunIO, url: string | undefined): GatewayClient {
  const token = io.env.GPU_JOBS_TOKEN?.trim()
  return new GatewayClient(parseBaseUrl(url ?? io.env.GPU_JOBS_URL), token || undefined)
}
