import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import type { SubmitJobBody } from '../../schema/api.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { JOB_TYPES } from '../../schema/params/index.ts'
import { ApiRequestError, ConnectionError, DEFAULT_URL, GatewayClient, parseBaseUrl } from './client.ts'
import { followJob, type ReconnectPolicy, type Transport } from './follow.ts'
import {
  type JsonObject,
  paramsFromAssignments,
  parseDuration,
  parseIntOption,
  parseParamsJson,
  UsageError,
} from './params.ts'
import { eventLine, jobTable, progressBar, statusSummary } from './render.ts'

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

const COMMON_OPTIONS = {
  url: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const

const ENV_HELP = `Environment:
  GPU_JOBS_URL    the gateway (default ${DEFAULT_URL}); a path prefix is kept
  GPU_JOBS_TOKEN  API token, sent as Authorization: Bearer <token>`

const EXIT_HELP = `Exit codes:
  0  done (follow: the job completed)
  1  follow: the job failed
  2  follow: the job was cancelled
  3  bad usage, gateway unreachable, or the API refused the request
     (invalid params, unknown job, bad token, job already finished, ...)
  130 interrupted (Ctrl-C)`

const HELP: Record<string, string> = {
  main: `gpu-jobs: submit, watch and manage jobs on the GPU job gateway

Usage: gpu-jobs <command> [options]

Commands:
  submit <type>   submit a job (${JOB_TYPES.join(', ')})
  status <id>     show a job: status, progress, timings, error, result, artifacts
  list            list jobs, newest first
  cancel <id>     cancel a queued, retrying or running job
  follow <id>     watch a job's progress live until it ends

Run "gpu-jobs <command> --help" for a command's options.
Every command takes --url <url> (overrides GPU_JOBS_URL) and -h/--help.

${ENV_HELP}

${EXIT_HELP}`,
  submit: `Usage: gpu-jobs submit <type> [--param key=value ...] [--params <json>|@file] [options]

Submit a job of <type> (${JOB_TYPES.join(', ')}). Prints its id; with --follow, then its progress.

Options:
  -p, --param key=value  one parameter; repeat for more. Values are typed when they look like it:
                         3 and 1e-4 are numbers, true/false/null are themselves, {..} [..] "..." are JSON,
                         anything else a string (quote it as JSON to keep a string: name='"007"').
                         Dotted keys nest: inputs.prompt="a cat" -> {"inputs":{"prompt":"a cat"}}.
      --params <json>    all parameters as a JSON object, or @path to read it from a file;
                         --param values are merged over it
      --job-id <id>      your own job id (1-128 of A-Z a-z 0-9 _ . -, not all digits); submitting
                         the same id again returns the existing job
      --priority <n>     BullMQ priority, 1 (highest) to 2097151
      --timeout <dur>    hard timeout of one attempt: seconds, or 90s, 30m, 2h, 1d
      --max-attempts <n> attempts before the job fails (1-20)
  -f, --follow           then follow the job like "gpu-jobs follow" (and exit with its exit code)
      --sse              follow over Server-Sent Events instead of WebSocket
      --json             print the API's JSON response (and, with --follow, each event as a JSON line)

Examples:
  gpu-jobs submit train_lora -p baseModel=sd15 -p datasetPath=demo -p epochs=3 --follow
  gpu-jobs submit render_video -p inputs.prompt="a red fox" -p inputs.seed=42 -p frames=24
  gpu-jobs submit train_voice --params '{"speakerName":"ann","datasetPath":"demo"}' --priority 1

${ENV_HELP}

${EXIT_HELP}`,
  status: `Usage: gpu-jobs status <id> [--json]

Show a job: status and progress, attempts, timings, params, error, result and artifacts with their
download URLs. Exits 0 whatever the job's status (use "gpu-jobs follow" to wait for the outcome).

Options:
      --json   print the API's JSON body instead

${ENV_HELP}`,
  list: `Usage: gpu-jobs list [--status <s>] [--type <t>] [--limit <n>] [--cursor <c>] [--json]

List jobs, newest first. When there are more, the command for the next page is printed on stderr.

Options:
      --status <s>   only jobs in this status: queued, running, retrying, completed, failed, cancelled
      --type <t>     only jobs of this type: ${JOB_TYPES.join(', ')}
      --limit <n>    at most n jobs (1-500, default 50)
      --cursor <c>   the page after this cursor (from the previous page)
      --json         print the API's JSON body ({jobs, nextCursor}) instead

${ENV_HELP}`,
  cancel: `Usage: gpu-jobs cancel <id> [--json]

Cancel a queued, retrying or running job; a running job's process group is killed by its GPU host.
A job that has already finished is refused (exit 3). Then "gpu-jobs follow <id>" exits 2 once it has
stopped.

Options:
      --json   print the API's JSON response instead

${ENV_HELP}`,
  follow: `Usage: gpu-jobs follow <id> [--sse] [--json]

Watch a job until it ends: its current state, then every progress event live. On a terminal it draws a
progress bar; otherwise (a pipe, a log) it prints one line per event:
  <timestamp>  #<seq> <status> <progress>%  <message>
A dropped connection is retried with backoff and resumed after the last event seen, so no event is
missed or shown twice; it gives up after 60s without the gateway (exit 3).

Options:
      --sse    use Server-Sent Events (GET /api/jobs/<id>/events) instead of the WebSocket (/ws)
      --json   print each event as one JSON line

${ENV_HELP}

${EXIT_HELP}`,
}

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>

function parse<T extends OptionSpec>(args: string[], options: T) {
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
class CommandUsageError extends UsageError {
  constructor(
    message: string,
    readonly command: string,
  ) {
    super(message)
  }
}

const line = (out: Output, text = '') => out.write(`${text}\n`)

function help(io: RunIO, topic: string): number {
  line(io.stdout, HELP[topic] ?? HELP.main)
  return EXIT.ok
}

function oneId(positionals: string[], command: string): string {
  if (positionals.length === 0) throw new CommandUsageError('missing the job id', command)
  if (positionals.length > 1)
    throw new CommandUsageError(`unexpected argument "${positionals[1]}" (one job id only)`, command)
  return positionals[0] as string
}

function clientFor(io: RunIO, url: string | undefined): GatewayClient {
  const token = io.env.GPU_JOBS_TOKEN?.trim()
  return new GatewayClient(parseBaseUrl(url ?? io.env.GPU_JOBS_URL), token || undefined)
}

/** Prints events as a progress bar (terminal), one line each (pipe), or JSON lines. */
class EventPrinter {
  private drawn: ProgressEvent | undefined
  private pending: ProgressEvent | undefined
  private timer: NodeJS.Timeout | undefined
  private lastDrawAt = 0

  constructor(
    private readonly out: Output,
    private readonly err: Output,
    private readonly mode: 'bar' | 'lines' | 'json',
  ) {}

  event(e: ProgressEvent): void {
    if (this.mode === 'json') return void line(this.out, JSON.stringify(e))
    if (this.mode === 'lines') return void line(this.out, eventLine(e))
    const prev = this.drawn ?? this.pending
    const terminal = ['completed', 'failed', 'cancelled'].includes(e.status)
    const changed = !prev || prev.status !== e.status || prev.attempt !== e.attempt
    // An attempt that ended keeps its own line, so retries stay visible above the bar.
    if (
      prev &&
      this.drawn &&
      (prev.attempt !== e.attempt || (e.status === 'retrying' && prev.status !== 'retrying'))
    ) {
      this.flushPending()
      this.out.write('\n')
      this.drawn = undefined
    }
    if (terminal || changed || Date.now() - this.lastDrawAt >= 100) {
      this.pending = undefined
      clearTimeout(this.timer)
      this.timer = undefined
      this.draw(e)
      if (terminal) {
        this.out.write('\n')
        this.drawn = undefined
      }
    } else {
      this.pending = e
      this.timer ??= setTimeout(() => {
        this.timer = undefined
        this.flushPending()
      }, 100)
    }
  }

  notice(text: string): void {
    if (this.mode === 'bar' && this.drawn) this.out.write('\r\x1b[K')
    line(this.err, text)
    if (this.mode === 'bar' && this.drawn) this.draw(this.drawn)
  }

  end(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.flushPending()
    if (this.drawn) this.out.write('\n')
    this.drawn = undefined
  }

  private flushPending(): void {
    if (this.pending) this.draw(this.pending)
    this.pending = undefined
  }

  private draw(e: ProgressEvent): void {
    // A pseudo-terminal without a size says 0 columns.
    const columns = this.out.columns && this.out.columns >= 20 ? this.out.columns : 80
    this.out.write(`\r${progressBar(e, columns)}\x1b[K`)
    this.drawn = e
    this.lastDrawAt = Date.now()
  }
}

async function follow(
  io: RunIO,
  client: GatewayClient,
  jobId: string,
  opts: { transport: Transport; json: boolean },
): Promise<number> {
  const mode = opts.json ? 'json' : io.stdout.isTTY ? 'bar' : 'lines'
  const printer = new EventPrinter(io.stdout, io.stderr, mode)
  try {
    const result = await followJob({
      client,
      jobId,
      transport: opts.transport,
      signal: io.signal,
      reconnect: io.reconnect,
      onEvent: (e) => printer.event(e),
      onReconnect: ({ reason, delayMs, attempt }) =>
        printer.notice(
          `connection lost (${reason}); reconnecting in ${(delayMs / 1000).toFixed(1)}s (try ${attempt})`,
        ),
    })
    printer.end()
    if ('aborted' in result) return EXIT.interrupted
    const { final } = result
    if (final.status === 'completed') return EXIT.ok
    if (final.status === 'cancelled') return EXIT.cancelled
    if (!opts.json) {
      // The reason, unless the final event's message already says it.
      const job = await client.status(jobId).catch(() => undefined)
      if (job?.error && !final.message.includes(job.error.message))
        line(io.stderr, `job failed: ${job.error.reason} (${job.error.code}): ${job.error.message}`)
    }
    return EXIT.failed
  } finally {
    printer.end()
  }
}

function readParamsOption(text: string): JsonObject {
  if (!text.startsWith('@')) return parseParamsJson(text)
  const file = text.slice(1)
  let content: string
  try {
    content = readFileSync(file, 'utf8')
  } catch (err) {
    throw new UsageError(
      `--params ${text}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`,
    )
  }
  return parseParamsJson(content, `--params ${text}`)
}

async function submit(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    param: { type: 'string', short: 'p', multiple: true },
    params: { type: 'string' },
    'job-id': { type: 'string' },
    priority: { type: 'string' },
    timeout: { type: 'string' },
    'max-attempts': { type: 'string' },
    follow: { type: 'boolean', short: 'f' },
    sse: { type: 'boolean' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'submit')
  if (positionals.length === 0)
    throw new CommandUsageError(`missing the job type (${JOB_TYPES.join(', ')})`, 'submit')
  if (positionals.length > 1)
    throw new CommandUsageError(
      `unexpected argument "${positionals[1]}" (parameters go in --param key=value)`,
      'submit',
    )
  const type = positionals[0] as SubmitJobBody['type']
  const params = paramsFromAssignments(
    values.param ?? [],
    values.params ? readParamsOption(values.params) : {},
  )
  const priority = parseIntOption('priority', values.priority)
  const timeoutSec = parseDuration('timeout', values.timeout)
  const maxAttempts = parseIntOption('max-attempts', values['max-attempts'])
  const body: SubmitJobBody = {
    type,
    params,
    ...(values['job-id'] === undefined ? {} : { jobId: values['job-id'] }),
    ...(priority === undefined ? {} : { priority }),
    ...(timeoutSec === undefined ? {} : { timeoutSec }),
    ...(maxAttempts === undefined ? {} : { maxAttempts }),
  }
  const client = clientFor(io, values.url)
  const res = await client.submit(body)
  if (values.json) line(io.stdout, JSON.stringify(res.body))
  else line(io.stdout, res.body.jobId)
  if (res.status === 200)
    line(
      io.stderr,
      `note: job ${res.body.jobId} already exists (${res.body.status}); nothing new was submitted`,
    )
  if (!values.follow) return EXIT.ok
  return follow(io, client, res.body.jobId, { transport: values.sse ? 'sse' : 'ws', json: !!values.json })
}

async function status(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } })
  if (values.help) return help(io, 'status')
  const client = clientFor(io, values.url)
  const job = await client.status(oneId(positionals, 'status'))
  line(io.stdout, values.json ? JSON.stringify(job, null, 2) : statusSummary(job, client.baseUrl))
  return EXIT.ok
}

async function list(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    status: { type: 'string' },
    type: { type: 'string' },
    limit: { type: 'string' },
    cursor: { type: 'string' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'list')
  if (positionals.length > 0) throw new CommandUsageError(`unexpected argument "${positionals[0]}"`, 'list')
  const limit = parseIntOption('limit', values.limit)
  const client = clientFor(io, values.url)
  const page = await client.list({
    status: values.status,
    type: values.type,
    limit: limit === undefined ? undefined : String(limit),
    cursor: values.cursor,
  })
  if (values.json) {
    line(io.stdout, JSON.stringify(page, null, 2))
    return EXIT.ok
  }
  if (page.jobs.length === 0) line(io.stdout, values.cursor ? 'no more jobs' : 'no jobs')
  else line(io.stdout, jobTable(page.jobs))
  if (page.nextCursor) {
    const filters = [
      values.status ? ` --status ${values.status}` : '',
      values.type ? ` --type ${values.type}` : '',
      limit === undefined ? '' : ` --limit ${limit}`,
    ].join('')
    line(io.stderr, `more: gpu-jobs list${filters} --cursor ${page.nextCursor}`)
  }
  return EXIT.ok
}

async function cancel(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } })
  if (values.help) return help(io, 'cancel')
  const jobId = oneId(positionals, 'cancel')
  const res = await clientFor(io, values.url).cancel(jobId)
  if (values.json) line(io.stdout, JSON.stringify(res))
  else if (res.status === 'cancelled') line(io.stdout, `cancelled ${res.jobId}`)
  else
    line(
      io.stdout,
      `cancel requested for ${res.jobId} (it is ${res.status}; its GPU host stops it shortly: gpu-jobs follow ${res.jobId})`,
    )
  return EXIT.ok
}

async function followCommand(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { sse: { type: 'boolean' }, json: { type: 'boolean' } })
  if (values.help) return help(io, 'follow')
  const jobId = oneId(positionals, 'follow')
  return follow(io, clientFor(io, values.url), jobId, {
    transport: values.sse ? 'sse' : 'ws',
    json: !!values.json,
  })
}

const COMMANDS: Record<string, (args: string[], io: RunIO) => Promise<number>> = {
  submit,
  status,
  list,
  cancel,
  follow: followCommand,
}

/** `error: invalid_params: params.epochs must be ...`, then one line per field. */
export function formatError(err: unknown, command?: string): string {
  if (err instanceof UsageError) {
    const cmd = err instanceof CommandUsageError ? err.command : command
    return `error: ${err.message}\nrun "gpu-jobs${cmd ? ` ${cmd}` : ''} --help" for usage`
  }
  if (err instanceof ApiRequestError) {
    // The API's messages repeat the code ("invalid params: ..."): say it once.
    const prefix = `${err.code.replace(/_/g, ' ')}: `
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message
    const lines = [`error: ${err.code}: ${message}`]
    for (const issue of err.issues) lines.push(`  ${issue.path}: ${issue.message}`)
    if (err.status === 401) lines.push('set GPU_JOBS_TOKEN to a valid API token')
    return lines.join('\n')
  }
  if (err instanceof ConnectionError)
    return `error: ${err.message}; is it running? (set GPU_JOBS_URL or --url)`
  const e = err as Error
  return `error: ${e?.message ?? String(err)}`
}

/** The program: `argv` without node and the script. Resolves to the exit code; never throws. */
export async function run(argv: string[], io: RunIO): Promise<number> {
  const [command, ...rest] = argv
  if (command === undefined) {
    line(io.stderr, HELP.main)
    return EXIT.error
  }
  if (command === '-h' || command === '--help') {
    line(io.stdout, HELP.main)
    return EXIT.ok
  }
  if (command === 'help') {
    const topic = rest[0] && HELP[rest[0]] ? rest[0] : 'main'
    line(io.stdout, HELP[topic])
    return EXIT.ok
  }
  const handler = COMMANDS[command]
  if (!handler) {
    line(io.stderr, formatError(new UsageError(`unknown command "${command}"`)))
    return EXIT.error
  }
  try {
    return await handler(rest, io)
  } catch (err) {
    if (io.signal?.aborted) return EXIT.interrupted
    line(io.stderr, formatError(err, command))
    if (io.env.GPU_JOBS_DEBUG && err instanceof Error && err.stack) line(io.stderr, err.stack)
    return EXIT.error
  }
}
