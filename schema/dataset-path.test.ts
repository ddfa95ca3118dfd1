import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DatasetPathError, RESERVED_DATA_DIR_NAMES, resolveDatasetPath } from './dataset-path.ts'

let root: string
let dataDir: string
beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'dataset-path-'))
  // DATA_DIR reached through a symlink, as on hosts where /data is a link to a volume.
  await mkdir(path.join(root, 'real', 'faces', 'set1'), { recursive: true })
  await mkdir(path.join(root, 'real', 'scratch', 'job-1'), { recursive: true })
  await symlink(path.join(root, 'real'), path.join(root, 'data'))
  dataDir = path.join(root, 'data')
  await symlink(path.join(root, 'real', 'scratch'), path.join(root, 'real', 'faces', 'to-scratch'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

const refusal = async (datasetPath: string): Promise<DatasetPathError> => {
  const err = await resolveDatasetPath(dataDir, datasetPath).then(
    () => null,
    (e: unknown) => e,
  )
  expect(err, datasetPath).toBeInstanceOf(DatasetPathError)
  return err as DatasetPathError
}

describe('resolveDatasetPath', () => {
  it('lists the reserved folders once', () => {
    expect([...RESERVED_DATA_DIR_NAMES].sort()).toEqual(['pglite', 'redis', 's3', 'scratch'])
  })

  it('takes a folder under DATA_DIR, relative or absolute (through the symlink or not), or not there yet', async () => {
    const real = path.join(root, 'real', 'faces', 'set1')
    expect(await resolveDatasetPath(dataDir, 'faces/set1')).toBe(real)
    expect(await resolveDatasetPath(dataDir, path.join(dataDir, 'faces', 'set1'))).toBe(real)
    expect(await resolveDatasetPath(dataDir, real)).toBe(real)
    expect(await resolveDatasetPath(dataDir, 'later')).toBe(path.join(root, 'real', 'later'))
  })

  it.each([
    '.',
    './',
    'faces/..',
    '..',
    '../real',
    '/etc',
    'scratch',
    'scratch/job-1',
    'Scratch',
    'faces/../pglite',
    's3/bucket',
    'redis',
    '.lock',
    '.hidden/x',
    'faces/to-scratch',
    'a\u0000b',
  ])('refuses %j without naming the path or DATA_DIR', async (datasetPath) => {
    const err = await refusal(datasetPath)
    expect(err.message).not.toContain(root)
    // The message lists the reserved names; any other path sent must not come back.
    const listed = (RESERVED_DATA_DIR_NAMES as readonly string[]).includes(datasetPath.toLowerCase())
    if (datasetPath.length > 2 && !listed) expect(err.message).not.toContain(datasetPath)
  })

  it('refuses DATA_DIR itself and reserved folders given as absolute paths', async () => {
    for (const p of [
      dataDir,
      path.join(root, 'real'),
      path.join(dataDir, 'pglite'),
      path.join(root, 'real', 'scratch'),
    ])
      expect((await refusal(p)).message).not.toContain(root)
  })
})
