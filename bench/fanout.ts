/**
 * fanout (gateway): 100 running jobs each emitting 20 events/s, followed by 1,000 WebSocket clients
 * (10 per job): event latency, lost events, the gateway's RSS and CPU; against a raw Redis PUBLISH ->
 * ioredis subscriber -> `ws` relay with no project code. Then `GET /api/status/:jobId` requests per second
 * against a bare node:http server answering the same JSON from memory.
 *
 * Processes: this one (orchestrator, the 1,000 WebSocket clients, the HTTP load), the gateway
 * (bench/fanout-gateway.ts), the raw baseline server (bench/fanout-raw.ts) and the event load generator
 * (bench/fanout-load.ts), each alone in its process.
 */
import type { ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { rm } from 'node:fs/promises'
import http from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { Queue } from 'bullmq'
import { like } from 'drizzle-orm'
import WebSocket from 'ws'
import { createRedis } from '../schema/clients.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { jobs } from '../schema/db/tables.ts'
import { eventLogKey, QUEUE_NAME, seqKey } from '../schema/keys.ts'
import { makeDataDir, TEST_DATABASE_URL, TEST_REDIS_URL } from '../tests/helpers/stack.ts'
import {
  ask,
  type BenchResult,
  clock,
  cpuTimes,
  forkTs,
  loadAverage1m,
  machineBusyPercent,
  nextMessage,
  printTable,
  type processStats,
  ratio,
  rounded,
  type Summary,
  stopChild,
  summarize,
} from './lib.ts'

const JOBS = 100
const CLIENTS_PER_JOB = 10
const RATE_PER_JOB = 20
const DURATION_MS = Number(process.env.BENCH_FANOUT_SECONDS ?? 25) * 1000
/** A warm-up segment per side: its events are checked for loss but left out of the latency figures. */
const WARMUP_MS = 2000
/**
 * The measured time of each side is cut into this many segments (1 s each by default), alternating ours
 * and raw, so that bursts of other work on the machine fall on both alike.
 */
const SEGMENTS = 25
const STATUS_SECONDS = Number(process.env.BENCH_STATUS_SECONDS ?? 8)
const STATUS_WARMUP_MS = 1000
const STATUS_CONCURRENCY = 50
const CONNECT_CONCURRENCY = 50

type Stats = ReturnType<typeof processStats> & { op: string }

const isOp =
  (op: string) =>
  (m: unknown): m is { op: string; url: string } =>
    typeof m === 'object' && m !== null && (m as { op?: string }).op === op

interface LoadReply {
  emitted: number
  failed: number
  startedAt: number
  endedAt: number
  finalSeq: Record<string, number>
  latenessMs: Summary
  ackedMs: number[]
}

interface FanoutOutcome {
  latencyMs: Summary
  /** Emit call -> Redis acknowledged (EVAL or PUBLISH), in the load generator. */
  emitAckMs: Summary
  perSegmentLatencyMs: { p50: number; p99: number }[]
  expected: number
  received: number
  lost: number
  duplicates: number
  outOfOrder: number
  clientsConnected: number
  connectSeconds: number
  emittedPerSecond: number
  loadGenLatenessMs: Summary
  server: {
    rssIdleMiB: number
    rssConnectedMiB: number
    rssPeakMiB: number
    rssEndMiB: number
    cpuPercentOfOneCore: number
    cpuMsPerThousandDeliveries: number
  }
}

const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10
const cpuMs = (s: Stats) => s.cpuUserMs + s.cpuSystemMs

/**
 * One side of the comparison (ours or raw): its server process and its 1,000 connected clients, with
 * what they received, accumulated over the segments in which the load generator drives this side.
 */
class Side {
  readonly n: number
  private readonly lastSeq: Int32Array
  private readonly firstSeq: Int32Array
  private readonly jobOf: Int32Array
  private readonly sockets: WebSocket[] = []
  private latencies: number[] = []
  /** Latencies are recorded only while this is set (not during the warm-up segment). */
  private recordLatency = false
  private readyCount = 0
  received = 0
  duplicates = 0
  outOfOrder = 0
  missingInGaps = 0
  segmentLatencies: Summary[] = []
  allLatencies: number[] = []
  acked: number[] = []
  cpuMs = 0
  emitted = 0
  emitSeconds = 0
  lateness: number[] = []
  peakRss = 0
  idle: Stats | undefined
  connected: Stats | undefined
  last: Stats | undefined
  connectSeconds = 0

  constructor(
    readonly mode: 'ours' | 'raw',
    private readonly wsBase: string,
    readonly server: ChildProcess,
    private readonly jobIds: string[],
  ) {
    this.n = jobIds.length * CLIENTS_PER_JOB
    this.lastSeq = new Int32Array(this.n).fill(-1)
    this.firstSeq = new Int32Array(this.n)
    this.jobOf = new Int32Array(this.n)
  }

  private connectOne(c: number, ready: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const j = c % this.jobIds.length
      this.jobOf[c] = j
      const ws = new WebSocket(`${this.wsBase}/ws?jobId=${encodeURIComponent(this.jobIds[j] as string)}`, {
        perMessageDeflate: false,
      })
      this.sockets.push(ws)
      const start = (seq: number) => {
        this.lastSeq[c] = seq
        this.firstSeq[c] = seq
        ready()
      }
      ws.on('message', (data: Buffer) => {
        const at = clock()
        const msg = JSON.parse(data.toString()) as { op?: string; seq: number; message: string }
        if (msg.op !== undefined) {
          // The raw relay sends no current state: "subscribed" is where its stream starts.
          if (msg.op === 'subscribed' && this.mode === 'raw') start(0)
          return
        }
        const last = this.lastSeq[c] as number
        if (last < 0) return start(msg.seq) // ours: the current state comes first
        this.received += 1
        if (msg.seq <= last) {
          this.duplicates += 1
          return
        }
        if (msg.seq !== last + 1) {
          this.outOfOrder += 1
          this.missingInGaps += msg.seq - last - 1
        }
        this.lastSeq[c] = msg.seq
        if (this.recordLatency) this.latencies.push(at - Number(msg.message))
      })
      ws.once('open', () => resolve())
      ws.once('error', reject)
    })
  }

  /** Connects every client and waits until each has its starting point (current state or "subscribed"). */
  async connect(): Promise<void> {
    this.idle = await ask<Stats>(this.server, 'stats')
    let onAll: () => void = () => {}
    const all = new Promise<void>((r) => (onAll = r))
    const ready = () => {
      this.readyCount += 1
      if (this.readyCount === this.n) onAll()
    }
    const t0 = clock()
    let next = 0
    await Promise.all(
      Array.from({ length: CONNECT_CONCURRENCY }, async () => {
        while (next < this.n) await this.connectOne(next++, ready)
      }),
    )
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      all,
      new Promise((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(`${this.mode}: only ${this.readyCount}/${this.n} clients got their first message`),
            ),
          60_000,
        )
      }),
    ])
    clearTimeout(timer)
    this.connectSeconds = (clock() - t0) / 1000
    this.connected = await ask<Stats>(this.server, 'stats')
    this.peakRss = this.connected.rssBytes
  }

  /** One segment: the load generator drives this side for `durationMs`, then every client drains. */
  async segment(load: ChildProcess, durationMs: number, measured: boolean, rawPrefix: string): Promise<void> {
    const before = await ask<Stats>(this.server, 'stats')
    this.peakRss = Math.max(this.peakRss, before.rssBytes)
    const received0 = this.received
    this.recordLatency = measured
    const reply = await ask<LoadReply & { op: string }>(load, 'run', {
      mode: this.mode,
      jobIds: this.jobIds,
      ratePerJob: RATE_PER_JOB,
      durationMs,
      rawPrefix,
    })
    for (const [id, seq] of Object.entries(reply.finalSeq))
      this.finalSeq.set(id, Math.max(this.finalSeq.get(id) ?? 0, seq))
    const final = (c: number) => reply.finalSeq[this.jobIds[this.jobOf[c] as number] as string] ?? 0
    const drained = () => {
      for (let c = 0; c < this.n; c++) if ((this.lastSeq[c] as number) < final(c)) return false
      return true
    }
    const drainUntil = clock() + 10_000
    while (!drained() && clock() < drainUntil) await sleep(10)
    const after = await ask<Stats>(this.server, 'stats')
    this.recordLatency = false
    this.last = after
    this.peakRss = Math.max(this.peakRss, after.rssBytes)
    if (measured) {
      this.cpuMs += cpuMs(after) - cpuMs(before)
      this.emitted += reply.emitted
      this.emitSeconds += durationMs / 1000
      this.lateness.push(reply.latenessMs.p99)
      this.segmentLatencies.push(summarize(this.latencies))
      for (const x of this.latencies) this.allLatencies.push(x)
      for (const x of reply.ackedMs) this.acked.push(x)
      this.deliveredMeasured += this.received - received0
    }
    this.latencies = []
  }

  deliveredMeasured = 0
  /** The last seq the load generator emitted for each job of this side. */
  private readonly finalSeq = new Map<string, number>()

  /** Closes the clients and counts what never arrived. */
  finish(): FanoutOutcome {
    const finalSeqs = new Map<number, number>()
    for (const [j, id] of this.jobIds.entries()) finalSeqs.set(j, this.finalSeq.get(id) ?? 0)
    return this.outcome(finalSeqs)
  }

  private outcome(finalSeqs: Map<number, number>): FanoutOutcome {
    let expected = 0
    let missingAtEnd = 0
    for (let c = 0; c < this.n; c++) {
      const final = finalSeqs.get(this.jobOf[c] as number) ?? 0
      expected += final - (this.firstSeq[c] as number)
      missingAtEnd += Math.max(0, final - (this.lastSeq[c] as number))
    }
    for (const ws of this.sockets) ws.terminate()
    const idle = this.idle as Stats
    const connected = this.connected as Stats
    return {
      latencyMs: summarize(this.allLatencies),
      emitAckMs: summarize(this.acked),
      perSegmentLatencyMs: this.segmentLatencies.map((x) => ({
        p50: Math.round(x.p50 * 100) / 100,
        p99: Math.round(x.p99 * 100) / 100,
      })),
      expected,
      received: this.received,
      lost: this.missingInGaps + missingAtEnd,
      duplicates: this.duplicates,
      outOfOrder: this.outOfOrder,
      clientsConnected: this.n,
      connectSeconds: this.connectSeconds,
      emittedPerSecond: this.emitted / this.emitSeconds,
      loadGenLatenessMs: summarize(this.lateness),
      server: {
        rssIdleMiB: mib(idle.rssBytes),
        rssConnectedMiB: mib(connected.rssBytes),
        rssPeakMiB: mib(this.peakRss),
        rssEndMiB: mib((this.last ?? connected).rssBytes),
        // CPU burnt per second of load (the segments' drain and bookkeeping time left out of the divisor).
        cpuPercentOfOneCore: (this.cpuMs / (this.emitSeconds * 1000)) * 100,
        cpuMsPerThousandDeliveries: (this.cpuMs / Math.max(1, this.deliveredMeasured)) * 1000,
      },
    }
  }
}

interface StatusOutcome {
  requestsPerSecond: number
  requests: number
  errors: number
  latencyMs: Summary
  serverCpuPercentOfOneCore: number
}

/**
 * `GET /api/status/:jobId` load on one server: STATUS_CONCURRENCY loops over keep-alive connections,
 * round-robin job ids, run in windows so that the two servers can take turns.
 */
class StatusLoad {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: STATUS_CONCURRENCY })
  private readonly latencies: number[] = []
  private errors = 0
  private seconds = 0
  private cpuMs = 0
  private k = 0

  constructor(
    private readonly base: string,
    private readonly jobIds: string[],
    private readonly server: ChildProcess,
  ) {}

  private get(path: string): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      http
        .get(`${this.base}${path}`, { agent: this.agent }, (res) => {
          res.on('data', () => {})
          res.on('end', () => resolve(res.statusCode ?? 0))
          res.on('error', reject)
        })
        .on('error', reject)
    })
  }

  /** Runs the load for `ms`; counted unless `measured` is false (warm-up). */
  async window(ms: number, measured: boolean): Promise<void> {
    const before = await ask<Stats>(this.server, 'stats')
    const start = clock()
    const end = start + ms
    await Promise.all(
      Array.from({ length: STATUS_CONCURRENCY }, async () => {
        while (clock() < end) {
          const jobId = this.jobIds[this.k++ % this.jobIds.length] as string
          const t = clock()
          const status = await this.get(`/api/status/${encodeURIComponent(jobId)}`).catch(() => 0)
          if (!measured) continue
          if (status === 200) this.latencies.push(clock() - t)
          else this.errors += 1
        }
      }),
    )
    const after = await ask<Stats>(this.server, 'stats')
    if (!measured) return
    // Requests still in flight at `end` finish a little later: count the time until the last one did.
    this.seconds += (clock() - start) / 1000
    this.cpuMs += cpuMs(after) - cpuMs(before)
  }

  outcome(): StatusOutcome {
    this.agent.destroy()
    return {
      requestsPerSecond: this.latencies.length / this.seconds,
      requests: this.latencies.length,
      errors: this.errors,
      latencyMs: summarize(this.latencies),
      serverCpuPercentOfOneCore: (this.cpuMs / (this.seconds * 1000)) * 100,
    }
  }
}

export async function fanout(): Promise<BenchResult> {
  const run = randomUUID().slice(0, 8)
  const queuePrefix = `bench-${run}`
  const rawPrefix = `rawbench:${run}:`
  const dataDir = await makeDataDir()
  const jobIds = Array.from({ length: JOBS }, (_, i) => `bench-fanout-${run}-${i}`)
  const loadAtStart = loadAverage1m()
  console.log(
    `fanout: ${JOBS} jobs x ${RATE_PER_JOB} events/s for ${DURATION_MS / 1000} s, ${CLIENTS_PER_JOB} WebSocket clients per job; then GET /api/status at concurrency ${STATUS_CONCURRENCY} for ${STATUS_SECONDS} s`,
  )
  const gateway = forkTs('fanout-gateway.ts', {
    BENCH_REDIS_URL: TEST_REDIS_URL,
    BENCH_DATABASE_URL: TEST_DATABASE_URL,
    BENCH_DATA_DIR: dataDir,
    BENCH_QUEUE_PREFIX: queuePrefix,
  })
  const raw = forkTs('fanout-raw.ts', {
    BENCH_REDIS_URL: TEST_REDIS_URL,
    BENCH_RAW_CHANNEL_PREFIX: rawPrefix,
  })
  const load = forkTs('fanout-load.ts', { BENCH_REDIS_URL: TEST_REDIS_URL })
  const children = [gateway, raw, load]
  try {
    const [gw, rw] = await Promise.all([
      nextMessage(gateway, isOp('ready')),
      nextMessage(raw, isOp('ready')),
      nextMessage(load, isOp('ready')),
    ])
    // The jobs: real submissions through the gateway (rows in Postgres, a queued event each). No GPU host
    // takes them: the load generator plays the hosts' part.
    for (const jobId of jobIds) {
      const res = await fetch(`${gw.url}/api/train`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jobId, type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds' } }),
      })
      if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`)
    }

    // Both sides connected at once; the load generator alternates between them in segments, so that
    // whatever else the machine does falls on both alike.
    console.log('  connecting 1,000 WebSockets to the gateway and 1,000 to the raw relay ...')
    const oursSide = new Side('ours', gw.url.replace('http', 'ws'), gateway, jobIds)
    const rawSide = new Side('raw', rw.url.replace('http', 'ws'), raw, jobIds)
    const cpu0 = cpuTimes()
    await oursSide.connect()
    await rawSide.connect()
    const segmentMs = DURATION_MS / SEGMENTS
    for (const side of [oursSide, rawSide]) await side.segment(load, WARMUP_MS, false, rawPrefix)
    for (let k = 0; k < SEGMENTS; k++) {
      if ((k + 1) % 5 === 0) console.log(`  segment ${k + 1}/${SEGMENTS} (${segmentMs / 1000} s per side)`)
      for (const side of k % 2 === 0 ? [oursSide, rawSide] : [rawSide, oursSide])
        await side.segment(load, segmentMs, true, rawPrefix)
    }
    const busyFanout = machineBusyPercent(cpu0)
    const ours = oursSide.finish()
    const base = rawSide.finish()
    await sleep(500)

    const bodies: Record<string, string> = {}
    for (const jobId of jobIds) bodies[jobId] = await (await fetch(`${gw.url}/api/status/${jobId}`)).text()
    await ask(raw, 'bodies', { bodies })
    const cpu1 = cpuTimes()
    console.log('  GET /api/status: gateway and bare node:http, alternating 1 s windows ...')
    const oursLoad = new StatusLoad(gw.url, jobIds, gateway)
    const bareLoad = new StatusLoad(rw.url, jobIds, raw)
    await oursLoad.window(STATUS_WARMUP_MS, false)
    await bareLoad.window(STATUS_WARMUP_MS, false)
    for (let k = 0; k < STATUS_SECONDS; k++)
      for (const load of k % 2 === 0 ? [oursLoad, bareLoad] : [bareLoad, oursLoad])
        await load.window(1000, true)
    const statusOurs = oursLoad.outcome()
    const statusBare = bareLoad.outcome()
    const busyStatus = machineBusyPercent(cpu1)

    const latRow = (name: string, f: FanoutOutcome) => [
      name,
      f.latencyMs.p50,
      f.latencyMs.p99,
      f.latencyMs.mean,
      f.latencyMs.max,
      String(f.latencyMs.n),
      String(f.lost),
      String(f.duplicates),
      String(f.outOfOrder),
      f.emitAckMs.p50,
      f.emitAckMs.p99,
    ]
    printTable('fanout: event latency, emit -> client receipt (ms); emit ack = emit -> Redis replied', [
      ['path', 'p50', 'p99', 'mean', 'max', 'samples', 'lost', 'dup', 'gaps', 'ack p50', 'ack p99'],
      latRow('ours: emitEvent -> gateway -> ws', ours),
      latRow('raw: PUBLISH -> ioredis -> ws', base),
    ])
    // Paired by segment (adjacent in time): robust to bursts of other work on the machine.
    const pairs = ours.perSegmentLatencyMs.map((x, k) =>
      ratio(x.p99, base.perSegmentLatencyMs[k]?.p99 ?? Number.NaN),
    )
    const segP99 = (f: FanoutOutcome) => summarize(f.perSegmentLatencyMs.map((x) => x.p99))
    console.log(
      `per-segment p99 (ms), median / max of ${SEGMENTS}: ours ${segP99(ours).p50.toFixed(2)} / ${segP99(ours).max.toFixed(2)}; raw ${segP99(base).p50.toFixed(2)} / ${segP99(base).max.toFixed(2)}`,
    )
    const srvRow = (name: string, f: FanoutOutcome) => [
      name,
      f.server.rssIdleMiB,
      f.server.rssConnectedMiB,
      f.server.rssPeakMiB,
      f.server.cpuPercentOfOneCore,
      f.server.cpuMsPerThousandDeliveries,
      f.emittedPerSecond,
    ]
    printTable('fanout: server process (RSS MiB; CPU while events flow)', [
      ['server', 'RSS idle', 'RSS 1k ws', 'RSS peak', 'CPU %core', 'CPU ms/1k msgs', 'events/s'],
      srvRow('ours: gateway', ours),
      srvRow('raw: ioredis + ws relay', base),
    ])
    const stRow = (name: string, s: StatusOutcome) => [
      name,
      s.requestsPerSecond,
      s.latencyMs.p50,
      s.latencyMs.p99,
      String(s.errors),
      s.serverCpuPercentOfOneCore,
    ]
    printTable(`GET /api/status/:jobId, concurrency ${STATUS_CONCURRENCY}, keep-alive`, [
      ['server', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'CPU %core'],
      stRow('ours: gateway (Postgres + Redis)', statusOurs),
      stRow('bare node:http, JSON in memory', statusBare),
    ])
    const ratios = {
      latencyOursOverRaw: {
        p50: ratio(ours.latencyMs.p50, base.latencyMs.p50),
        p99: ratio(ours.latencyMs.p99, base.latencyMs.p99),
        medianOfPairedSegmentP99: summarize(pairs).p50,
      },
      statusRpsOursOverBare: ratio(statusOurs.requestsPerSecond, statusBare.requestsPerSecond),
    }
    printTable('fanout: ratios (goals: latency p99 <= 3x, status req/s >= 0.5x)', [
      ['ratio', 'value'],
      ['latency p50 ours/raw', ratios.latencyOursOverRaw.p50],
      ['latency p99 ours/raw', ratios.latencyOursOverRaw.p99],
      [
        'latency p99 ours/raw, median of paired 1 s segments',
        ratios.latencyOursOverRaw.medianOfPairedSegmentP99,
      ],
      ['status req/s ours/bare', ratios.statusRpsOursOverBare],
    ])
    console.log(
      `\nmachine: load average ${loadAtStart} at start; all cores ${busyFanout}% busy during the fan-out, ${busyStatus}% during the status runs (this benchmark included)`,
    )
    console.log(
      'Simulated: no GPU host or job processes; a load-generator process calls emitEvent() (what the host does per ctx.progress) 20 times a second per job, so the child->host IPC hop is not in the latency. Real: the gateway process, Postgres, Redis, 1,000 WebSockets.',
    )

    const fo = (f: FanoutOutcome) => ({
      latencyMs: rounded(f.latencyMs, 3),
      emitAckMs: rounded(f.emitAckMs, 3),
      expected: f.expected,
      received: f.received,
      lost: f.lost,
      duplicates: f.duplicates,
      gaps: f.outOfOrder,
      clients: f.clientsConnected,
      connectSeconds: Math.round(f.connectSeconds * 100) / 100,
      emittedPerSecond: Math.round(f.emittedPerSecond),
      perSegmentLatencyMs: f.perSegmentLatencyMs,
      loadGeneratorScheduleLatenessP99MsWorstSegment: Math.round(f.loadGenLatenessMs.max * 100) / 100,
      server: rounded(f.server, 2),
    })
    const st = (s: StatusOutcome) => ({
      requestsPerSecond: Math.round(s.requestsPerSecond),
      requests: s.requests,
      errors: s.errors,
      latencyMs: rounded(s.latencyMs, 3),
      serverCpuPercentOfOneCore: Math.round(s.serverCpuPercentOfOneCore * 10) / 10,
    })
    return {
      name: 'fanout',
      issue: 'gateway: WebSocket fan-out latency, loss, memory and CPU; status requests per second',
      parameters: {
        jobs: JOBS,
        eventsPerSecondPerJob: RATE_PER_JOB,
        clientsPerJob: CLIENTS_PER_JOB,
        clients: JOBS * CLIENTS_PER_JOB,
        durationSeconds: DURATION_MS / 1000,
        warmupSegmentSecondsPerSide: WARMUP_MS / 1000,
        segmentsPerSide: SEGMENTS,
        statusSeconds: STATUS_SECONDS,
        statusConcurrency: STATUS_CONCURRENCY,
        order:
          'fan-out: ours and raw alternating in 1 s segments; then status: ours and bare alternating in 1 s windows',
      },
      notes: [
        "Simulated: there is no GPU host and no job process. A separate load-generator process (bench/fanout-load.ts) calls emitEvent() from schema/progress-log.ts, which is what the host's Reporter calls for each ctx.progress(), with one Redis connection and the events of a job chained, as the Reporter does. The child -> host IPC hop is therefore not in the latency.",
        'Real: the gateway (startGateway from gateway/server.ts) in its own process (bench/fanout-gateway.ts) with Postgres gpu_jobs_test and Redis; the 100 jobs are real POST /api/train submissions (queued, never taken by a host); 1,000 real WebSockets with ?jobId= (10 per job), in the orchestrating process.',
        "Baseline: bench/fanout-raw.ts, no project code: ioredis PSUBSCRIBE -> `ws` server relaying the message string to the job's sockets; the load generator PUBLISHes the same JSON (same shape and size, local seq) at the same schedule.",
        "Emit ack: from the emit call to Redis answering the EVAL (ours) or PUBLISH (raw), in the load generator, waiting behind the job's previous events included; it separates the Redis side from the gateway side of the latency.",
        'Latency: the emit time (performance.timeOrigin + performance.now() in the load generator) is the event message; the client subtracts it from its receipt time on the same clock. Each side first gets a 2 s warm-up segment, left out of the latency figures but not out of the loss count; then the measured time is cut into 25 segments of 1 s per side, alternating ours and raw (order swapped every segment), with both sets of 1,000 clients connected throughout; each segment ends when every client has the last seq.',
        "Lost: per client, every seq from the one after its first (current-state) event to the job's last seq must arrive exactly once, in order.",
        'Status: GET /api/status/:jobId round-robin over the 100 jobs (status queued, live event newer: the handler reads Postgres twice and Redis once), 50 keep-alive connections from this process, 1 s warm-up each, then 8 windows of 1 s per server, alternating gateway and bare (order swapped every window). Baseline: bare node:http in its own process answering the same bodies (fetched from the gateway) from a Map.',
        'CPU %core = (user + system CPU of the server process over the measured segments, drains included) / (seconds of load emitted) x 100: the share of one core the server needs per second of this load. RSS from process.memoryUsage() of the server process, sampled before and after every segment.',
        'The machine is shared: other processes (tests of other sessions) may run at the same time; see machineLoad (load average before the benchmark started, and how busy all cores were during it, this benchmark included).',
      ],
      results: {
        ours: fo(ours),
        raw: fo(base),
        status: { ours: st(statusOurs), bare: st(statusBare) },
        ratios: {
          latencyOursOverRaw: rounded(ratios.latencyOursOverRaw, 2),
          statusRpsOursOverBare: Math.round(ratios.statusRpsOursOverBare * 100) / 100,
        },
        machineLoad: {
          loadAverage1mAtStart: loadAtStart,
          machineCpuBusyPercentDuringFanout: busyFanout,
          machineCpuBusyPercentDuringStatus: busyStatus,
        },
      },
    }
  } finally {
    await Promise.all(children.map((c) => stopChild(c)))
    const redis = createRedis(TEST_REDIS_URL)
    await redis.connect()
    await redis.del(...jobIds.flatMap((id) => [seqKey(id), eventLogKey(id)])).catch(() => 0)
    redis.disconnect()
    const queue = new Queue(QUEUE_NAME, { connection: createRedis(TEST_REDIS_URL), prefix: queuePrefix })
    await queue.obliterate({ force: true }).catch(() => {})
    await queue.close()
    const database = await openDatabase({ url: TEST_DATABASE_URL, poolSize: 1 })
    await database.db
      .delete(jobs)
      .where(like(jobs.id, `bench-fanout-${run}-%`))
      .catch(() => {})
    await database.close()
    await rm(dataDir, { recursive: true, force: true })
  }
}
