import { CommandUsageError, clientFor, EXIT, help, line, parse, type RunIO } from '../command.ts'
import { parseIntOption } from '../params.ts'
import { jobTable } from '../render.ts'

/** `gpu-jobs list [--status s] [--type t] [--limit n] [--cursor c] [--json]`: one page, newest first. */
export async function list(args: string[], io: RunIO): Promise<number> {
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
    // The command for the next page, with the same filters.
    const filters = [
      values.status ? ` --status ${values.status}` : '',
      values.type ? ` --type ${values.type}` : '',
      limit === undefined ? '' : ` --limit ${limit}`,
    ].join('')
    line(io.stderr, `more: gpu-jobs list${filters} --cursor ${page.nextCursor}`)
  }
  return EXIT.ok
}
