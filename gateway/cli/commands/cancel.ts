import { clientFor, EXIT, help, line, oneId, parse, type RunIO } from '../command.ts'

/** `gpu-jobs cancel <id> [--json]`: a finished job is a conflict (exit 3). */
export async function cancel(args: string[], io: RunIO): Promise<number> {
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
