import { type ChildProcess, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { ModelCache } from './context.ts'
import { NonRetryableError } from './errors.ts'
import { createModelCache, type ModelCacheOutcome } from './models.ts'

const WORKER = fileURLToPath(new URL('../../tests/fixtures/model-cache-worker.ts', import.meta.url))
const sha = (b: string | Buffer) => createHash('sha256').update(b).digest('hex')
/** What the worker's fetcher writes: `chunks` x 64 KiB of "m". */
const workerBytes = (chunks: number) => Buffer.alloc(64 * 1024 * chunks, 'm')

let root: string
let modelsDir: string
let outcomes: { model: string; outcome: ModelCacheOutcome; bytes: number }[]
let cache: ModelCache
const procs: ChildProcess[] = []

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'model-cache-'))
  modelsDir = path.join(root, 'models')
  await mkdir(modelsDir)
  outcomes = []
  cache = createModelCache(modelsDir, {
    pollMs: 20,
    onOutcome: (model, outcome, bytes) => {
      outcomes.push({ model, outcome, bytes })
    },
  })
})
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.exitCode === null) p.kill('SIGKILL')
  await rm(root, { recursive: true, force: true })
})

/** Everything under the models dir, hidden names included (locks, temp files, checksum records). */
async function listAll(dir = modelsDir): Promise<string[]> {
  return ((await readdir(dir, { recursive: true })) as string[]).sort()
}

function worker(args: Record<string, unknown>): {
  proc: ChildProcess
  fetching: Promise<string>
  done: Promise<{ file?: string; error?: string; outcomes: { outcome: string; bytes: number }[] }>
} {
  const proc = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify({ modelsDir, ...args })], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  procs.push(proc)
  let out = ''
  let err = ''
  proc.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  const fetching = new Promise<string>((resolve) => {
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const m = out.match(/FETCHING (\S+)/)
      if (m?.[1]) resolve(m[1])
    })
  })
  const done = new Promise<{ file?: string; error?: string; outcomes: { outcome: string; bytes: number }[] }>(
    (resolve, reject) =>
      proc.on('exit', () => {
        const last = out.trim().split('\n').at(-1) ?? ''
        try {
          resolve(JSON.parse(last))
        } catch {
          reject(new Error(`worker printed no result: ${out} ${err}`))
        }
      }),
  )
  return { proc, fetching, done }
}

describe('ctx.models.ensure with a path source', () => {
  it('copies a file into place once, then hits; the copy is the source, verified by sha256', async () => {
    const src = path.join(root, 'incoming.safetensors')
    await writeFile(src, 'weights v1')
    const file = await cache.ensure('checkpoints/sd15.safetensors', {
      source: src,
      sha256: sha('weights v1'),
    })
    expect(file).toBe(path.join(modelsDir, 'checkpoints/sd15.safetensors'))
    expect(await readFile(file, 'utf8')).toBe('weights v1')
    // A second ensure (with or without the sha) does not copy again, even if the source changed.
    await writeFile(src, 'weights v2')
    expect(await cache.ensure('checkpoints/sd15.safetensors', src)).toBe(file)
    expect(
      await cache.ensure('checkpoints/sd15.safetensors', { source: src, sha256: sha('weights v1') }),
    ).toBe(file)
    expect(outcomes).toEqual([
      { model: 'checkpoints/sd15.safetensors', outcome: 'miss', bytes: 10 },
      { model: 'checkpoints/sd15.safetensors', outcome: 'hit', bytes: 0 },
      { model: 'checkpoints/sd15.safetensors', outcome: 'hit', bytes: 0 },
    ])
    // No lock and no temp file left; the checksum record is hidden beside the model.
    expect(await listAll()).toEqual([
      'checkpoints',
      'checkpoints/.sd15.safetensors.sha256',
      'checkpoints/sd15.safetensors',
    ])
  })

  it('copies a folder (a Diffusers model) whole, relative paths being under MODELS_DIR', async () => {
    await mkdir(path.join(modelsDir, 'incoming/tiny/unet'), { recursive: true })
    await writeFile(path.join(modelsDir, 'incoming/tiny/model_index.json'), '{}')
    await writeFile(path.join(modelsDir, 'incoming/tiny/unet/w.bin'), '12345')
    const dir = await cache.ensure('diffusers/tiny', 'incoming/tiny')
    expect(await readFile(path.join(dir, 'unet/w.bin'), 'utf8')).toBe('12345')
    expect(outcomes).toEqual([{ model: 'diffusers/tiny', outcome: 'miss', bytes: 7 }])
    await expect(
      cache.ensure('diffusers/other', { source: 'incoming/tiny', sha256: sha('x') }),
    ).rejects.toThrow(/sha256.*applies to a file.*folder/)
  })

  it('uses a model already at its name as it is (a source that is the target itself)', async () => {
    await writeFile(path.join(modelsDir, 'vocab.txt'), 'a b c')
    expect(await cache.ensure('vocab.txt', path.join(modelsDir, 'vocab.txt'))).toBe(
      path.join(modelsDir, 'vocab.txt'),
    )
    // With a sha: hashed once, then remembered by size and mtime.
    await cache.ensure('vocab.txt', { source: 'vocab.txt', sha256: sha('a b c') })
    expect(await readFile(path.join(modelsDir, '.vocab.txt.sha256'), 'utf8')).toContain(sha('a b c'))
    expect(outcomes.map((o) => o.outcome)).toEqual(['hit', 'hit'])
  })

  it('fails a sha256 mismatch with a NonRetryableError naming the model, and keeps no file', async () => {
    const src = path.join(root, 'bad.bin')
    await writeFile(src, 'corrupted')
    const err = await cache
      .ensure('loras/style.safetensors', { source: src, sha256: sha('the right bytes') })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NonRetryableError)
    expect((err as NonRetryableError).code).toBe('MODEL_CHECKSUM_MISMATCH')
    expect((err as Error).message).toMatch(/model "loras\/style.safetensors": sha256 mismatch/)
    expect((err as Error).message).toContain(sha('corrupted'))
    expect(await listAll()).toEqual(['loras'])
    // The bytes were fetched, so they are counted.
    expect(outcomes).toEqual([{ model: 'loras/style.safetensors', outcome: 'miss', bytes: 9 }])
  })

  it('refuses a copy on the volume that does not match the sha256 asked for, and leaves it alone', async () => {
    await writeFile(path.join(modelsDir, 'm.bin'), 'old version')
    await expect(cache.ensure('m.bin', { source: 'm.bin', sha256: sha('new version') })).rejects.toThrow(
      /model "m.bin": the copy on the models volume has sha256 .* expected/,
    )
    expect(await readFile(path.join(modelsDir, 'm.bin'), 'utf8')).toBe('old version')
  })

  it("removes what a crashed fetch of this model left, and never another model's temp files", async () => {
    const src = path.join(root, 'src')
    await writeFile(src, 'a')
    // A dead fetch of "a", and a fetch of "a.b" in progress (whose names start like a's).
    await writeFile(path.join(modelsDir, '.a.0123456789abcdef.partial'), 'half')
    await writeFile(path.join(modelsDir, '.a.b.0123456789abcdef.partial'), 'in progress')
    await cache.ensure('a', src)
    expect(await listAll()).toEqual(['.a.b.0123456789abcdef.partial', '.a.sha256', 'a'])
  })

  it('a missing source is a NonRetryableError naming the model', async () => {
    await expect(cache.ensure('x.bin', path.join(root, 'nope'))).rejects.toSatisfy(
      (e: unknown) =>
        e instanceof NonRetryableError && /model "x.bin": source path does not exist/.test(e.message),
    )
    expect(await listAll()).toEqual([])
  })
})

describe('ctx.models.ensure refuses bad input with an error naming the field', () => {
  it.each([
    ['../escape.bin'],
    ['/etc/passwd'],
    ['a/../../b'],
    ['a/./b'],
    ['.hidden'],
    ['a/.lock'],
    ['a//b'],
    ['a b'],
    ['a\\b'],
    [''],
    ['x'.repeat(600)],
    ['a/b/c/d/e/f/g/h/i'],
  ])('name %j', async (name) => {
    const err = await cache.ensure(name, path.join(root, 'src')).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NonRetryableError)
    expect((err as Error).message).toMatch(/^ctx\.models\.ensure: name /)
    expect(await listAll(root)).toEqual(['models'])
  })

  it('a name through a symlinked folder that leaves MODELS_DIR', async () => {
    await mkdir(path.join(root, 'outside'))
    await symlink(path.join(root, 'outside'), path.join(modelsDir, 'link'))
    await writeFile(path.join(root, 'src'), 'x')
    await expect(cache.ensure('link/m.bin', path.join(root, 'src'))).rejects.toThrow(
      /name "link\/m.bin" resolves outside the models directory/,
    )
    expect(await readdir(path.join(root, 'outside'))).toEqual([])
  })

  it.each([
    [{ source: 'https://huggingface.co/x' }, /source .*only s3:\/\/ URLs and paths/],
    [{ source: 's3://bucket' }, /source "s3:\/\/bucket" must be s3:\/\/<bucket>\/<key>/],
    [{ source: 's3://Bad_Bucket/models/x' }, /source .* must be s3:\/\/<bucket>\/<key>/],
    [{ source: 's3://b-1/loras/job/lora.safetensors' }, /source S3 key must be under "models\/"/],
    [{ source: 's3://b-1/models/../loras/x' }, /source S3 key must have no empty, "." or ".." segment/],
    [{ source: '' }, /source must be/],
    [{ source: '/x', sha256: 'ABC' }, /sha256 must be 64 lowercase hex digits/],
  ])('source %j', async (source, message) => {
    const err = await cache.ensure('m.bin', source).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NonRetryableError)
    expect((err as Error).message).toMatch(message)
  })

  it('an s3:// source where no host fetches for the cache (npm run job, unit tests)', async () => {
    await expect(cache.ensure('m.bin', 's3://bucket/models/m.bin')).rejects.toThrow(
      /model "m.bin": s3:\/\/ sources are fetched by a GPU host, and this runner has none/,
    )
    expect(await listAll()).toEqual([])
  })
})

describe('ctx.models.ensure across processes', () => {
  it('two processes that ask at once fetch once: one miss, one hit, the same complete file', async () => {
    const args = { name: 'big/model.bin', source: 's3://bucket/models/model.bin', chunks: 10, chunkMs: 40 }
    const a = worker(args)
    const b = worker(args)
    const [ra, rb] = await Promise.all([a.done, b.done])
    const file = path.join(modelsDir, 'big/model.bin')
    expect(ra.file).toBe(file)
    expect(rb.file).toBe(file)
    expect([...ra.outcomes, ...rb.outcomes].map((o) => o.outcome).sort()).toEqual(['hit', 'miss'])
    expect([...ra.outcomes, ...rb.outcomes].reduce((n, o) => n + o.bytes, 0)).toBe(10 * 64 * 1024)
    expect((await readFile(file)).equals(workerBytes(10))).toBe(true)
    expect(await listAll(path.join(modelsDir, 'big'))).toEqual(['.model.bin.sha256', 'model.bin'])
  })

  it('a fetch killed with kill -9 leaves nothing that looks complete; a later ensure takes its lock over and succeeds', async () => {
    const args = { name: 'm/model.bin', source: 's3://bucket/models/model.bin', chunks: 200, chunkMs: 50 }
    const a = worker(args)
    const partial = await a.fetching
    // Some bytes are written, then the process dies mid-download.
    for (let i = 0; i < 100 && ((await stat(partial).catch(() => null))?.size ?? 0) === 0; i++)
      await sleep(20)
    a.proc.kill('SIGKILL')
    await a.done.catch(() => {})
    const left = await listAll(path.join(modelsDir, 'm'))
    // A lock and a hidden .partial: never the model's name.
    expect(left).not.toContain('model.bin')
    expect(left).toContain('.model.bin.lock')
    expect(left.some((f) => f.endsWith('.partial'))).toBe(true)

    // This host's pid in the lock is dead: taken over at once, the leftovers removed.
    const b = worker({ ...args, chunks: 4, chunkMs: 5 })
    const rb = await b.done
    expect(rb).toMatchObject({ file: path.join(modelsDir, 'm/model.bin'), outcomes: [{ outcome: 'miss' }] })
    expect((await readFile(path.join(modelsDir, 'm/model.bin'))).equals(workerBytes(4))).toBe(true)
    expect(await listAll(path.join(modelsDir, 'm'))).toEqual(['.model.bin.sha256', 'model.bin'])
  })

  it("takes over another host's lock once its heartbeat is older than the stale limit, and never a fresh one", async () => {
    const lock = path.join(modelsDir, '.remote.bin.lock')
    await writeFile(lock, JSON.stringify({ token: 't', host: `not-${hostname()}`, pid: 1 }))
    const src = path.join(root, 'src.bin')
    await writeFile(src, 'remote')
    const controller = new AbortController()
    const waiting = createModelCache(modelsDir, {
      staleLockMs: 60_000,
      pollMs: 20,
      signal: controller.signal,
    })
    // Fresh (its mtime is now): the fetch on the other host is alive, so this one waits.
    const pending = waiting.ensure('remote.bin', src)
    await sleep(300)
    controller.abort(new Error('gave up waiting'))
    await expect(pending).rejects.toThrow('gave up waiting')
    expect(await readFile(lock, 'utf8')).toContain('"token":"t"')
    // Its heartbeat stopped two minutes ago: taken over.
    const old = new Date(Date.now() - 120_000)
    await utimes(lock, old, old)
    const stale = createModelCache(modelsDir, { staleLockMs: 60_000, pollMs: 20 })
    expect(await readFile(await stale.ensure('remote.bin', src), 'utf8')).toBe('remote')
    expect(await listAll()).toEqual(['.remote.bin.sha256', 'remote.bin'])
  })

  it('the holder heartbeats its lock, so a fetch longer than the stale limit is not taken over', async () => {
    const w = worker({
      name: 'slow.bin',
      source: 's3://bucket/models/slow.bin',
      chunks: 30,
      chunkMs: 50,
      heartbeatMs: 100,
    })
    await w.fetching
    // A waiter that calls a lock stale after 500 ms; the fetch takes 1.5 s. Had it taken the lock over it
    // would fetch itself, and it has no fetcher: the ensure would fail.
    const other = createModelCache(modelsDir, { staleLockMs: 500, pollMs: 20 })
    const file = await other.ensure('slow.bin', 's3://bucket/models/slow.bin')
    expect((await w.done).outcomes.map((o) => o.outcome)).toEqual(['miss'])
    expect((await readFile(file)).equals(workerBytes(30))).toBe(true)
  })
})
