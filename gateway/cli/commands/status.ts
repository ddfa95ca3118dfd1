import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'
import { statusSummary } from '../render.ts'

/** `gpu-jobs status <id> [--json]`: the job's state, whatever it is (exit 0); `<id>` may be its start. */
export async function status(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } })
  if (values.help) return help(io, 'status')
  const client = clientFor(io, values.url)
  const job = await withJobId(client, oneId(positionals, 'status'), (id) => client.status(id))
  line(io.stdout, values.json ? JSON.stringify(job, null, 2) : statusSummary(job, client.baseUrl))
  return EXIT.ok
}
