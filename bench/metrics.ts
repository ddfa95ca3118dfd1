/**
 * metrics (observability): time to render the GPU host's `/metrics` with a realistic number of series
 * (3 job types x 6 statuses, 4 GPUs, the process metrics), using the real HostMetrics class, against
 * prom-client rendering the same series from a plain Registry, in the same run.
 */

import type { MetricValue } from 'prom-client'
import {
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type MetricObjectWithValues,
  Registry,
} from 'prom-client'
import type { Slot } from '../gpu-host/gpus.ts'
import { HostMetrics, QUEUE_STATES } from '../gpu-host/metrics.ts'
import { ERROR_REASONS, JOB_STATUSES } from '../schema/common.ts'
import { JOB_TYPES } from '../schema/params/index.ts'
import { type BenchResult, machineLoad, printTable, ratio, rounded, type Summary, summarize } from './lib.ts'

const RENDERS = Number(process.env.BENCH_METRICS_RENDERS ?? 2000)
const WARMUP = 200
const GPUS = 4
const SCRAPE_INTERVAL_S = 15

/** The real HostMetrics, filled as a host with 4 GPUs that has run jobs of every type and outcome would. */
function populatedHostMetrics(): HostMetrics {
  const running = JOB_TYPES.flatMap((type, i) =>
    i === 0
      ? [{ type, progress: 10, lastProgressAt: Date.now() }]
      : [{ type, progress: 50 + i, lastProgressAt: Date.now() - 1000 }],
  )
  running.push({ type: JOB_TYPES[0], progress: 80, lastProgressAt: Date.now() })
  const m = new HostMetrics({ version: 'bench', running: () => running })
  const slots: Slot[] = Array.from({ length: GPUS }, (_, id) => ({
    id,
    gpu: {
      index: id,
      uuid: `GPU-0000000${id}-aaaa-bbbb-cccc-${String(id).padStart(12, '0')}`,
      name: 'NVIDIA H100 80GB HBM3',
      vramTotalMb: 81_559,
    },
    cudaVisibleDevices: String(id),
    jobs: 0,
    busy: false,
  }))
  m.initSlots(slots)
  for (const slot of slots) {
    m.setUsage(slot, {
      totalMb: 81_559,
      otherMb: 0,
      reservedMb: 12_000,
      freeMb: 69_559,
      jobs: 1,
      exclusive: false,
    })
    m.memUsed.set(m.gpuLabels(slot), 40e9 + slot.id * 1e9)
    m.memTotal.set(m.gpuLabels(slot), 85_520_809_984)
  }
  for (const type of JOB_TYPES) {
    for (const status of JOB_STATUSES) {
      m.jobsTotal.inc({ type, status }, 17)
      for (const s of [3, 42, 900]) m.jobDuration.observe({ type, status }, s)
    }
    for (const reason of ERROR_REASONS) m.jobErrors.inc({ type, reason }, 2)
    for (const c of [m.attempts, m.retries, m.cancellations, m.timeouts]) c.inc({ type }, 5)
    for (const s of [0.2, 3, 40]) m.queueWait.observe({ type }, s)
  }
  for (const state of QUEUE_STATES) m.queueJobs.set({ state }, 3)
  m.oldestWaiting.set(12)
  for (const s of [0.3, 0.6, 0.7]) m.subprocessStart.observe(s)
  return m
}

/**
 * A plain Registry with the same gpu_worker_* families, label names and series (same histogram buckets),
 * as bare prom-client metrics: no collect() callbacks. Default process metrics only if asked.
 */
async function bareRegistry(source: Registry, withDefaults: boolean): Promise<Registry> {
  const reg = new Registry()
  if (withDefaults) collectDefaultMetrics({ register: reg })
  const families = (await source.getMetricsAsJSON()) as MetricObjectWithValues<MetricValue<string>>[]
  for (const f of families) {
    if (!f.name.startsWith('gpu_worker_')) continue
    const values = f.values
    const labelNames = [...new Set(values.flatMap((v) => Object.keys(v.labels)))].filter((l) => l !== 'le')
    const registers = [reg]
    const key = (labels: Record<string, unknown>) =>
      JSON.stringify(Object.fromEntries(Object.entries(labels).filter(([k]) => k !== 'le')))
    const type = String(f.type)
    if (type === 'histogram') {
      const buckets = [
        ...new Set(
          values
            .filter((v) => v.labels.le !== undefined && v.labels.le !== '+Inf')
            .map((v) => Number(v.labels.le)),
        ),
      ]
      const h = new Histogram({ name: f.name, help: f.help, labelNames, buckets, registers })
      const seen = new Set<string>()
      for (const v of values) {
        const k = key(v.labels)
        if (seen.has(k)) continue
        seen.add(k)
        const labels = JSON.parse(k) as Record<string, string>
        for (const s of [0.3, 42, 900]) h.observe(labels, s)
      }
    } else if (type === 'counter') {
      const c = new Counter({ name: f.name, help: f.help, labelNames, registers })
      for (const v of values) c.inc(v.labels as Record<string, string>, v.value)
    } else {
      const g = new Gauge({ name: f.name, help: f.help, labelNames, registers })
      for (const v of values) g.set(v.labels as Record<string, string>, v.value)
    }
  }
  return reg
}

const seriesOf = (text: string): number => text.split('\n').filter((l) => l && !l.startsWith('#')).length

interface Measured {
  wallMs: number[]
  cpuMs: number[]
}

export async function metrics(): Promise<BenchResult> {
  const host = populatedHostMetrics()
  const variants: { key: string; label: string; registry: Registry }[] = [
    { key: 'ours', label: 'ours: HostMetrics (real class, with process metrics)', registry: host.registry },
    {
      key: 'bareWithDefaults',
      label: 'baseline: plain Registry, same series + process metrics',
      registry: await bareRegistry(host.registry, true),
    },
    {
      key: 'bareNoDefaults',
      label: 'baseline: plain Registry, same series, no process metrics',
      registry: await bareRegistry(host.registry, false),
    },
  ]
  const texts = await Promise.all(variants.map((v) => v.registry.metrics()))
  const series = texts.map(seriesOf)
  const gpuWorkerSeries = texts.map((t) =>
    seriesOf(
      t
        .split('\n')
        .filter((l) => l.includes('gpu_worker_'))
        .join('\n'),
    ),
  )
  console.log(
    `metrics: ${RENDERS} renders of each registry, interleaved; series (gpu_worker_*): ${variants.map((v, i) => `${v.key} ${series[i]} (${gpuWorkerSeries[i]})`).join(', ')}`,
  )

  const machine = machineLoad()
  const measured: Measured[] = variants.map(() => ({ wallMs: [], cpuMs: [] }))
  for (let i = 0; i < WARMUP + RENDERS; i++) {
    for (const [k, v] of variants.entries()) {
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      await v.registry.metrics()
      const wall = performance.now() - t0
      const cpu = process.cpuUsage(cpu0)
      if (i < WARMUP) continue
      measured[k]?.wallMs.push(wall)
      measured[k]?.cpuMs.push((cpu.user + cpu.system) / 1000)
    }
  }

  const busy = machine.busyPercent()
  const stats = variants.map((v, k) => {
    const m = measured[k] as Measured
    const wall = summarize(m.wallMs)
    const cpu = summarize(m.cpuMs)
    return {
      key: v.key,
      label: v.label,
      series: series[k] ?? 0,
      gpuWorkerSeries: gpuWorkerSeries[k] ?? 0,
      bytes: Buffer.byteLength(texts[k] ?? ''),
      wall,
      cpu,
      /** CPU of one scrape every 15 s, as a share of one core. */
      cpuSharePct: (cpu.mean / (SCRAPE_INTERVAL_S * 1000)) * 100,
    }
  })
  const [ours, withDefaults, noDefaults] = stats as [(typeof stats)[0], (typeof stats)[0], (typeof stats)[0]]
  printTable('metrics: one /metrics render (registry.metrics()), ms', [
    ['registry', 'series', 'bytes', 'wall mean', 'wall p99', 'cpu mean', 'cpu p99', 'cpu share @15s'],
    ...stats.map((s) => [
      s.label,
      String(s.series),
      String(s.bytes),
      s.wall.mean.toFixed(3),
      s.wall.p99.toFixed(3),
      s.cpu.mean.toFixed(3),
      s.cpu.p99.toFixed(3),
      `${s.cpuSharePct.toFixed(4)}%`,
    ]),
  ])
  const ratios = {
    oursOverBareWithDefaults: {
      wallMean: ratio(ours.wall.mean, withDefaults.wall.mean),
      wallP99: ratio(ours.wall.p99, withDefaults.wall.p99),
      cpuMean: ratio(ours.cpu.mean, withDefaults.cpu.mean),
    },
    oursOverBareNoDefaults: {
      wallMean: ratio(ours.wall.mean, noDefaults.wall.mean),
      wallP99: ratio(ours.wall.p99, noDefaults.wall.p99),
      cpuMean: ratio(ours.cpu.mean, noDefaults.cpu.mean),
    },
  }
  printTable('metrics: ratios', [
    ['ratio', 'wall mean', 'wall p99', 'cpu mean'],
    ['ours / bare + process metrics (fair)', ...Object.values(ratios.oursOverBareWithDefaults)],
    ['ours / bare, no process metrics', ...Object.values(ratios.oursOverBareNoDefaults)],
  ])
  console.log(
    `machine: load average ${machine.loadAverage1mAtStart} at start; all cores ${busy}% busy during the renders`,
  )
  console.log(
    `\nCPU share of one scrape every ${SCRAPE_INTERVAL_S} s: ${ours.cpuSharePct.toFixed(4)}% of one core (goal < 1%)`,
  )

  const r = (x: Summary) => rounded(x, 4)
  return {
    name: 'metrics',
    issue: 'observability: /metrics render cost',
    parameters: {
      renders: RENDERS,
      warmupRendersDiscarded: WARMUP,
      jobTypes: JOB_TYPES.length,
      statuses: JOB_STATUSES.length,
      gpus: GPUS,
      runningJobs: 4,
      scrapeIntervalSeconds: SCRAPE_INTERVAL_S,
    },
    notes: [
      'Ours: the real HostMetrics (gpu-host/metrics.ts) with 4 fake GPU slots, every jobs_total/job_duration series for 3 types x 6 statuses, error reasons, per-type counters, queue states, and the default process metrics it always registers; its collect() callbacks see 4 running jobs.',
      'Baseline: a plain prom-client Registry holding the same gpu_worker_* families, label names, histogram buckets and series (cloned from ours), as bare Counter/Gauge/Histogram without collect() callbacks; once with collectDefaultMetrics() (the fair comparison: ours always has them) and once without.',
      'Render = await registry.metrics() in this process; wall time includes the event-loop-lag default metric, which waits for a setImmediate. CPU = process.cpuUsage() delta around each render. Renders of the three registries are interleaved.',
    ],
    results: Object.fromEntries([
      ...stats.map((s) => [
        s.key,
        {
          series: s.series,
          gpuWorkerSeries: s.gpuWorkerSeries,
          bytes: s.bytes,
          wallMs: r(s.wall),
          cpuMs: r(s.cpu),
          cpuSharePctAt15s: Math.round(s.cpuSharePct * 10_000) / 10_000,
        },
      ]),
      [
        'machineLoad',
        { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercentDuringRenders: busy },
      ],
      [
        'ratios',
        {
          oursOverBareWithDefaults: rounded(ratios.oursOverBareWithDefaults, 3),
          oursOverBareNoDefaults: rounded(ratios.oursOverBareNoDefaults, 3),
        },
      ],
    ]),
  }
}
