import { CommandUsageError, clientFor, EXIT, help, line, parse, type RunIO } from '../command.ts'
import { parseIntOption } from '../params.ts'
import { jobTable } from '../render.ts'

/** `text` as one shell word: as is when it is plain, else in single quotes. */
const shellQuote = (text: string): string =>
  /^[A-Za-z0-9_./:=@%+-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`

/**
 * `gpu-jobs list [--status s] [--type t] [--q text] [--limit n] [--cursor c] [--json]`: one page, newest
 * first; `--q` (or `--search`) keeps jobs whose id starts with the text or whose message contains it.
 */
export async function list(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    status: { type: 'string' },
    type: { type: 'string' },
    q: { type: 'string' },
    search: { type: 'string' },
    limit: { type: 'string' },
    cursor: { type: 'string' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'list')
  if (positionals.length > 0) throw new CommandUsageError(`unexpected argument "${positionals[0]}"`, 'list')
  if (values.q !== undefined && values.search !== undefined)
    throw new CommandUsageError('--q and --search are the same option: give one', 'list')
  const search = values.q ?? values.search
  const limit = parseIntOption('limit', values.limit)
  const client = clientFor(io, values.url)
  const page = await client.list({
    status: values.status,
    type: values.type,
    q: search,
    limit: limit === undefined ? undefined : String(limit),
    cursor: values.cursor,
  })
  if (values.json) {
    line(io.stdout, JSON.stringify(page, null, 2))
    return EXIT.ok
  }
  if (page.jobs.length === 0)
    line(io.stdout, values.cursor ? 'no more jobs' : search === undefined ? 'no jobs' : 'no jobs match')
  else line(io.stdout, jobTable(page.jobs))
  if (page.nextCursor) {
    // The command for the next page, with the same filters.
    const filters = [
      values.status ? ` --status ${values.status}` : '',
      values.type ? ` --type ${values.type}` : '',
      search === undefined ? '' : ` --q ${shellQuote(search)}`,
      limit === undefined ? '' : ` --limit ${limit}`,
    ].join('')
    line(io.stderr, `more: gpu-jobs list${filters} --cursor ${page.nextCursor}`)
  }
  return EXIT.ok
}
