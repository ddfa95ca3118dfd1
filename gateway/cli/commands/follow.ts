import type { ProgressEvent } from '../../../schema/events.ts'
import { shortJobId } from '../../console/stream.js'
import type { GatewayClient } from '../client.ts'
import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'
import { type FollowResult, followJob, type Transport } from '../follow.ts'
import { EventPrinter } from '../printer.ts'
import { outcomeLines } from '../render.ts'

const EXIT_OF_STATUS: Record<string, number> = {
  completed: EXIT.ok,
  cancelled: EXIT.cancelled,
}

/**
 * Follows a job to its end, printing each event on stdout (a bar on a terminal, lines otherwise, or JSON
 * lines), then on stderr how it ended: the duration, the error of a failed job, the artifacts. Resolves
 * to the exit code of its outcome; Ctrl-C (`io.signal`) stops following, not the job, and says how to
 * resume. `gpu-jobs follow`, `submit --follow`, `rerun --follow`.
 */
export async function followToEnd(
  io: RunIO,
  client: GatewayClient,
  jobId: string,
  opts: { transport: Transport; json: boolean },
): Promise<number> {
  const mode = opts.json ? 'json' : io.stdout.isTTY ? 'bar' : 'lines'
  const printer = new EventPrinter(io, mode)
  let last: ProgressEvent | undefined
  try {
    let result: FollowResult
    try {
      result = await followJob({
        client,
        jobId,
        transport: opts.transport,
        signal: io.signal,
        reconnect: io.reconnect,
        onEvent: (e) => {
          last = e
          printer.event(e)
        },
        onReconnect: ({ reason, delayMs, attempt }) =>
          printer.notice(
            `connection lost (${reason}); reconnecting in ${(delayMs / 1000).toFixed(1)}s (try ${attempt})`,
          ),
      })
    } catch (err) {
      // Ctrl-C while the first status request was on its way.
      if (!io.signal?.aborted) throw err
      result = { aborted: true }
    }
    printer.end()
    if ('aborted' in result) {
      const now = last ? ` (${last.status})` : ''
      line(
        io.stderr,
        `stopped following; the job goes on${now}. Resume: gpu-jobs follow ${shortJobId(jobId)}`,
      )
      return EXIT.interrupted
    }
    const { final } = result
    if (!opts.json) {
      // The stored job has what the events do not carry: its times, its error, its artifacts.
      const job = await client.status(jobId).catch(() => undefined)
      for (const l of job ? outcomeLines(job, final, client.baseUrl) : [final.status]) line(io.stderr, l)
    }
    return EXIT_OF_STATUS[final.status] ?? EXIT.failed
  } finally {
    printer.end()
  }
}

/** `gpu-jobs follow <id> [--sse] [--json]` (`<id>` may be its start). */
export async function follow(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { sse: { type: 'boolean' }, json: { type: 'boolean' } })
  if (values.help) return help(io, 'follow')
  const client = clientFor(io, values.url)
  return withJobId(client, oneId(positionals, 'follow'), (jobId) =>
    followToEnd(io, client, jobId, { transport: values.sse ? 'sse' : 'ws', json: !!values.json }),
  )
}
