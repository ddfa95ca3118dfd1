import { collectDefaultMetrics, Registry } from 'prom-client'
import { counter, declareSeries, gauge, histogram } from '../schema/metrics.ts'
import { JOB_TYPES } from '../schema/params/index.ts'

const HTTP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

// biome-ignore format: a table, one series a line
const GATEWAY_SERIES = {
  httpDuration: histogram('gateway_http_request_duration_seconds', ['method', 'route', 'status'], HTTP_BUCKETS, 'HTTP request duration in seconds, by method, route pattern and status.'),
  websockets: gauge('gateway_websocket_connections', [], 'Open WebSocket connections.'),
  sseStreams: gauge('gateway_sse_streams', [], 'Open Server-Sent Events streams.'),
  forwarded: counter('gateway_events_forwarded_total', ['transport'], 'Progress events sent to clients, by transport (ws, sse).'),
  dropped: counter('gateway_events_dropped_total', ['transport', 'reason'], 'Progress events not sent because the client was too slow or gone, by transport and reason.'),
  submitted: counter('gateway_jobs_submitted_total', ['type'], 'Jobs accepted by POST /api/train, by type.'),
  rateLimited: counter('gateway_rate_limited_total', [], 'API requests refused with 429 by the per-token rate limit.'),
}

type GatewaySeries = ReturnType<typeof declareSeries<typeof GATEWAY_SERIES>>

/** The gateway's own metrics (`GET /metrics` on the gateway port). No job-id labels. */
export class GatewayMetrics {
  readonly registry = new Registry()
  readonly httpDuration: GatewaySeries['httpDuration']
  readonly websockets: GatewaySeries['websockets']
  readonly sseStreams: GatewaySeries['sseStreams']
  readonly forwarded: GatewaySeries['forwarded']
  readonly dropped: GatewaySeries['dropped']
  readonly submitted: GatewaySeries['submitted']
  readonly rateLimited: GatewaySeries['rateLimited']

  constructor() {
    collectDefaultMetrics({ register: this.registry })
    ;({
      httpDuration: this.httpDuration,
      websockets: this.websockets,
      sseStreams: this.sseStreams,
      forwarded: this.forwarded,
      dropped: this.dropped,
      submitted: this.submitted,
      rateLimited: this.rateLimited,
    } = declareSeries(this.registry, GATEWAY_SERIES))
    // Series exist from the start, so the first event of each kind is counted by rate() and increase().
    for (const transport of ['ws', 'sse']) this.forwarded.inc({ transport }, 0)
    for (const [transport, reason] of [
      ['ws', 'closed'],
      ['ws', 'slow_client'],
      ['sse', 'slow_client'],
    ] as const)
      this.dropped.inc({ transport, reason }, 0)
    for (const type of JOB_TYPES) this.submitted.inc({ type }, 0)
  }
}
