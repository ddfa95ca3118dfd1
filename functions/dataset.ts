import type { Dirent } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import { DatasetPathError, resolveDatasetPath } from '../schema/dataset-path.ts'
import type { HandlerContext, HandlerJob } from './sdk/context.ts'
import type { JsonValue } from './sdk/define.ts'
import { NonRetryableError } from './sdk/errors.ts'

/** A training dataset found under DATA_DIR. */
export interface Dataset {
  /** Its real path (symlinks resolved), inside DATA_DIR. */
  dir: string
  /** Regular files in it, at any depth (hidden files and symlinks not counted). */
  files: number
  /** How many of those files have each extension (lower case, with the dot; '' for none). */
  byExtension: Record<string, number>
}

/** Deep enough for kohya's `<repeats>_<class>/` folders and F5-TTS's `wavs/`; a deeper tree is not a dataset. */
const MAX_DEPTH = 8

const codeOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code

/**
 * Resolves a job's `datasetPath` inside `dataDir` and counts its files. Refuses, before reading anything,
 * a path that leaves DATA_DIR (`invalid_params`); then a dataset that is missing, not a folder, unreadable
 * or empty (`invalid_dataset`). Both are non-retryable: another attempt would meet the same dataset.
 *
 * @example const { dir, files } = await openDataset(ctx.paths.data, job.params.datasetPath)
 */
export async function openDataset(dataDir: string, datasetPath: string): Promise<Dataset> {
  let dir: string
  try {
    dir = await resolveDatasetPath(dataDir, datasetPath)
  } catch (err) {
    if (err instanceof DatasetPathError)
      throw new NonRetryableError(`params.datasetPath ${err.message}`, {
        reason: 'invalid_params',
        cause: err,
      })
    throw err
  }
  const where = `dataset "${datasetPath}"`
  const info = await stat(dir).catch((err: unknown) => {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR')
      throw new NonRetryableError(`${where} does not exist in DATA_DIR`, {
        reason: 'invalid_dataset',
        cause: err,
      })
    throw err
  })
  if (!info.isDirectory())
    throw new NonRetryableError(
      `${where} is not a folder: point datasetPath at the folder that holds the files`,
      {
        reason: 'invalid_dataset',
      },
    )

  const byExtension: Record<string, number> = {}
  let files = 0
  const walk = async (folder: string, depth: number): Promise<void> => {
    let entries: Dirent[]
    try {
      entries = await readdir(folder, { withFileTypes: true })
    } catch (err) {
      if (codeOf(err) === 'EACCES' || codeOf(err) === 'EPERM')
        throw new NonRetryableError(`${where} cannot be read (permission denied)`, {
          reason: 'invalid_dataset',
          cause: err,
        })
      throw err
    }
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue
      // Symlinks are neither counted nor followed: what they point at was never checked to be inside DATA_DIR.
      if (entry.isFile()) {
        files++
        const ext = path.extname(entry.name).toLowerCase()
        byExtension[ext] = (byExtension[ext] ?? 0) + 1
      } else if (entry.isDirectory() && depth < MAX_DEPTH)
        await walk(path.join(folder, entry.name), depth + 1)
    }
  }
  await walk(dir, 1)
  if (files === 0)
    throw new NonRetryableError(`${where} is empty: it holds no files to train on`, {
      reason: 'invalid_dataset',
    })
  return { dir, files, byExtension }
}

/** Files in `dataset` whose extension is one of `extensions` (with dots, lower case). */
export const countByExtension = (dataset: Dataset, extensions: readonly string[]): number =>
  extensions.reduce((n, ext) => n + (dataset.byExtension[ext] ?? 0), 0)

/**
 * The `run` of a training type: opens the job's dataset, then hands it to the engine the params name.
 *
 * @example
 * defineHandler({ type: 'train_lora', run: trainOnDataset({ simulate, kohya: trainWithKohya }) })
 */
export const trainOnDataset =
  <P extends { datasetPath: string; engine: string }>(
    engines: { [E in P['engine']]: (params: P, dataset: Dataset, ctx: HandlerContext) => Promise<JsonValue> },
  ) =>
  async (job: HandlerJob<P>, ctx: HandlerContext): Promise<JsonValue> => {
    const dataset = await openDataset(ctx.paths.data, job.params.datasetPath)
    return engines[job.params.engine as P['engine']](job.params, dataset, ctx)
  }
