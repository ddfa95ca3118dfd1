/**
 * `ctx.models.ensure` with an s3:// source through the real runner: the job process asks over IPC, the
 * host side (S3ModelFetcher on s3rver) streams into the models dir. A throttling TCP proxy in front of
 * s3rver makes the download slow enough to cancel it midway.
 */

import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MemoryArtifactStore } from '../functions/sdk/local-artifacts.ts'
import { createS3Client } from '../schema/clients.ts'
import { fixtureJob } from '../tests/helpers/fixture-process.ts'
import { type S3Server, startS3 } from '../tests/helpers/stack.ts'
import { S3ModelFetcher } from './model-fetch.ts'
import { JobProcess } from './runner.ts'

const bucket = 'runner-models'
const SIZE = 4 * 1024 * 1024
let s3: S3Server
let slow: { port: number; close(): Promise<void> }
let root: string

/** Passes S3's answers on at about 16 KiB every 10 ms (~1.6 MB/s), so a 4 MiB download takes seconds. */
async function throttlingProxy(targetPort: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.on('data', (chunk: Buffer) => {
      upstream.pause()
      let offset = 0
      const next = () => {
        if (client.destroyed) return
        if (offset >= chunk.length) return void upstream.resume()
        client.write(chunk.subarray(offset, offset + 16 * 1024))
        offset += 16 * 1024
        setTimeout(next, 10)
      }
      next()
    })
    upstream.on('end', () => client.end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

beforeAll(async () => {
  s3 = await startS3()
  await s3.client.send(new CreateBucketCommand({ Bucket: bucket }))
  await s3.client.send(
    new PutObjectCommand({ Bucket: bucket, Key: 'models/big.bin', Body: Buffer.alloc(SIZE, 1) }),
  )
  slow = await throttlingProxy(Number(new URL(s3.endpoint).port))
})
afterAll(async () => {
  await slow?.close()
  await s3?.close()
})

async function job(withFetcher: boolean) {
  root = await mkdtemp(path.join(tmpdir(), 'runner-models-'))
  const modelsDir = path.join(root, 'models')
  await mkdir(modelsDir)
  const client = createS3Client({
    endpoint: `http://127.0.0.1:${slow.port}`,
    region: 'us-east-1',
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
  })
  const outcomes: string[] = []
  const proc = new JobProcess(
    fixtureJob('ensures-model', {
      jobId: 'j1',
      root,
      modelsDir,
      params: { model: 'big.bin', source: `s3://${bucket}/models/big.bin` },
      artifacts: new MemoryArtifactStore('loras/j1'),
      ...(withFetcher ? { models: new S3ModelFetcher(client, bucket, modelsDir) } : {}),
      onModelCache: (model, outcome, bytes) => outcomes.push(`${model} ${outcome} ${bytes}`),
      timeoutMs: 60_000,
    }),
  )
  return { proc, modelsDir, outcomes, done: proc.done.finally(() => client.destroy()) }
}

describe('s3:// models through the runner', () => {
  it('the host streams the object for the job process; the hit/miss reaches the host', async () => {
    const { done, modelsDir, outcomes } = await job(true)
    const outcome = await done
    expect(outcome).toMatchObject({ ok: true, result: { file: 'big.bin', size: SIZE } })
    expect(outcomes).toEqual([`big.bin miss ${SIZE}`])
    expect((await readdir(modelsDir)).sort()).toEqual(['.big.bin.sha256', 'big.bin'])
    await rm(root, { recursive: true, force: true })
  })

  it('a cancel mid-download stops the download and leaves nothing: no model, no temp file, no lock', async () => {
    const { proc, done, modelsDir, outcomes } = await job(true)
    // Wait until some bytes are on disk under a temp name.
    for (let i = 0; i < 500; i++) {
      const partial = (await readdir(modelsDir)).find((f) => f.endsWith('.partial'))
      if (partial && ((await stat(path.join(modelsDir, partial)).catch(() => null))?.size ?? 0) > 0) break
      await sleep(20)
    }
    const seen = await readdir(modelsDir)
    expect(seen).toContain('.big.bin.lock')
    expect(seen.some((f) => f.endsWith('.partial'))).toBe(true)
    const abortedAt = Date.now()
    proc.abort('cancelled')
    const outcome = await done
    // The rest of the download (~2.5 s at this rate) is not waited for: the host stopped it.
    expect(Date.now() - abortedAt).toBeLessThan(2000)
    expect(outcome).toMatchObject({ ok: false, error: { reason: 'cancelled' } })
    expect(await readdir(modelsDir)).toEqual([])
    expect(outcomes).toEqual([])
    await rm(root, { recursive: true, force: true })
  })

  it('a runner with no S3 (npm run job) refuses s3:// sources at once, not retryable', async () => {
    const { done, modelsDir } = await job(false)
    const outcome = await done
    expect(outcome).toMatchObject({ ok: false, error: { retryable: false, code: 'MODEL_SOURCE_REFUSED' } })
    expect(outcome.ok || outcome.error.message).toMatch(/model "big.bin": this runner has no S3/)
    expect(await readdir(modelsDir)).toEqual([])
    await rm(root, { recursive: true, force: true })
  })
})
