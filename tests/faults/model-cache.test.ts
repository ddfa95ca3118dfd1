import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type HostProcess, startHostProcess } from '../helpers/host-process.ts'
import { addFixtureJob, type Stack, startStack } from '../helpers/stack.ts'

/**
 * `ctx.models.ensure` through the real stack: two GPU host processes share one MODELS_DIR (as GPU hosts
 * share the models volume), jobs run the `ensures-model` fixture, s3rver is the S3.
 */
let stack: Stack
let modelsDir: string
const hosts: HostProcess[] = []
const MODEL = 'checkpoints/tiny.safetensors'
const body = Buffer.alloc(5 * 1024 * 1024 + 3, 7)
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

beforeAll(async () => {
  stack = await startStack({ withHost: false })
  modelsDir = path.join(stack.dataDir, 'models')
  await stack.s3.client.send(
    new PutObjectCommand({ Bucket: stack.config.s3.bucket, Key: 'models/tiny.safetensors', Body: body }),
  )
  for (const name of ['a', 'b'])
    hosts.push(await startHostProcess(stack, name, { MODELS_DIR: modelsDir, GPU_SLOTS: '1' }))
})
afterAll(async () => {
  for (const h of hosts) if (h.proc.exitCode === null) h.proc.kill('SIGKILL')
  await stack?.close()
})

/** The value of `name{model="..."}` on a host's /metrics, or undefined when it has no such series. */
async function metric(host: HostProcess, name: string, model: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${host.metricsPort}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${name}{model="${model}"}`))
  return line === undefined ? undefined : Number(line.split(' ').at(-1))
}

const sum = async (name: string, model: string) =>
  (await Promise.all(hosts.map((h) => metric(h, name, model)))).reduce<number>((n, v) => n + (v ?? 0), 0)

describe('ctx.models.ensure on two GPU hosts sharing MODELS_DIR', () => {
  it('an s3:// model is fetched once by the hosts, bytes counted once; the other job hits', async () => {
    const params = {
      model: MODEL,
      source: `s3://${stack.config.s3.bucket}/models/tiny.safetensors`,
      sha256: sha(body),
      // Each host has one slot, held a while: the second job runs on the other host.
      holdMs: 1500,
    }
    const jobs = [
      await addFixtureJob(stack, 'ensures-model', {}, params),
      await addFixtureJob(stack, 'ensures-model', {}, params),
    ]
    const done = await Promise.all(jobs.map((id) => stack.waitStatus(id, ['completed', 'failed'], 60_000)))
    for (const d of done)
      expect(d).toMatchObject({ status: 'completed', result: { file: MODEL, size: body.length } })
    const ran = await Promise.all(jobs.map(async (id) => (await stack.attempts(id))[0]?.host))
    expect(new Set(ran)).toEqual(new Set([`${stack.prefix}-a`, `${stack.prefix}-b`]))

    expect(await sum('gpu_worker_model_cache_misses_total', MODEL)).toBe(1)
    expect(await sum('gpu_worker_model_cache_hits_total', MODEL)).toBe(1)
    expect(await sum('gpu_worker_model_cache_fetched_bytes_total', MODEL)).toBe(body.length)
    // The host whose job fetched counts the bytes; the other counts the hit.
    const fetcher = (await metric(hosts[0] as HostProcess, 'gpu_worker_model_cache_misses_total', MODEL))
      ? 0
      : 1
    expect(
      await metric(hosts[fetcher] as HostProcess, 'gpu_worker_model_cache_fetched_bytes_total', MODEL),
    ).toBe(body.length)
    expect(await metric(hosts[1 - fetcher] as HostProcess, 'gpu_worker_model_cache_hits_total', MODEL)).toBe(
      1,
    )

    expect((await readFile(path.join(modelsDir, MODEL))).equals(body)).toBe(true)
    // No lock, no temp file: the model and its checksum record.
    expect(await readdir(path.join(modelsDir, 'checkpoints'))).toEqual([
      '.tiny.safetensors.sha256',
      'tiny.safetensors',
    ])
  })

  it('a sha256 mismatch fails the job at once (not retried), naming the model, and keeps no file', async () => {
    const jobId = await addFixtureJob(
      stack,
      'ensures-model',
      { maxAttempts: 3 },
      {
        model: 'checkpoints/wrong.safetensors',
        source: `s3://${stack.config.s3.bucket}/models/tiny.safetensors`,
        sha256: sha('something else'),
      },
    )
    const body2 = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    expect(body2).toMatchObject({ status: 'failed', attempt: 1, error: { code: 'MODEL_CHECKSUM_MISMATCH' } })
    expect(body2.error?.message).toMatch(/model "checkpoints\/wrong.safetensors": sha256 mismatch/)
    expect((await readdir(path.join(modelsDir, 'checkpoints'))).filter((f) => f.includes('wrong'))).toEqual(
      [],
    )
    // Fetched, so counted: the bytes moved.
    expect(await sum('gpu_worker_model_cache_fetched_bytes_total', 'checkpoints/wrong.safetensors')).toBe(
      body.length,
    )
  })

  it("refuses a bucket other than the host's own: the job fails at once, nothing is fetched", async () => {
    await stack.s3.client.send(new CreateBucketCommand({ Bucket: `${stack.config.s3.bucket}-x` }))
    await stack.s3.client.send(
      new PutObjectCommand({ Bucket: `${stack.config.s3.bucket}-x`, Key: 'models/x.bin', Body: 'x' }),
    )
    const jobId = await addFixtureJob(
      stack,
      'ensures-model',
      { maxAttempts: 3 },
      { model: 'x.bin', source: `s3://${stack.config.s3.bucket}-x/models/x.bin` },
    )
    const failed = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    expect(failed).toMatchObject({ status: 'failed', attempt: 1 })
    expect(failed.error?.message).toMatch(
      /model "x.bin": s3:\/\/.* refused: models are fetched only from this host's bucket/,
    )
    expect((await readdir(modelsDir)).filter((f) => f.includes('x.bin'))).toEqual([])
  })
})
