import type { GatewayClient } from '../client.ts'
import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'
import { followJob, type Transport } from '../follow.ts'
import { EventPrinter } from '../printer.ts'

/**
 * Follows a job to its end, printing each event (a bar on a terminal, lines otherwise, or JSON lines);
 * resolves to the exit code of its outcome. `gpu-jobs follow` and `gpu-jobs submit --follow`.
 */
export async function followToEnd(
  io: RunIO,
  client: GatewayClient,
  jobId: string,
  opts: { transport: Transport; json: boolean },
): Promise<number> {
  const mode = opts.json ? 'json' : io.stdout.isTTY ? 'bar' : 'lines'
  const printer = new EventPrinter(io, mode)
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

/** `gpu-jobs follow <id> [--sse] [--json]` (`<id>` may be its start). */
export async function follow(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { sse: { type: 'boolean' }, json: { type: 'boolean' } })
  if (values.help) return help(io, 'follow')
  const client = clientFor(io, values.url)
  return withJobId(client, oneId(positionals, 'follow'), (jobId) =>
    followToEnd(io, client, jobId, { transport: values.sse ? 'sse' : 'ws', json: !!values.json }),
  )
}
