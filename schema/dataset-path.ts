import { realpath } from 'node:fs/promises'
import path from 'node:path'

export class DatasetPathError extends Error {
  override name = 'DatasetPathError'
}

const inside = (root: string, candidate: string): boolean => {
  const rel = path.relative(root, candidate)
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))
}

/**
 * Resolves a job's `datasetPath` against `dataDir` and refuses anything that lands outside it: `..`,
 * an absolute path elsewhere, or a symlink that points out. Returns the real path. A path that does not
 * exist yet is checked lexically (the handler reports it missing); nothing outside is ever read.
 */
export async function resolveDatasetPath(dataDir: string, datasetPath: string): Promise<string> {
  if (datasetPath.includes('\0')) throw new DatasetPathError('must not contain NUL bytes')
  const root = await realpath(path.resolve(dataDir)).catch(() => path.resolve(dataDir))
  const lexical = path.resolve(root, datasetPath)
  if (!inside(root, lexical)) throw new DatasetPathError(`must resolve inside DATA_DIR (${dataDir})`)
  let real: string
  try {
    real = await realpath(lexical)
  } catch {
    return lexical
  }
  if (!inside(root, real)) throw new DatasetPathError('must not be a symlink that leaves DATA_DIR')
  return real
}
