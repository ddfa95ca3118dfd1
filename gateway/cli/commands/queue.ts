import type { QueueBody } from '../../../schema/queue.ts'
import { duration } from '../render.ts'
import { table } from '../table.ts'
import { viewCommand } from '../view.ts'

/** BullMQ's sets that hold more than their name says (the job statuses are in the table by type). */
const HOLDS: Record<string, string> = {
  delayed: 'retry backoffs, and queued jobs put back until a host can take them',
  failed: 'cancelled jobs too',
}

/** `gpu-jobs queue`'s text: BullMQ's states, the unfinished jobs by type, the oldest waiting, the last hour. */
export function queueText(q: QueueBody): string {
  const states = table(
    ['BULLMQ STATE', 'JOBS', 'HOLDS'],
    Object.entries(q.byState).map(([state, n]) => [state, String(n), HOLDS[state] ?? '']),
    ['JOBS'],
  )
  const types = table(
    ['TYPE', 'QUEUED', 'RUNNING', 'RETRYING'],
    Object.entries(q.byType).map(([type, c]) => [
      type,
      String(c.queued),
      String(c.running),
      String(c.retrying),
    ]),
    ['QUEUED', 'RUNNING', 'RETRYING'],
  )
  const oldest = q.oldestWaitingSec === null ? 'none waiting' : duration(q.oldestWaitingSec * 1000)
  const summary = [
    `oldest waiting  ${oldest}`,
    `last hour       ${q.lastHour.completed} completed, ${q.lastHour.failed} failed`,
  ].join('\n')
  return [states, types, summary].join('\n\n')
}

/** `gpu-jobs queue [--json]`: how deep the queue is. */
export const queue = viewCommand<QueueBody>('queue', 'api/queue', queueText)
