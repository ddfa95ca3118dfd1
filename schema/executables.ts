import { access, constants } from 'node:fs/promises'
import path from 'node:path'

/** The folders of PATH, in order. */
export const pathDirs = (): string[] => (process.env.PATH ?? '').split(path.delimiter).filter(Boolean)

/**
 * The full path of the first executable `command` in `dirs` (default: PATH), or undefined.
 *
 * @example await findExecutable('redis-server') // '/usr/bin/redis-server'
 */
export async function findExecutable(
  command: string,
  dirs: string[] = pathDirs(),
): Promise<string | undefined> {
  for (const dir of dirs) {
    const file = path.join(dir, command)
    const runnable = await access(file, constants.X_OK).then(
      () => true,
      () => false,
    )
    if (runnable) return file
  }
  return undefined
}
