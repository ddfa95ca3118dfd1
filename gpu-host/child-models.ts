/**
 * The job process's side of `ctx.models.ensure` for S3 sources: it asks the host over IPC to stream the
 * object into the temp file the cache chose, and waits for the answer. The job process holds no S3
 * credential; the lock and rename protocol stays in the job process, on the shared volume.
 */
import { NonRetryableError, RetryableError } from '../functions/sdk/errors.ts'
import type { S3ObjectFetcher } from '../functions/sdk/models.ts'
import type { ChildMessage, ParentMessage } from './ipc.ts'

type Reply = Extract<ParentMessage, { kind: 'model-fetched' | 'model-fetch-failed' }>

export class HostModelFetcher implements S3ObjectFetcher {
  private nextId = 1
  private readonly waiting = new Map<number, (reply: Reply) => void>()

  constructor(private readonly send: (msg: ChildMessage) => Promise<void>) {}

  /** Called with every `model-fetched` / `model-fetch-failed` message from the host. */
  onReply(reply: Reply): void {
    const resolve = this.waiting.get(reply.id)
    this.waiting.delete(reply.id)
    resolve?.(reply)
  }

  async fetchObject(
    req: { model: string; bucket: string; key: string; file: string },
    signal?: AbortSignal,
  ): Promise<{ size: number; sha256: string }> {
    signal?.throwIfAborted()
    const id = this.nextId++
    const reply = await new Promise<Reply>((resolve, reject) => {
      // On abort the host stops the download itself (it is told, and then the group is killed).
      const onAbort = () => {
        this.waiting.delete(id)
        reject(signal?.reason)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiting.set(id, (r) => {
        signal?.removeEventListener('abort', onAbort)
        resolve(r)
      })
      void this.send({ kind: 'model-fetch', id, ...req })
    })
    if (reply.kind === 'model-fetched') return { size: reply.size, sha256: reply.sha256 }
    throw reply.retryable
      ? new RetryableError(reply.message, { reason: 'storage', code: 'MODEL_FETCH_FAILED' })
      : new NonRetryableError(reply.message, { reason: 'non_retryable', code: 'MODEL_SOURCE_REFUSED' })
  }
}
