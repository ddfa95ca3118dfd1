/**
 * The two kinds of load of the fanout benchmark (bench/fanout.ts) and what they measure: a `Side` is one
 * server (ours or the raw baseline) with its WebSocket clients, a `StatusLoad` the HTTP status requests.
 */
import type { ChildProcess } from 'node:child_process'
import http from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import WebSocket from 'ws'
import { ask, clock, type processStats, type Summary, summarize } from './lib.ts'

export const CLIENTS_PER_JOB = 10
export const RATE_PER_JOB = 20
export const STATUS_CONCURRENCY = 50
export const CONNECT_CONCURRENCY = 50

export type Stats = ReturnType<typeof processStats> & { op: string }

export const isOp =
  (op: string) =>
  (m: unknown): m is { op: string; url: string } =>
    typeof m === 'object' && m !== null && (m as { op?: string }).op === op

export interface LoadReply {
  emitted: number
  failed: number
  startedAt: number
  endedAt: number
  finalSeq: Record<string, number>
  latenessMs: Summary
  ackedMs: number[]
}

export interface FanoutOutcome {
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

export const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10
export const cpuMs = (s: Stats) => s.cpuUserMs + s.cpuSystemMs

/**
 * One side of the comparison (ours or raw): its server process and its 1,000 connected clients, with
 * what they received, accumulated over the segments in which the load generator drives this side.
 */
export class Side {
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

export interface StatusOutcome {
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
export class StatusLoad {
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
