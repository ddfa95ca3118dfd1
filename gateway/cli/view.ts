import { type Command, CommandUsageError, clientFor, EXIT, help, line, parse } from './command.ts'

/**
 * A command that shows one API resource and takes no argument: `GET path`, printed by `text`, or as the
 * API's JSON with --json (`gpu-jobs hosts`, `gpu-jobs queue`).
 *
 * @example export const queue = viewCommand<QueueBody>('queue', 'api/queue', queueText)
 */
export function viewCommand<T>(name: string, path: string, text: (body: T) => string): Command {
  return async (args, io) => {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } })
    if (values.help) return help(io, name)
    if (positionals.length > 0) throw new CommandUsageError(`unexpected argument "${positionals[0]}"`, name)
    const { body } = await clientFor(io, values.url).request<T>('GET', path)
    line(io.stdout, values.json ? JSON.stringify(body, null, 2) : text(body))
    return EXIT.ok
  }
}
