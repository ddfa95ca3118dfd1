import type { SubmitJobResponse } from '../../../schema/api.ts'
import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'
import { followToEnd } from './follow.ts'

/** `gpu-jobs rerun <id> [--follow] [--sse] [--json]`: a new job like `<id>` (or its start); prints the new id. */
export async function rerun(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    follow: { type: 'boolean', short: 'f' },
    sse: { type: 'boolean' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'rerun')
  const client = clientFor(io, values.url)
  const { body } = await withJobId(client, oneId(positionals, 'rerun'), (jobId) =>
    client.request<SubmitJobResponse>('POST', `api/jobs/${encodeURIComponent(jobId)}/rerun`),
  )
  line(io.stdout, values.json ? JSON.stringify(body) : body.jobId)
  if (!values.follow) return EXIT.ok
  return followToEnd(io, client, body.jobId, { transport: values.sse ? 'sse' : 'ws', json: !!values.json })
}
