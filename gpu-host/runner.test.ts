/**
 * The runner's artifact path: the job process writes into its scratch dir and the host stores; every key
 * stays under `<prefix>/`, whatever the job process sends (through the SDK or raw IPC). No services: the
 * runner stores into a folder, as `npm run job` does.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { DirectoryArtifactStore } from '../functions/sdk/local-artifacts.ts'
import { fixtureJob } from '../tests/helpers/fixture-process.ts'
import { JobProcess, type RunOutcome } from './runner.ts'

const dirs: string[] = []
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

/** Every file under `dir`, relative, sorted. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort()
}

async function run(params: Record<string, unknown>): Promise<{ outcome: RunOutcome; root: string }> {
  const root = await mkdtemp(path.join(tmpdir(), 'runner-art-'))
  dirs.push(root)
  const out = path.join(root, 'out')
  const proc = new JobProcess(
    fixtureJob('writes-artifacts', {
      jobId: 'j1',
      root,
      params,
      artifacts: new DirectoryArtifactStore(out, 'loras/j1'),
      timeoutMs: 30_000,
      killGraceMs: 1000,
    }),
  )
  return { outcome: await proc.done, root }
}

/** The class of paths that would leave `<prefix>/`, or collide with the manifest. */
const BAD_PATHS = [
  // Out of the prefix: up, or absolute.
  ...['..', '../x.txt', 'a/../../x.txt', '/etc/x'],
  // Not in normal form: an empty segment, a trailing slash, nothing, dot segments.
  ...['a//b', 'a/', '', '.', './a'],
  // Up through Windows separators, a NUL byte, and the manifest's own name.
  ...['a\\..\\b', 'a\0b', 'manifest.json'],
]

describe('artifacts through the host', () => {
  it('stores buffers and a 24 MB stream with the sizes and sha256 the host computed', async () => {
    const size = 24 * 1024 * 1024
    const { outcome, root } = await run({
      artifacts: [
        { path: 'a.txt', body: 'hello' },
        { path: 'sub/big.bin', size },
      ],
    })
    expect(outcome.ok).toBe(true)
    const big = await readFile(path.join(root, 'out/sub/big.bin'))
    expect(outcome.artifacts).toEqual([
      expect.objectContaining({
        path: 'a.txt',
        key: 'loras/j1/a.txt',
        size: 5,
        sha256: createHash('sha256').update('hello').digest('hex'),
      }),
      expect.objectContaining({
        path: 'sub/big.bin',
        key: 'loras/j1/sub/big.bin',
        size,
        sha256: createHash('sha256').update(big).digest('hex'),
      }),
    ])
    expect(await filesUnder(path.join(root, 'out'))).toEqual(['a.txt', 'sub/big.bin'])
  })

  it.each(BAD_PATHS.map((p) => [JSON.stringify(p), p]))(
    'ctx.artifacts.put(%s) fails the job, not retryable, naming the path',
    async (_label, bad) => {
      const { outcome, root } = await run({ artifacts: [{ path: bad }], throwFirstError: true })
      expect(outcome.ok).toBe(false)
      if (outcome.ok) return
      expect(outcome.error).toMatchObject({ retryable: false, code: 'INVALID_ARTIFACT_PATH' })
      expect(outcome.error.message).toContain(JSON.stringify(bad))
      expect(await filesUnder(root).then((f) => f.filter((x) => !x.startsWith('scratch/')))).toEqual([])
    },
  )

  it('refuses the same paths from a job process that skips the SDK (raw IPC), and fails the attempt', async () => {
    const { outcome, root } = await run({
      via: 'ipc',
      artifacts: [...BAD_PATHS.map((p) => ({ path: p, body: 'evil' })), { path: 'fine.txt', body: 'ok' }],
    })
    expect(outcome.ok).toBe(false)
    if (outcome.ok) return
    // The handler returned normally, yet the attempt fails: the host does not trust the job process.
    expect(outcome.error).toMatchObject({ retryable: false, code: 'INVALID_ARTIFACT_PATH' })
    expect(await filesUnder(root).then((f) => f.filter((x) => !x.startsWith('scratch/')))).toEqual([
      'out/fine.txt',
    ])
  })

  it('uploads only regular files inside the scratch dir (no file outside, no symlink out of it)', async () => {
    const secretDir = await mkdtemp(path.join(tmpdir(), 'runner-secret-'))
    dirs.push(secretDir)
    const secret = path.join(secretDir, 'host-secret')
    await writeFile(secret, 'the host secret')
    const { outcome, root } = await run({
      via: 'ipc',
      artifacts: [
        { path: 'a.txt', file: secret },
        { path: 'b.txt', symlinkTo: secret },
        { path: 'c.txt', file: '/proc/self/environ' },
        { path: 'd.txt', symlinkTo: '/dev/zero' },
      ],
    })
    expect(outcome.ok).toBe(true)
    if (!outcome.ok) return
    const results = (outcome.result as { results: { kind: string; message: string }[] }).results
    expect(results.map((r) => r.kind)).toEqual([
      'artifact-refused',
      'artifact-refused',
      'artifact-refused',
      'artifact-refused',
    ])
    expect(outcome.artifacts).toEqual([])
    expect(await filesUnder(root).then((f) => f.filter((x) => !x.startsWith('scratch/')))).toEqual([])
  })
})
