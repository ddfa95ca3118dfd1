/**
 * fanout (gateway): 100 running jobs each emitting 20 events/s, followed by 1,000 WebSocket clients
 * (10 per job): event latency, lost events, the gateway's RSS and CPU; against a raw Redis PUBLISH ->
 * ioredis subscriber -> `ws` relay with no project code. Then `GET /api/status/:jobId` requests per second
 * against a bare node:http server answering the same JSON from memory.
 *
 * Processes: this one (orchestrator, the 1,000 WebSocket clients, the HTTP load), the gateway
 * (bench/fanout-gateway.ts), the raw baseline server (bench/fanout-raw.ts) and the event load generator
 * (bench/fanout-load.ts), each alone in its process. The clients and the HTTP load are in
 * bench/fanout-clients.ts.
 */
import { randomUUID } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { Queue } from 'bullmq'
import { like } from 'drizzle-orm'
import { createRedis } from '../schema/clients.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { jobs } from '../schema/db/tables.ts'
import { eventLogKey, QUEUE_NAME, seqKey } from '../schema/keys.ts'
import { makeDataDir, TEST_DATABASE_URL, TEST_REDIS_URL } from '../tests/helpers/stack.ts'
import {
  CLIENTS_PER_JOB,
  type FanoutOutcome,
  isOp,
  RATE_PER_JOB,
  Side,
  STATUS_CONCURRENCY,
  StatusLoad,
  type StatusOutcome,
} from './fanout-clients.ts'
import {
  ask,
  type BenchResult,
  cpuTimes,
  forkTs,
  loadAverage1m,
  machineBusyPercent,
  nextMessage,
  printTable,
  ratio,
  rounded,
  stopChild,
  summarize,
} from './lib.ts'

const JOBS = 100
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
