/**
 * The job process's side of `ctx.artifacts`: each artifact is written into the job's scratch dir (a file
 * body already there is used as it is), then the host is asked over IPC to store it; the host streams
 * the file to S3, hashes it and answers with the record. So the job process holds no storage credential.
 */
import { rm } from 'node:fs/promises'
import path from 'node:path'
import { Readable } from 'node:stream'
import { checkArtifactPath, isInside, spoolArtifact } from '../functions/sdk/artifact-body.ts'
import type { ArtifactBody, ArtifactRecord, ArtifactStore } from '../functions/sdk/context.ts'
import { NonRetryableError, RetryableError } from '../functions/sdk/errors.ts'
import type { ChildMessage, ParentMessage } from './ipc.ts'

type Reply = Extract<ParentMessage, { kind: 'artifact-stored' | 'artifact-refused' }>

/** Spool files live here, apart from what the handler writes in its scratch dir. */
const OUTBOX = '.artifacts-outbox'

export class HostArtifactStore implements ArtifactStore {
  private nextId = 1
  private readonly waiting = new Map<number, (reply: Reply) => void>()

  constructor(
    private readonly scratch: string,
    private readonly send: (msg: ChildMessage) => Promise<void>,
  ) {}

  /** Called with every `artifact-stored` / `artifact-refused` message from the host. */
  onReply(reply: Reply): void {
    const resolve = this.waiting.get(reply.id)
    this.waiting.delete(reply.id)
    resolve?.(reply)
  }

  async put(p: string, body: ArtifactBody, opts: { contentType?: string } = {}): Promise<ArtifactRecord> {
    const rel = checkArtifactPath(p)
    const id = this.nextId++
    const given =
      !(body instanceof Readable) && typeof body === 'object' && 'file' in body ? body.file : undefined
    const inPlace = given !== undefined && (await isInside(this.scratch, given))
    const file = inPlace && given ? path.resolve(given) : path.join(this.scratch, OUTBOX, String(id))
    try {
      if (!inPlace)
        await spoolArtifact(body, file).catch((err: unknown) => {
          throw new RetryableError(
            `could not write artifact ${JSON.stringify(rel)} to scratch: ${(err as Error).message}`,
            {
              reason: 'storage',
              cause: err,
            },
          )
        })
      const reply = await new Promise<Reply>((resolve) => {
        this.waiting.set(id, resolve)
        void this.send({ kind: 'artifact', id, path: rel, file, contentType: opts.contentType })
      })
      if (reply.kind === 'artifact-stored') return reply.record
      throw reply.retryable
        ? new RetryableError(reply.message, { reason: 'storage' })
        : new NonRetryableError(reply.message, { reason: 'non_retryable', code: 'INVALID_ARTIFACT_PATH' })
    } finally {
      if (!inPlace) await rm(file, { force: true }).catch(() => {})
    }
  }
}
