/**
 * The model cache with the engines lab's real checkpoints (GBs): MODELS_REAL_FILE (default F5TTS_PRETRAIN,
 * the 1.35 GB F5-TTS checkpoint) and MODELS_REAL_DIR (default KOHYA_MODEL, the 3.2 GB tiny-sd15 Diffusers
 * folder). Each is copied into a fresh models dir, never the lab's. Timings and peak RSS are printed.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { CreateBucketCommand } from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MemoryArtifactStore } from '../../../functions/sdk/local-artifacts.ts'
import { createModelCache } from '../../../functions/sdk/models.ts'
import { S3ModelFetcher } from '../../../gpu-host/model-fetch.ts'
import { JobProcess } from '../../../gpu-host/runner.ts'
import { fixtureJob } from '../../helpers/fixture-process.ts'
import { type S3Server, startS3 } from '../../helpers/stack.ts'

const FILE = process.env.MODELS_REAL_FILE ?? process.env.F5TTS_PRETRAIN
const DIR = process.env.MODELS_REAL_DIR ?? process.env.KOHYA_MODEL
const WORKER = fileURLToPath(new URL('../../fixtures/model-cache-worker.ts', import.meta.url))

let root: string
beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'models-real-'))
})
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true })
})

const log = (msg: string) => process.stdout.write(`[models-real] ${msg}\n`)

function worker(args: Record<string, unknown>): {
  proc: ChildProcess
  done: Promise<Record<string, unknown>>
} {
  const proc = spawn(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify(args)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  proc.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  return {
    proc,
    done: new Promise((resolve, reject) =>
      proc.on('exit', () => {
        try {
          resolve(JSON.parse(out.trim().split('\n').at(-1) ?? ''))
        } catch {
          reject(new Error(`worker printed no result: ${out}`))
        }
      }),
    ),
  }
}

describe.skipIf(!FILE)(`a real checkpoint file (${FILE ?? 'set MODELS_REAL_FILE or F5TTS_PRETRAIN'})`, () => {
  let sha256 = ''
  let size = 0
  beforeAll(async () => {
    size = (await stat(FILE as string)).size
    const t = Date.now()
    // An independent reference: coreutils, not our hashing.
    sha256 = execFileSync('sha256sum', [FILE as string], { encoding: 'utf8' }).split(' ')[0] ?? ''
    log(`sha256sum of ${size} bytes: ${Date.now() - t} ms`)
  })

  it('two processes ensure it at once from its path: one copy, verified, streamed (bounded RSS)', async () => {
    const modelsDir = path.join(root, 'file-models')
    await mkdir(modelsDir)
    const args = { modelsDir, name: 'f5tts/pretrained.safetensors', source: FILE, sha256 }
    const t = Date.now()
    const [a, b] = await Promise.all([worker(args).done, worker(args).done])
    const ms = Date.now() - t
    log(
      `two concurrent ensure() of ${(size / 1e9).toFixed(2)} GB: ${ms} ms; results ${JSON.stringify([a, b])}`,
    )
    const outcomes = [a, b].flatMap((r) => (r.outcomes as { outcome: string; bytes: number }[]) ?? [])
    expect(outcomes.map((o) => o.outcome).sort()).toEqual(['hit', 'miss'])
    expect(outcomes.reduce((n, o) => n + o.bytes, 0)).toBe(size)
    const target = path.join(modelsDir, 'f5tts/pretrained.safetensors')
    expect((await stat(target)).size).toBe(size)
    expect(execFileSync('sha256sum', [target], { encoding: 'utf8' }).split(' ')[0]).toBe(sha256)
    // Streamed: far less than the file in memory.
    for (const r of [a, b]) expect(r.maxRssMb as number).toBeLessThan(400)
    expect((await readdir(path.join(modelsDir, 'f5tts'))).sort()).toEqual([
      '.pretrained.safetensors.sha256',
      'pretrained.safetensors',
    ])
    // A later ensure with the sha is a hit from the checksum record: no 1.35 GB hash again.
    const t2 = Date.now()
    await createModelCache(modelsDir).ensure('f5tts/pretrained.safetensors', {
      source: FILE as string,
      sha256,
    })
    log(`hit with sha256 (checksum record): ${Date.now() - t2} ms`)
    expect(Date.now() - t2).toBeLessThan(1000)
  })

  it('through the host from S3 (s3rver), over IPC, into a fresh models dir', async () => {
    const s3: S3Server = await startS3()
    try {
      await s3.client.send(new CreateBucketCommand({ Bucket: 'models-real' }))
      const t0 = Date.now()
      await new Upload({
        client: s3.client,
        params: {
          Bucket: 'models-real',
          Key: 'models/pretrained.safetensors',
          Body: createReadStream(FILE as string),
        },
        partSize: 64 * 1024 * 1024,
        queueSize: 2,
      }).done()
      log(`upload to s3rver: ${Date.now() - t0} ms`)
      const modelsDir = path.join(root, 's3-models')
      await mkdir(modelsDir)
      const outcomes: string[] = []
      const rssBefore = process.memoryUsage().rss
      let rssPeak = rssBefore
      const sampler = setInterval(() => {
        rssPeak = Math.max(rssPeak, process.memoryUsage().rss)
      }, 100)
      const t = Date.now()
      const outcome = await new JobProcess(
        fixtureJob('ensures-model', {
          jobId: 'real-1',
          root,
          modelsDir,
          params: {
            model: 'pretrained.safetensors',
            source: 's3://models-real/models/pretrained.safetensors',
            sha256,
          },
          artifacts: new MemoryArtifactStore('loras/real-1'),
          models: new S3ModelFetcher(s3.client, 'models-real', modelsDir),
          onModelCache: (m, o, bytes) => outcomes.push(`${m} ${o} ${bytes}`),
          timeoutMs: 10 * 60_000,
        }),
      ).done
      clearInterval(sampler)
      const ms = Date.now() - t
      log(
        `S3 -> host -> models dir, ${(size / 1e9).toFixed(2)} GB: ${ms} ms (${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s); ` +
          `host-side RSS growth ${((rssPeak - rssBefore) / 1e6).toFixed(0)} MB (s3rver in this process too)`,
      )
      expect(outcome).toMatchObject({ ok: true, result: { size } })
      expect(outcomes).toEqual([`pretrained.safetensors miss ${size}`])
      expect(
        execFileSync('sha256sum', [path.join(modelsDir, 'pretrained.safetensors')], {
          encoding: 'utf8',
        }).split(' ')[0],
      ).toBe(sha256)
    } finally {
      await s3.close()
    }
  })
})

describe.skipIf(!DIR)(`a real Diffusers folder (${DIR ?? 'set MODELS_REAL_DIR or KOHYA_MODEL'})`, () => {
  it('is copied whole, once, and appears only complete', async () => {
    const modelsDir = path.join(root, 'dir-models')
    await mkdir(modelsDir)
    const outcomes: { outcome: string; bytes: number }[] = []
    const cache = createModelCache(modelsDir, {
      onOutcome: (_m, outcome, bytes) => outcomes.push({ outcome, bytes }),
    })
    const t = Date.now()
    const target = await cache.ensure('diffusers/tiny-sd15', DIR as string)
    log(`folder copy: ${Date.now() - t} ms, ${outcomes[0]?.bytes} bytes`)
    const du = (d: string) =>
      Number(execFileSync('du', ['-sb', '--apparent-size', d], { encoding: 'utf8' }).split('\t')[0])
    expect(outcomes).toEqual([{ outcome: 'miss', bytes: expect.any(Number) }])
    expect(execFileSync('diff', ['-r', DIR as string, target], { encoding: 'utf8' })).toBe('')
    log(`du source ${du(DIR as string)} target ${du(target)}`)
    expect(await readdir(path.join(modelsDir, 'diffusers'))).toEqual(['tiny-sd15'])
    await cache.ensure('diffusers/tiny-sd15', DIR as string)
    expect(outcomes.map((o) => o.outcome)).toEqual(['miss', 'hit'])
  })
})
