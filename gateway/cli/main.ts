import { ApiRequestError, ConnectionError } from './client.ts'
import { type Command, CommandUsageError, EXIT, line, type RunIO } from './command.ts'
import { cancel } from './commands/cancel.ts'
import { follow } from './commands/follow.ts'
import { hosts } from './commands/hosts.ts'
import { list } from './commands/list.ts'
import { logs } from './commands/logs.ts'
import { queue } from './commands/queue.ts'
import { rerun } from './commands/rerun.ts'
import { retry } from './commands/retry.ts'
import { status } from './commands/status.ts'
import { submit } from './commands/submit.ts'
import { HELP } from './help.ts'
import { UsageError } from './params.ts'

// `gpu-jobs`: picks the command, runs it, and turns whatever it throws into one clear message and an
// exit code. Each command is in commands/, what they share in command.ts.

export { EXIT, type Output, type RunIO } from './command.ts'

const COMMANDS: Record<string, Command> = {
  submit,
  status,
  list,
  cancel,
  follow,
  logs,
  rerun,
  retry,
  hosts,
  queue,
}

/**
 * What went wrong, each thing said once: `error: <code>: <message>` (the API's message repeats neither its
 * code nor, for one field, the field), or with several fields `error: <code>: <n> fields` and one line each.
 * `tokenSet`: whether GPU_JOBS_TOKEN is set, for what a 401 asks of the user.
 */
export function formatError(err: unknown, command?: string, { tokenSet = false } = {}): string {
  if (err instanceof UsageError) {
    const cmd = err instanceof CommandUsageError ? err.command : command
    return `error: ${err.message}\nrun "gpu-jobs${cmd ? ` ${cmd}` : ''} --help" for usage`
  }
  if (err instanceof ApiRequestError) {
    // The gateway's advice is for HTTP clients (send Authorization: Bearer); a CLI user sets a variable.
    if (err.status === 401)
      return `error: ${err.code}: ${tokenSet ? 'GPU_JOBS_TOKEN is not a valid API token of this gateway' : 'the gateway asks for an API token: set GPU_JOBS_TOKEN'}`
    // The API's messages repeat the code ("invalid params: ..."): say it once.
    const prefix = `${err.code.replace(/_/g, ' ')}: `
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message
    // The message says the first field's issue already ("params.epochs must be number").
    const [only, ...more] = err.issues
    if (more.length === 0)
      return only === undefined || message.includes(only.message)
        ? `error: ${err.code}: ${message}`
        : `error: ${err.code}: ${message}\n  ${only.path}: ${only.message}`
    return [
      `error: ${err.code}: ${err.issues.length} fields`,
      ...err.issues.map((issue) => `  ${issue.path}: ${issue.message}`),
    ].join('\n')
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
    line(io.stderr, formatError(err, command, { tokenSet: !!io.env.GPU_JOBS_TOKEN?.trim() }))
    if (io.env.GPU_JOBS_DEBUG && err instanceof Error && err.stack) line(io.stderr, err.stack)
    return EXIT.error
  }
}
