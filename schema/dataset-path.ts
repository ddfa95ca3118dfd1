import { realpath } from 'node:fs/promises'
import path from 'node:path'

/**
 * Where datasets live: any folder under DATA_DIR, at any depth, except DATA_DIR itself and what the
 * platform keeps there: these top-level folders (PGlite and the S3-compatible server of `npm start`, the
 * redis-server it may run, the GPU host's per-job scratch dirs) and every name that starts with "." (lock
 * files, hidden state). Whoever lays out DATA_DIR takes its folder names from this list.
 */
export const RESERVED_DATA_DIR_NAMES = ['pglite', 's3', 'redis', 'scratch'] as const

/** Why a `datasetPath` was refused. Messages name neither the path nor DATA_DIR's absolute location. */
export class DatasetPathError extends Error {
  override name = 'DatasetPathError'
}

const inside = (root: string, candidate: string): boolean => {
  const rel = path.relative(root, candidate)
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))
}

/** Why `candidate` (inside `root`) is not a place for a dataset, or null when it is one. */
const notADataset = (root: string, candidate: string): string | null => {
  const rel = path.relative(root, candidate)
  if (rel === '') return 'must name a folder inside DATA_DIR, not DATA_DIR itself'
  const top = rel.split(path.sep)[0] ?? ''
  // Lower-cased: on a case-insensitive file system `Scratch` is the scratch folder.
  if (top.startsWith('.') || (RESERVED_DATA_DIR_NAMES as readonly string[]).includes(top.toLowerCase()))
    return `must not be in a folder the platform keeps in DATA_DIR (${RESERVED_DATA_DIR_NAMES.join(', ')} or a name starting with ".")`
  return null
}

/**
 * Resolves a job's `datasetPath` against `dataDir` and refuses anything that is not a dataset folder:
 * `..` or an absolute path elsewhere, a symlink that points out, DATA_DIR itself, and the reserved
 * folders ({@link RESERVED_DATA_DIR_NAMES}, names starting with "."), by name or through a symlink.
 * Returns the real path. A path that does not exist yet is checked lexically (the handler reports it
 * missing); nothing outside is ever read.
 *
 * @example await resolveDatasetPath('/srv/data', 'faces/set1') // '/srv/data/faces/set1'
 */
export async function resolveDatasetPath(dataDir: string, datasetPath: string): Promise<string> {
  if (datasetPath.includes('\0')) throw new DatasetPathError('must not contain NUL bytes')
  const root = await realpath(path.resolve(dataDir)).catch(() => path.resolve(dataDir))
  // An absolute path is taken as given; resolving it against the real root would move it.
  const lexical = path.isAbsolute(datasetPath) ? path.resolve(datasetPath) : path.resolve(root, datasetPath)
  const lexicalRoot = path.isAbsolute(datasetPath) ? path.resolve(dataDir) : root
  if (!inside(lexicalRoot, lexical) && !inside(root, lexical))
    throw new DatasetPathError('must resolve inside DATA_DIR')
  const base = inside(root, lexical) ? root : lexicalRoot
  const lexicalProblem = notADataset(base, lexical)
  if (lexicalProblem) throw new DatasetPathError(lexicalProblem)
  let real: string
  try {
    real = await realpath(lexical)
  } catch {
    return lexical
  }
  if (!inside(root, real)) throw new DatasetPathError('must not be a symlink that leaves DATA_DIR')
  const realProblem = notADataset(root, real)
  if (realProblem) throw new DatasetPathError(realProblem)
  return real
}
