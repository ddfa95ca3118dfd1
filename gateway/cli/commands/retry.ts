import type { RetryJobResponse } from '../../../schema/api.ts'
import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'

/** `gpu-jobs retry <id> [--json]`: a retrying job's next attempt now; any other status is a conflict (exit 3). */
export async function retry(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } })
  if (values.help) return help(io, 'retry')
  const client = clientFor(io, values.url)
  const { body } = await withJobId(client, oneId(positionals, 'retry'), (jobId) =>
    client.request<RetryJobResponse>('POST', `api/jobs/${encodeURIComponent(jobId)}/retry`),
  )
  line(
    io.stdout,
    values.json
      ? JSON.stringify(body)
      : `next attempt of ${body.jobId} requested now (a GPU host takes it when a slot is free: gpu-jobs follow ${body.jobId})`,
  )
  return EXIT.ok
}
