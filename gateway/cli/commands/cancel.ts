import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'

/** `gpu-jobs cancel <id> [--json]` (`<id>` may be its start): a finished job is a conflict (exit 3). */
export async function cancel(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } })
  if (values.help) return help(io, 'cancel')
  const client = clientFor(io, values.url)
  const res = await withJobId(client, oneId(positionals, 'cancel'), (id) => client.cancel(id))
  if (values.json) line(io.stdout, JSON.stringify(res))
  else if (res.status === 'cancelled') line(io.stdout, `cancelled ${res.jobId}`)
  else
    line(
      io.stdout,
      `cancel requested for ${res.jobId} (it is ${res.status}; its GPU host stops it shortly: gpu-jobs follow ${res.jobId})`,
    )
  return EXIT.ok
}
