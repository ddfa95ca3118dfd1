/**
 * The dashboard and the rules against a real Prometheus scraping the real services.
 *
 * A whole stack (gateway and GPU host in this process, real Redis, Postgres and s3rver) runs jobs of all
 * three types to completed, failed (an empty dataset: not retryable), timed out (after a retry) and
 * cancelled, with one job left hanging so the "running" series exist. A real `prometheus` scrapes the
 * gateway (job `gateway`), the GPU host (job `gpu-host`) and a DCGM stand-in (job `dcgm`) every second and
 * evaluates the repository's rule files every second. Then every panel query of the Grafana dashboard and
 * every recording rule goes through Prometheus's HTTP API and must return at least one finite number.
 *
 * GPUs: this machine has none, and a GPU host without `nvidia-smi` exports virtual slots with `UUID=""`,
 * which no real dcgm-exporter series carries. So the test puts a stand-in `nvidia-smi` first on PATH that
 * reports the two H100s of the recorded dcgm-exporter sample (tests/fixtures/dcgm-sample.prom, same
 * indexes, UUIDs, names and memory), and the DCGM stand-in serves that sample unchanged. The host then
 * exports the GPU series it exports on a real GPU machine (`gpu`, `UUID`, `Hostname`, memory used/total),
 * and the rules' `on (gpu, UUID)` joins are tested with realistic labels on both sides.
 *
 * Skipped when `prometheus` is not installed (`apt-get install prometheus`, or set PROMETHEUS).
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { createServer as createNetServer } from 'node:net'
import { hostname, tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'
import {
  allRules,
  DEFAULT_VARIABLE_VALUES,
  loadDashboard,
  panelQueries,
  recordingRuleExpressions,
  ruleFiles,
  variableQuery,
} from './dashboard-queries.ts'

const PROMETHEUS = process.env.PROMETHEUS ?? 'prometheus'
const DCGM_SAMPLE = fileURLToPath(new URL('../fixtures/dcgm-sample.prom', import.meta.url))
const RENDER_VIDEO_FIXTURE = fileURLToPath(
  new URL('../fixtures/handlers/metrics-render-video.ts', import.meta.url),
)
/** The prompt that makes the render_video fixture hang (see the fixture). */
const HANG = 'hang'

function prometheusVersion(): string | undefined {
  try {
    const out = execFileSync(PROMETHEUS, ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    return out.split('\n')[0]?.trim()
  } catch {
    return undefined
  }
}

const version = prometheusVersion()
const SKIP_REASON = `skipped: "${PROMETHEUS}" not found (apt-get install prometheus, or set PROMETHEUS)`
if (!version) console.warn(`live Prometheus tests ${SKIP_REASON}`)

/**
 * Queries (panel expressions or recording rule names) that may legitimately return nothing in a run of a
 * few seconds, with the reason. Everything else must return at least one finite value.
 */
const MAY_BE_EMPTY: Readonly<Record<string, string>> = {
  // The "Firing alerts" table: the shortest `for` of any alert is 1m, longer than this whole test. The
  // alerts' pending state is checked below instead.
  'ALERTS{alertstate="firing"}': 'no alert can fire within the run (every alert has for >= 1m)',
}

/** Allowlisted by itself, or the expression of an allowlisted recording rule. */
const mayBeEmpty = (expr: string): boolean =>
  Object.hasOwn(MAY_BE_EMPTY, expr) ||
  recordingRuleExpressions().some((r) => r.expr === expr && Object.hasOwn(MAY_BE_EMPTY, r.record))

interface Sample {
  metric: Record<string, string>
  raw: string
  value: number
}

interface QueryResult {
  status: string
  error?: string
  resultType?: string
  samples: Sample[]
}

const parseValue = (raw: string): number =>
  raw === '+Inf' ? Number.POSITIVE_INFINITY : raw === '-Inf' ? Number.NEGATIVE_INFINITY : Number(raw)

interface GpuRow {
  index: string
  uuid: string
  name: string
  usedMb: number
  totalMb: number
  util: number
}

/** The GPUs of the dcgm-exporter sample, one row per `gpu` label. */
function gpusOfSample(sample: string): GpuRow[] {
  const series = new Map<string, Record<string, number>>()
  const labelsOf = new Map<string, Record<string, string>>()
  for (const line of sample.split('\n')) {
    const m = /^(DCGM_FI_\w+)\{([^}]*)\}\s+(\S+)$/.exec(line)
    if (!m) continue
    const labels = Object.fromEntries(
      [...(m[2] as string).matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1] as string, l[2] as string]),
    )
    const gpu = labels.gpu as string
    labelsOf.set(gpu, labels)
    series.set(gpu, { ...series.get(gpu), [m[1] as string]: Number(m[3]) })
  }
  return [...series.entries()].map(([gpu, v]) => {
    const labels = labelsOf.get(gpu) as Record<string, string>
    const used = v.DCGM_FI_DEV_FB_USED ?? 0
    return {
      index: gpu,
      uuid: labels.UUID as string,
      name: labels.modelName as string,
      usedMb: used,
      totalMb: used + (v.DCGM_FI_DEV_FB_FREE ?? 0) + (v.DCGM_FI_DEV_FB_RESERVED ?? 0),
      util: v.DCGM_FI_DEV_GPU_UTIL ?? 0,
    }
  })
}

/** A stand-in `nvidia-smi` answering the GPU host's two queries with the sample's GPUs. */
function fakeNvidiaSmi(gpus: GpuRow[]): string {
  const csv = gpus.map((g) => `${g.index}, ${g.uuid}, ${g.name}, ${g.usedMb}, ${g.totalMb}, ${g.util}`)
  return [
    '#!/bin/sh',
    '# Written by tests/infra/live-prometheus.test.ts: the GPUs of tests/fixtures/dcgm-sample.prom.',
    'case "$*" in',
    "  *--query-gpu=*) cat <<'CSV'",
    ...csv,
    'CSV',
    '    ;;',
    '  *--query-compute-apps=*) ;;',
    '  *) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2 ;;',
    'esac',
    '',
  ].join('\n')
}

async function freePort(): Promise<number> {
  const server = createNetServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  server.close()
  await once(server, 'close')
  return port
}

describe.skipIf(!version)(`dashboard and rules on a live Prometheus (${version ?? SKIP_REASON})`, () => {
  let scratch: string | undefined
  let stack: Stack | undefined
  let dcgm: Server | undefined
  let prometheus: ChildProcess | undefined
  let watchdog: ChildProcess | undefined
  let prometheusLog = ''
  let promUrl = ''
  let dcgmTarget = ''
  let gpus: GpuRow[] = []
  const savedPath = process.env.PATH
  const jobs: Record<string, { id: string; status: string; reason?: string; attempt: number }> = {}
  const startedAt = Date.now()

  /** Synchronous last resort: never leave a Prometheus behind, even if this worker exits abnormally. */
  const killPrometheusNow = () => {
    if (prometheus?.pid && prometheus.exitCode === null && prometheus.signalCode === null)
      prometheus.kill('SIGKILL')
  }

  async function query(expr: string): Promise<QueryResult> {
    const res = await fetch(`${promUrl}/api/v1/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ query: expr }),
    })
    const body = (await res.json()) as {
      status: string
      error?: string
      data?: { resultType: string; result: unknown }
    }
    if (body.status !== 'success' || !body.data)
      return { status: body.status, error: body.error, samples: [] }
    const { resultType, result } = body.data
    const samples: Sample[] =
      resultType === 'vector'
        ? (result as { metric: Record<string, string>; value: [number, string] }[]).map((s) => ({
            metric: s.metric,
            raw: s.value[1],
            value: parseValue(s.value[1]),
          }))
        : resultType === 'scalar'
          ? [
              {
                metric: {},
                raw: (result as [number, string])[1],
                value: parseValue((result as [number, string])[1]),
              },
            ]
          : []
    return { status: body.status, resultType, samples }
  }

  /** Why an expression fails the "success and at least one finite value" bar, or undefined. */
  async function problem(expr: string): Promise<string | undefined> {
    const result = await query(expr)
    if (result.status !== 'success') return `status ${result.status}: ${result.error}`
    if (result.resultType !== 'vector' && result.resultType !== 'scalar')
      return `unexpected result type ${result.resultType}`
    if (result.samples.length === 0 && mayBeEmpty(expr)) return undefined
    if (result.samples.length === 0) return 'empty result'
    if (!result.samples.some((s) => Number.isFinite(s.value)))
      return `no finite value: ${result.samples.map((s) => s.raw).join(', ')}`
    return undefined
  }

  const queries = panelQueries({ ...DEFAULT_VARIABLE_VALUES, __rate_interval: '10s' })
  const records = [...new Set(recordingRuleExpressions().map((r) => r.record))]
  const recordExprs = recordingRuleExpressions()

  async function submit(body: Record<string, unknown>): Promise<string> {
    const { status, json } = await (stack as Stack).post(body)
    if (status !== 202) throw new Error(`submit ${JSON.stringify(body)}: ${status} ${JSON.stringify(json)}`)
    return json.jobId as string
  }

  async function statusOf(id: string) {
    const res = await fetch((stack as Stack).url(`/api/status/${id}`))
    return (await res.json()) as {
      status: string
      progress: number
      attempt: number
      error?: { reason: string } | null
    }
  }

  async function until(id: string, statuses: string[], what = statuses.join('|')) {
    return waitFor(
      async () => {
        const body = await statusOf(id)
        return statuses.includes(body.status) ? body : undefined
      },
      45_000,
      `job ${id} to be ${what}`,
    )
  }

  /** Follows a job over a WebSocket until a terminal event (fills gateway_events_forwarded_total{ws}). */
  function followWs(id: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${(stack as Stack).gateway.url.replace('http', 'ws')}/ws?jobId=${id}`)
      ws.on('message', (data) => {
        if (/"status":"(completed|failed|cancelled)"/.test(data.toString())) {
          ws.close()
          resolve()
        }
      })
      ws.on('error', reject)
    })
  }

  /** Follows a job over Server-Sent Events until a terminal event (gateway_events_forwarded_total{sse}). */
  async function followSse(id: string): Promise<void> {
    const controller = new AbortController()
    const res = await fetch((stack as Stack).url(`/api/jobs/${id}/events`), { signal: controller.signal })
    const decoder = new TextDecoder()
    let text = ''
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      text += decoder.decode(chunk, { stream: true })
      if (/"status":"(completed|failed|cancelled)"/.test(text)) break
    }
    controller.abort()
  }

  /** One completed job per type, one non-retryable failure; followed over WebSocket and SSE. */
  async function round(n: number): Promise<void> {
    const lora = await submit({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 2, rank: 4 },
    })
    const voice = await submit({
      type: 'train_voice',
      params: { speakerName: 'ann', datasetPath: 'ds', epochs: 2 },
    })
    const video = await submit({
      type: 'render_video',
      params: { inputs: { prompt: 'a red fox in the snow' }, width: 64, height: 48, frames: 12, fps: 6 },
    })
    // datasetPath `empty` exists in the test data dir and holds no files: invalid_dataset, not retried.
    const bad = await submit({ type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'empty' } })
    await Promise.all([followWs(lora), followSse(voice)])
    for (const [name, id] of Object.entries({ lora, voice, video, bad })) {
      const body = await until(id, ['completed', 'failed', 'cancelled'])
      jobs[`${name}${n}`] = { id, status: body.status, reason: body.error?.reason, attempt: body.attempt }
    }
  }

  beforeAll(async () => {
    process.once('exit', killPrometheusNow)
    scratch = await mkdtemp(path.join(tmpdir(), 'live-prometheus-'))
    const sample = await readFile(DCGM_SAMPLE, 'utf8')
    gpus = gpusOfSample(sample)

    // The stand-in nvidia-smi, first on PATH for this worker (the GPU host runs in this process).
    const bin = path.join(scratch, 'bin')
    await mkdir(bin)
    await writeFile(path.join(bin, 'nvidia-smi'), fakeNvidiaSmi(gpus))
    await chmod(path.join(bin, 'nvidia-smi'), 0o755)
    process.env.PATH = `${bin}${path.delimiter}${savedPath ?? ''}`

    // DCGM stand-in: serves the recorded sample as dcgm-exporter does (text format 0.0.4).
    dcgm = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(sample)
    })
    dcgm.listen(0, '127.0.0.1')
    await once(dcgm, 'listening')
    dcgmTarget = `127.0.0.1:${(dcgm.address() as { port: number }).port}`

    // GPU_SLOTS is only the fall-back: with the stand-in nvidia-smi the host has one slot per sample GPU.
    stack = await startStack({
      env: { SIMULATE_STEP_MS: '5', GPU_SLOTS: '2', KILL_GRACE_SEC: '1', RETRY_BACKOFF_MS: '100' },
      handlerModules: { render_video: RENDER_VIDEO_FIXTURE },
    })

    // Prometheus: JSON is YAML, so the config needs no YAML library.
    const promPort = await freePort()
    promUrl = `http://127.0.0.1:${promPort}`
    const config = {
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      rule_files: ruleFiles(),
      scrape_configs: [
        { job_name: 'gateway', static_configs: [{ targets: [new URL(stack.gateway.url).host] }] },
        { job_name: 'gpu-host', static_configs: [{ targets: [`127.0.0.1:${stack.hostPort}`] }] },
        { job_name: 'dcgm', static_configs: [{ targets: [dcgmTarget] }] },
      ],
    }
    const configFile = path.join(scratch, 'prometheus.yml')
    await writeFile(configFile, JSON.stringify(config, null, 2))
    prometheus = spawn(
      PROMETHEUS,
      [
        `--config.file=${configFile}`,
        `--storage.tsdb.path=${path.join(scratch, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    const keepLog = (chunk: Buffer) => {
      prometheusLog = (prometheusLog + chunk.toString()).slice(-8000)
    }
    prometheus.stdout?.on('data', keepLog)
    prometheus.stderr?.on('data', keepLog)
    // Kills Prometheus within a second if this worker dies without running afterAll (SIGKILL, crash).
    watchdog = spawn(
      'sh',
      ['-c', `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; kill -KILL ${prometheus.pid}`],
      { detached: true, stdio: 'ignore' },
    )
    watchdog.unref()

    await waitFor(
      async () => {
        if (prometheus?.exitCode !== null) throw new Error(`prometheus exited: ${prometheusLog}`)
        return (await fetch(`${promUrl}/-/ready`).catch(() => undefined))?.ok
      },
      20_000,
      'Prometheus to be ready',
    )
    await waitFor(
      async () => {
        const up = await query('up')
        return up.samples.length === 3 && up.samples.every((s) => s.value === 1)
      },
      20_000,
      'all three targets to be up',
    )

    // Two rounds with a scrape between them: labelled histograms (durations, queue wait) get their series
    // on the first observation, so rate() sees an increase only from the second one on.
    await round(1)
    await sleep(2500)
    const timedOut = await submit({
      type: 'render_video',
      params: { inputs: { prompt: HANG } },
      timeoutSec: 1,
      maxAttempts: 2,
    })
    const cancelled = await submit({ type: 'render_video', params: { inputs: { prompt: HANG } } })
    await round(2)
    await until(cancelled, ['running'])
    const cancel = await fetch(stack.url(`/api/jobs/${cancelled}/cancel`), { method: 'POST' })
    expect(cancel.status).toBe(202)
    for (const [name, id] of Object.entries({ timedOut, cancelled })) {
      const body = await until(id, ['completed', 'failed', 'cancelled'])
      jobs[name] = { id, status: body.status, reason: body.error?.reason, attempt: body.attempt }
    }

    // One job stays running (and hangs) while the queries run: progress, running and per-GPU series.
    const running = await submit({
      type: 'render_video',
      params: { inputs: { prompt: HANG } },
      timeoutSec: 600,
      maxAttempts: 1,
    })
    await waitFor(
      async () => {
        const body = await statusOf(running)
        return body.status === 'running' && body.progress >= 5
      },
      20_000,
      'the hanging job to report progress',
    )
    jobs.running = { id: running, status: 'running', attempt: 1 }

    // Let scrapes and rule evaluations catch up: until every check passes, or 30 s.
    const deadline = Date.now() + 30_000
    for (;;) {
      const failing: string[] = []
      for (const expr of [...queries.map((q) => q.expr), ...records]) {
        if (await problem(expr)) failing.push(expr)
      }
      if (failing.length === 0 || Date.now() > deadline) break
      await sleep(1000)
    }
  }, 120_000)

  afterAll(async () => {
    process.env.PATH = savedPath
    if (watchdog?.pid) {
      try {
        process.kill(watchdog.pid, 'SIGKILL')
      } catch {}
    }
    if (prometheus && prometheus.exitCode === null && prometheus.signalCode === null) {
      const exited = once(prometheus, 'exit')
      prometheus.kill('SIGTERM')
      const timer = setTimeout(() => prometheus?.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
    process.removeListener('exit', killPrometheusNow)
    if (dcgm) {
      dcgm.closeAllConnections()
      await new Promise((r) => dcgm?.close(r))
    }
    await stack?.close()
    if (scratch) await rm(scratch, { recursive: true, force: true })
    console.info(`live Prometheus test: ${((Date.now() - startedAt) / 1000).toFixed(1)} s`)
  }, 60_000)

  it('ran jobs to completed, failed, timed out and cancelled', () => {
    for (const n of [1, 2]) {
      expect(jobs[`lora${n}`]?.status).toBe('completed')
      expect(jobs[`voice${n}`]?.status).toBe('completed')
      expect(jobs[`video${n}`]?.status).toBe('completed')
      expect(jobs[`bad${n}`]).toMatchObject({ status: 'failed', reason: 'invalid_dataset', attempt: 1 })
    }
    expect(jobs.timedOut).toMatchObject({ status: 'failed', reason: 'timeout', attempt: 2 })
    expect(jobs.cancelled?.status).toBe('cancelled')
  })

  it('allowlists only queries that exist', () => {
    const known = new Set([...queries.map((q) => q.expr), ...records])
    expect(Object.keys(MAY_BE_EMPTY).filter((expr) => !known.has(expr))).toEqual([])
  })

  it('scrapes the gateway, the GPU host and the DCGM stand-in', async () => {
    const up = await query('up')
    expect(Object.fromEntries(up.samples.map((s) => [s.metric.job, s.value]))).toEqual({
      gateway: 1,
      'gpu-host': 1,
      dcgm: 1,
    })
  })

  it('loads every rule file and evaluates every rule without error', async () => {
    const res = await fetch(`${promUrl}/api/v1/rules`)
    const body = (await res.json()) as {
      data: {
        groups: {
          name: string
          file: string
          rules: { name: string; health: string; lastError?: string }[]
        }[]
      }
    }
    const loaded = body.data.groups.flatMap((g) => g.rules.map((r) => r.name))
    expect(new Set(loaded)).toEqual(new Set(allRules().map((r) => r.name)))
    const unhealthy = body.data.groups
      .flatMap((g) => g.rules.map((r) => ({ group: g.name, ...r })))
      .filter((r) => r.health !== 'ok')
      .map((r) => `${r.group}/${r.name}: ${r.health} ${r.lastError ?? ''}`)
    expect(unhealthy).toEqual([])
  })

  it.each(records)('recording rule %s has produced series with a finite value', async (record) => {
    expect(await problem(record), record).toBeUndefined()
  })

  it.each(recordExprs.map((r, i) => ({ ...r, i })))(
    'recording rule expression #$i ($record) evaluates to a finite value',
    async ({ expr }) => {
      expect(await problem(expr), expr).toBeUndefined()
    },
  )

  it.each(queries.map((q) => ({ ...q, name: `panel ${q.panelId} "${q.panelTitle}" ${q.refId}` })))(
    '$name returns a finite value',
    async ({ expr }) => {
      expect(await problem(expr), expr).toBeUndefined()
    },
  )

  it('evaluates every alert expression', async () => {
    const failures: string[] = []
    for (const alert of allRules().filter((r) => r.kind === 'alert')) {
      const result = await query(alert.expr)
      if (result.status !== 'success') failures.push(`${alert.name}: ${result.error}`)
    }
    expect(failures).toEqual([])
  })

  it('joins DCGM to the GPU host on (gpu, UUID): GpuMemoryUsedWhileIdle is pending on the idle GPU', async () => {
    // The hanging job holds one GPU; the other is idle with more than 2 GiB in use in the sample. Until the
    // rule has been evaluated on a scrape taken while the job runs, both GPUs count as idle: poll.
    const expr = 'ALERTS{alertname="GpuMemoryUsedWhileIdle", alertstate="pending"}'
    const pending = await waitFor(
      async () => {
        const result = await query(expr)
        return result.samples.length === 1 && result
      },
      15_000,
      `exactly one result for ${expr}`,
    )
    const busy = await query('gpu_worker_running_jobs_per_gpu == 1')
    expect(busy.samples).toHaveLength(1)
    expect(pending.samples[0]?.metric.gpu).not.toBe(busy.samples[0]?.metric.gpu)
    expect(pending.samples[0]?.metric).toMatchObject({
      instance: `127.0.0.1:${stack?.hostPort}`,
      Hostname: hostname(),
    })
    // No target is down, so none of the *Down alerts is even pending.
    expect((await query('ALERTS{alertname=~".*Down"}')).samples).toEqual([])
  })

  it('carries the GPU host instance and Hostname onto DCGM VRAM, with the sample values', async () => {
    const used = await query('instance_gpu:dcgm_fb_used_bytes:max')
    const byGpu = Object.fromEntries(used.samples.map((s) => [s.metric.gpu, s]))
    expect(Object.keys(byGpu).sort()).toEqual(gpus.map((g) => g.index).sort())
    for (const gpu of gpus) {
      expect(byGpu[gpu.index]?.metric).toMatchObject({
        UUID: gpu.uuid,
        modelName: gpu.name,
        instance: `127.0.0.1:${stack?.hostPort}`,
        Hostname: hostname(),
      })
      expect(byGpu[gpu.index]?.value).toBe(gpu.usedMb * 1048576)
    }
  })

  it('fills every template variable (label_values queries)', async () => {
    for (const variable of loadDashboard().templating.list) {
      const m = /^label_values\((\w+),\s*(\w+)\)$/.exec(variableQuery(variable).trim())
      if (!m) continue
      const res = await fetch(
        `${promUrl}/api/v1/label/${m[2]}/values?${new URLSearchParams({ 'match[]': m[1] as string })}`,
      )
      const body = (await res.json()) as { status: string; data: string[] }
      expect(body.status).toBe('success')
      expect(body.data.length, variableQuery(variable)).toBeGreaterThan(0)
    }
  })
})
