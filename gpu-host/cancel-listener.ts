/**
 * The host's ear for cancels: one subscription to CANCEL_CHANNEL, where a gateway broadcasts
 * `{"jobId": "..."}` for every cancel; the host running that job kills it (the others ignore it).
 */
import type { Redis } from 'ioredis'
import { CANCEL_CHANNEL } from '../schema/keys.ts'

/** The job id of a cancel message, or undefined for anything else (the channel is not trusted). */
export function cancelledJobId(raw: string): string | undefined {
  try {
    const jobId = (JSON.parse(raw) as { jobId?: unknown } | null)?.jobId
    return typeof jobId === 'string' ? jobId : undefined
  } catch {
    return undefined
  }
}

/** Subscribes `subscriber` (a connection of its own) and calls `onCancel` for each cancelled job id. */
export async function listenForCancels(subscriber: Redis, onCancel: (jobId: string) => void): Promise<void> {
  await subscriber.subscribe(CANCEL_CHANNEL)
  subscriber.on('message', (channel: string, raw: string) => {
    if (channel !== CANCEL_CHANNEL) return
    const jobId = cancelledJobId(raw)
    if (jobId !== undefined) onCancel(jobId)
  })
}
