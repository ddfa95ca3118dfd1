import { constants } from 'node:fs'
import { type FileHandle, open, readlink, realpath } from 'node:fs/promises'
import path from 'node:path'

/**
 * Opens `file` for reading only if it is a regular file inside `dir`. The check is made on the opened
 * descriptor (/proc/self/fd), so a symlink swapped in after a check cannot point the host elsewhere; a
 * FIFO cannot block the open (O_NONBLOCK).
 */
export async function openInside(dir: string, file: string): Promise<FileHandle> {
  const root = await realpath(dir)
  const handle = await open(path.resolve(dir, file), constants.O_RDONLY | constants.O_NONBLOCK)
  try {
    const real = await readlink(`/proc/self/fd/${handle.fd}`).catch(() => realpath(path.resolve(dir, file)))
    if (!real.startsWith(root + path.sep)) throw new Error("the file is not inside the job's scratch dir")
    if (!(await handle.stat()).isFile()) throw new Error('not a regular file')
    return handle
  } catch (err) {
    await handle.close().catch(() => {})
    throw err
  }
}
