import type { QueueBody } from '../../../schema/queue.ts'
import { duration } from '../render.ts'
import { table } from '../table.ts'
import { viewCommand } from '../view.ts'

/** `gpu-jobs queue`'s text: BullMQ's states, the unfinished jobs by type, the oldest waiting, the last hour. */
export function queueText(q: QueueBody): string {
  const states = table(
    ['STATE', 'JOBS'],
    Object.entries(q.byState).map(([state, n]) => [state, String(n)]),
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
