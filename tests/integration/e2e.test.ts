import { createHash } from 'node:crypto'
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3'
import { asc, eq } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import type { JobStatusBody } from '../../schema/api.ts'
import { jobMetrics } from '../../schema/db/tables.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import type { JobType } from '../../schema/params/index.ts'
import { type Stack, startStack } from '../helpers/stack.ts'

let stack: Stack
beforeAll(async () => {
  stack = await startStack()
})
afterAll(async () => {
  await stack?.close()
})

/** Follows a job over a real WebSocket until a terminal event. */
/** A job's events over the WebSocket until its end; `after` replays from there (0: from its first). */
function follow(jobId: string, after?: number): Promise<ProgressEvent[]> {
  return new Promise((resolve, reject) => {
    const events: ProgressEvent[] = []
    const base = `${stack.gateway.url.replace('http', 'ws')}/ws`
    const ws = new WebSocket(after === undefined ? `${base}?jobId=${jobId}` : base)
    if (after !== undefined) ws.on('open', () => ws.send(JSON.stringify({ op: 'subscribe', jobId, after })))
    const timer = setTimeout(() => reject(new Error(`no terminal event; got ${events.length}`)), 30_000)
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString()) as ProgressEvent & { op?: string }
      if (msg.op) return
      events.push(msg)
      if (['completed', 'failed', 'cancelled'].includes(msg.status)) {
        clearTimeout(timer)
        ws.close()
        resolve(events)
      }
    })
    ws.on('error', reject)
  })
}

const cases: { type: JobType; params: Record<string, unknown>; prefix: string; file: string }[] = [
  {
    type: 'train_lora',
    params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 2, rank: 4 },
    prefix: 'loras',
    file: 'lora.safetensors',
  },
  {
    type: 'train_voice',
    params: { speakerName: 'ann', datasetPath: 'ds', epochs: 2 },
    prefix: 'voices',
    file: 'voice.wav',
  },
  {
    type: 'render_video',
    params: { inputs: { prompt: 'a cat' }, width: 64, height: 48, frames: 12, fps: 6 },
    prefix: 'videos',
    file: 'video.avi',
  },
]

describe.each(cases)('$type end to end', ({ type, params, prefix, file }) => {
  it('queues, streams every event in order, completes with artifacts, manifest and metrics', async () => {
    const submitted = await stack.post({ type, params })
    expect(submitted.status).toBe(202)
    const jobId = submitted.json.jobId as string
    expect(submitted.json).toMatchObject({
      status: 'queued',
      statusUrl: `/api/status/${jobId}`,
      streamUrl: `/ws?jobId=${jobId}`,
    })

    const events = await follow(jobId)
    // The current state first, then every event: seq rises by one, no gap, no duplicate.
    for (let i = 1; i < events.length; i++) expect(events[i]?.seq).toBe((events[i - 1]?.seq ?? 0) + 1)
    const last = events.at(-1)
    expect(last).toMatchObject({ jobId, status: 'completed', progress: 100, type, attempt: 1 })
    expect(Object.keys(last ?? {}).slice(0, 5)).toEqual([
      'jobId',
      'status',
      'progress',
      'message',
      'timestamp',
    ])
    expect(events.some((e) => e.status === 'running' && e.progress > 0 && e.progress < 100)).toBe(true)
    const progress = events.filter((e) => e.status === 'running').map((e) => e.progress)
    expect(progress).toEqual([...progress].sort((a, b) => a - b))

    const res = await fetch(stack.url(`/api/status/${jobId}`))
    expect(res.status).toBe(200)
    const body = (await res.json()) as JobStatusBody
    expect(body).toMatchObject({ jobId, type, status: 'completed', progress: 100, attempt: 1 })
    expect(body.result).toMatchObject({ engine: 'simulate', simulated: true })
    expect(Date.parse(body.createdAt)).toBeLessThanOrEqual(Date.parse(body.startedAt ?? ''))
    expect(Date.parse(body.startedAt ?? '')).toBeLessThanOrEqual(Date.parse(body.finishedAt ?? ''))
    const artifact = body.artifacts.find((a) => a.path === file)
    expect(artifact).toMatchObject({
      key: `${prefix}/${jobId}/${file}`,
      url: `/api/jobs/${jobId}/artifacts/${file}`,
    })

    // In the bucket: the files and the manifest, which lists exactly them with matching checksums.
    const listed = await stack.s3.client.send(
      new ListObjectsV2Command({ Bucket: stack.config.s3.bucket, Prefix: `${prefix}/${jobId}/` }),
    )
    const keys = (listed.Contents ?? []).map((o) => o.Key).sort()
    expect(keys).toEqual([...body.artifacts.map((a) => a.key), `${prefix}/${jobId}/manifest.json`].sort())
    const manifestObj = await stack.s3.client.send(
      new GetObjectCommand({ Bucket: stack.config.s3.bucket, Key: `${prefix}/${jobId}/manifest.json` }),
    )
    const manifest = JSON.parse(await manifestObj.Body!.transformToString()) as {
      files: { key: string; sha256: string; size: number }[]
    }
    expect(manifest.files.map((f) => f.key).sort()).toEqual(body.artifacts.map((a) => a.key).sort())
    const fileObj = await stack.s3.client.send(
      new GetObjectCommand({ Bucket: stack.config.s3.bucket, Key: artifact!.key }),
    )
    const bytes = Buffer.from(await fileObj.Body!.transformToByteArray())
    expect(bytes.length).toBe(artifact!.size)
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(artifact!.sha256)
    expect(manifestObj.LastModified!.getTime()).toBeGreaterThanOrEqual(fileObj.LastModified!.getTime())

    // Download through the gateway, whole and by range.
    const download = await fetch(stack.url(artifact!.url))
    expect(download.status).toBe(200)
    expect(Buffer.from(await download.arrayBuffer()).equals(bytes)).toBe(true)
    const ranged = await fetch(stack.url(artifact!.url), { headers: { range: 'bytes=0-7' } })
    expect(ranged.status).toBe(206)
    expect(Buffer.from(await ranged.arrayBuffer()).equals(bytes.subarray(0, 8))).toBe(true)

    const metrics = await (await fetch(`http://127.0.0.1:${stack.hostPort}/metrics`)).text()
    expect(metrics).toMatch(new RegExp(`gpu_worker_jobs_total\\{type="${type}",status="completed"\\} [1-9]`))
    expect(metrics).toMatch(
      new RegExp(`gpu_worker_job_duration_seconds_count\\{type="${type}",status="completed"\\} [1-9]`),
    )
    expect(metrics).toContain('gpu_worker_job_errors_total{')
    expect(metrics).toContain('gpu_worker_progress_percent')
    expect(metrics).toMatch(/gpu_worker_gpu_busy\{gpu="0",UUID="",Hostname="[^"]+"\} 0/)
  })
})

describe('late subscribers and replay', () => {
  it('a subscriber after the end gets the final state; after=N replays the rest', async () => {
    const { json } = await stack.post({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 1 },
    })
    const jobId = json.jobId as string
    const all = await follow(jobId)
    const final = all.at(-1)!
    const late = await follow(jobId)
    expect(late).toEqual([final])

    const replayed = await new Promise<ProgressEvent[]>((resolve, reject) => {
      const got: ProgressEvent[] = []
      const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws`)
      ws.on('open', () => ws.send(JSON.stringify({ op: 'subscribe', jobId, after: 3 })))
      ws.on('message', (data) => {
        const msg = JSON.parse(data.toString()) as ProgressEvent & { op?: string }
        if (msg.op) return
        got.push(msg)
        if (msg.seq === final.seq) {
          ws.close()
          resolve(got)
        }
      })
      ws.on('error', reject)
    })
    expect(replayed.map((e) => e.seq)).toEqual(Array.from({ length: final.seq - 3 }, (_, i) => i + 4))

    const sse = await fetch(stack.url(`/api/jobs/${jobId}/events`), {
      headers: { 'last-event-id': String(final.seq - 2) },
    })
    const text = await sse.text()
    const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))
    expect(ids).toEqual([final.seq - 1, final.seq])
  })
})

describe('other producers', () => {
  it('runs a job added to gpu-jobs by a plain BullMQ producer, creating its row', async () => {
    const jobId = `ext-${Date.now()}`
    await stack.queue.add(
      'train_voice',
      { jobId, type: 'train_voice', params: { speakerName: 'bo', datasetPath: 'ds', epochs: 1 } },
      { jobId },
    )
    const body = await stack.waitStatus(jobId, ['completed'], 30_000)
    expect(body.artifacts.map((a) => a.key)).toContain(`voices/${jobId}/voice.wav`)
  })

  it('fails an invalid queue payload at once, with the reason recorded', async () => {
    const jobId = `bad-${Date.now()}`
    await stack.queue.add(
      'train_lora',
      { jobId, type: 'train_lora', params: { baseModel: 'x', datasetPath: 'ds', epochs: 'many' } },
      { jobId },
    )
    const body = await stack.waitStatus(jobId, ['failed'], 30_000)
    expect(body.error).toMatchObject({ reason: 'invalid_params' })
    expect(body.error?.message).toContain('params.epochs')
    expect(body.attempt).toBe(1)
  })

  it('fails a queue payload with strings Postgres cannot store as invalid, not as a store error', async () => {
    const jobId = `nul-${Date.now()}`
    await stack.queue.add(
      'train_lora',
      { jobId, type: 'train_lora', params: { baseModel: 'x\u0000', datasetPath: 'ds\ud800' } },
      { jobId },
    )
    const body = await stack.waitStatus(jobId, ['failed'], 30_000)
    expect(body.error).toMatchObject({ reason: 'invalid_params' })
    expect(body.params).toEqual({})
  })
})

describe('metrics on progress', () => {
  it("a training job's progress events carry its loss (as its message shows it), and job_metrics keeps every point", async () => {
    const submitted = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'ann', datasetPath: 'ds', epochs: 2 },
    })
    const jobId = submitted.json.jobId as string
    // From its first event: a short job may be well under way by the time the socket connects.
    const events = await follow(jobId, 0)
    const withMetrics = events.filter((e) => e.metrics !== undefined)
    expect(withMetrics).toHaveLength(20) // 2 epochs x 10 steps
    for (const e of withMetrics) {
      expect(e.status).toBe('running')
      expect(e.message).toContain(`loss=${e.metrics?.loss}`)
      expect(Object.keys(e)).toEqual([...Object.keys(events[0] ?? {}), 'metrics'])
    }
    // The other events keep their exact shape.
    expect(events.filter((e) => e.metrics === undefined).every((e) => !('metrics' in e))).toBe(true)
    const rows = await stack.database.db
      .select()
      .from(jobMetrics)
      .where(eq(jobMetrics.jobId, jobId))
      .orderBy(asc(jobMetrics.seq))
    expect(rows.map((r) => [r.seq, r.attempt, r.metrics])).toEqual(
      withMetrics.map((e) => [e.seq, e.attempt, e.metrics]),
    )
  })
})
