/**
 * The host's ear for cancels: one subscription to CANCEL_CHANNEL, where a gateway broadcasts
 * `{"jobId": "..."}` for every cancel; the host running that job kills it (the others ignore it).
 *
 * Pub/sub delivers at most once: a host whose subscriber is reconnecting when the message goes out never
 * hears it, and a gateway may lose Redis between writing a job's cancel key and broadcasting. The key is
 * the record of a cancel, the broadcast only makes it quick: so the host also looks up its running jobs'
 * keys every CANCEL_SWEEP_MS and each time its subscriber is ready again.
 */
import type { Redis } from 'ioredis'
import { CANCEL_CHANNEL, cancelKey } from '../schema/keys.ts'

/** How often a host looks up the cancel keys of the jobs it runs: the longest a missed broadcast delays a kill. */
export const CANCEL_SWEEP_MS = 2_000

/** The job id of a cancel message, or undefined for anything else (the channel is not trusted). */
export function cancelledJobId(raw: string): string | undefined {
  try {
    const jobId = (JSON.parse(raw) as { jobId?: unknown } | null)?.jobId
    return typeof jobId === 'string' ? jobId : undefined
  } catch {
    return undefined
  }
}

export interface CancelListenerDeps {
  /** A connection of its own, for the subscription. */
  subscriber: Redis
  /** For the key lookups. */
  redis: Redis
  /** The jobs this host runs whose cancel it has not heard yet. */
  uncancelled: () => Iterable<string>
  onCancel: (jobId: string) => void
  /** A lookup that failed (Redis away): the next one tries again. */
  onError: (err: unknown) => void
}

/**
 * @example const cancels = new CancelListener({ subscriber, redis, uncancelled, onCancel, onError });
 * await cancels.start(); ...; cancels.stop()
 */
export class CancelListener {
  private timer: NodeJS.Timeout | undefined
  /** A lookup waits while Redis is away (the host's connection queues it): one at a time, not one per tick. */
  private sweeping = false
  constructor(private readonly deps: CancelListenerDeps) {}

  async start(): Promise<void> {
    const { subscriber, onCancel } = this.deps
    await subscriber.subscribe(CANCEL_CHANNEL)
    subscriber.on('message', (channel: string, raw: string) => {
      if (channel !== CANCEL_CHANNEL) return
      const jobId = cancelledJobId(raw)
      if (jobId !== undefined) onCancel(jobId)
    })
    // Back after a reconnect (ioredis subscribes again by itself): what was broadcast meanwhile is lost.
    subscriber.on('ready', () => void this.sweep())
    this.timer = setInterval(() => void this.sweep(), CANCEL_SWEEP_MS)
    this.timer.unref()
  }

  /** Looks up the cancel keys of the running jobs not cancelled yet, in one round trip. */
  async sweep(): Promise<void> {
    const { redis, uncancelled, onCancel, onError } = this.deps
    const ids = [...uncancelled()]
    if (ids.length === 0 || this.sweeping) return
    this.sweeping = true
    // One EXISTS per key, pipelined, not one MGET: each key has its job's hash tag (a cluster slot each).
    const pipeline = redis.pipeline()
    for (const id of ids) pipeline.exists(cancelKey(id))
    try {
      const found = (await pipeline.exec()) ?? []
      found.forEach(([err, n], i) => {
        const id = ids[i]
        if (!err && n === 1 && id !== undefined) onCancel(id)
      })
    } catch (err) {
      onError(err)
    } finally {
      this.sweeping = false
    }
  }

  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }
}
