import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { type S3Server, startS3 } from '../tests/helpers/stack.ts'
import { ModelFetchError, S3ModelFetcher } from './model-fetch.ts'

let s3: S3Server
let root: string
let modelsDir: string
let fetcher: S3ModelFetcher
const bucket = 'model-fetch-test'
const body = Buffer.alloc(3 * 1024 * 1024 + 17, 'w')
const partial = (dir = modelsDir, base = 'm.bin') => path.join(dir, `.${base}.0123456789abcdef.partial`)
const signal = () => new AbortController().signal

beforeAll(async () => {
  s3 = await startS3()
  await s3.client.send(new CreateBucketCommand({ Bucket: bucket }))
  await s3.client.send(new CreateBucketCommand({ Bucket: 'other-bucket' }))
  for (const [b, key] of [
    [bucket, 'models/m.bin'],
    [bucket, 'loras/job-1/lora.safetensors'],
    ['other-bucket', 'models/m.bin'],
  ] as const)
    await s3.client.send(new PutObjectCommand({ Bucket: b, Key: key, Body: body }))
})
afterAll(async () => {
  await s3?.close()
})
beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'model-fetch-'))
  modelsDir = path.join(root, 'models')
  await mkdir(modelsDir)
  fetcher = new S3ModelFetcher(s3.client, bucket, modelsDir)
  return () => rm(root, { recursive: true, force: true })
})

const fetchErr = (req: Partial<{ model: string; bucket: string; key: string; file: string }>) =>
  fetcher.fetch({ model: 'm.bin', bucket, key: 'models/m.bin', file: partial(), ...req }, signal()).then(
    () => null,
    (e: unknown) => e as ModelFetchError,
  )

describe('the host fetches model objects for job processes', () => {
  it('streams the object into a new temp file and answers its size and sha256', async () => {
    const got = await fetcher.fetch(
      { model: 'm.bin', bucket, key: 'models/m.bin', file: partial() },
      signal(),
    )
    expect(got).toEqual({ size: body.length, sha256: createHash('sha256').update(body).digest('hex') })
    expect((await readFile(partial())).equals(body)).toBe(true)
  })

  it.each([
    [{ bucket: 'other-bucket' }, /refused: models are fetched only from this host's bucket/],
    [{ key: 'loras/job-1/lora.safetensors' }, /S3 key must be under "models\/"/],
    [{ key: 'models/../loras/job-1/lora.safetensors' }, /S3 key must have no empty, "." or ".." segment/],
    [{ file: 'the model itself' }, /not a name the model cache makes/],
    [{ file: 'a temp name outside' }, /not inside the models directory/],
  ])('refuses %j, not retryable, and writes nothing', async (req, message) => {
    // The files name the per-test models dir, so they are made here.
    const files: Record<string, string> = {
      'the model itself': path.join(modelsDir, 'm.bin'),
      'a temp name outside': partial(root),
    }
    const err = await fetchErr('file' in req ? { file: files[req.file] ?? '' } : req)
    expect(err).toBeInstanceOf(ModelFetchError)
    expect(err?.retryable).toBe(false)
    expect(err?.message).toMatch(message)
    expect(await readdir(modelsDir)).toEqual([])
  })

  it('never writes over an existing file or through a symlink', async () => {
    await writeFile(partial(), 'mine')
    expect((await fetchErr({}))?.message).toMatch(/cannot create its temp file \(EEXIST\)/)
    expect(await readFile(partial(), 'utf8')).toBe('mine')
    await rm(partial())
    await writeFile(path.join(root, 'victim'), 'keep')
    await symlink(path.join(root, 'victim'), partial())
    expect((await fetchErr({}))?.message).toMatch(/cannot create its temp file \(EEXIST\)/)
    expect(await readFile(path.join(root, 'victim'), 'utf8')).toBe('keep')
  })

  it('a missing object is not retryable and names the model and the source; no temp file is left', async () => {
    const err = await fetchErr({ key: 'models/absent.bin' })
    expect(err?.retryable).toBe(false)
    expect(err?.message).toBe(`model "m.bin": s3://${bucket}/models/absent.bin does not exist`)
    expect(await readdir(modelsDir)).toEqual([])
  })

  it('S3 down is retryable; no temp file is left', async () => {
    const down = await startS3()
    const client = down.client
    await down.close()
    const err = await new S3ModelFetcher(client, bucket, modelsDir)
      .fetch({ model: 'm.bin', bucket, key: 'models/m.bin', file: partial() }, signal())
      .catch((e: unknown) => e as ModelFetchError)
    expect(err).toBeInstanceOf(ModelFetchError)
    expect((err as ModelFetchError).retryable).toBe(true)
    expect((err as ModelFetchError).message).toMatch(/S3 unavailable fetching/)
    expect(await readdir(modelsDir)).toEqual([])
  })

  it('an aborted download removes its temp file', async () => {
    const controller = new AbortController()
    controller.abort(new Error('job cancelled'))
    await expect(
      fetcher.fetch({ model: 'm.bin', bucket, key: 'models/m.bin', file: partial() }, controller.signal),
    ).rejects.toThrow()
    expect(await readdir(modelsDir)).toEqual([])
  })
})
