import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import { JOB_TYPES } from '../schema/params/index.ts'

/** The gateway's own metrics (`GET /metrics` on the gateway port). No job-id labels. */
export class GatewayMetrics {
  readonly registry = new Registry()
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>
  readonly websockets: Gauge
  readonly sseStreams: Gauge
  readonly forwarded: Counter<'transport'>
  readonly dropped: Counter<'transport' | 'reason'>
  readonly submitted: Counter<'type'>
  readonly rateLimited: Counter

  constructor() {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry })
    this.httpDuration = new Histogram({
      name: 'gateway_http_request_duration_seconds',
      help: 'HTTP request duration in seconds, by method, route pattern and status.',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    })
    this.websockets = new Gauge({
      name: 'gateway_websocket_connections',
      help: 'Open WebSocket connections.',
      registers,
    })
    this.sseStreams = new Gauge({
      name: 'gateway_sse_streams',
      help: 'Open Server-Sent Events streams.',
      registers,
    })
    this.forwarded = new Counter({
      name: 'gateway_events_forwarded_total',
      help: 'Progress events sent to clients, by transport (ws, sse).',
      labelNames: ['transport'],
      registers,
    })
    this.dropped = new Counter({
      name: 'gateway_events_dropped_total',
      help: 'Progress events not sent because the client was too slow or gone, by transport and reason.',
      labelNames: ['transport', 'reason'],
      registers,
    })
    this.submitted = new Counter({
      name: 'gateway_jobs_submitted_total',
      help: 'Jobs accepted by POST /api/train, by type.',
      labelNames: ['type'],
      registers,
    })
    // Series exist from the start, so the first event of each kind is counted by rate() and increase().
    for (const transport of ['ws', 'sse']) this.forwarded.inc({ transport }, 0)
    for (const [transport, reason] of [
      ['ws', 'closed'],
      ['ws', 'slow_client'],
      ['sse', 'slow_client'],
    ] as const)
      this.dropped.inc({ transport, reason }, 0)
    for (const type of JOB_TYPES) this.submitted.inc({ type }, 0)
    this.rateLimited = new Counter({
      name: 'gateway_rate_limited_total',
      help: 'API requests refused with 429 by the per-token rate limit.',
      registers,
    })
  }
}
