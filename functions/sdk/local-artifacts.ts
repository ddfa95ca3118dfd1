import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { checkArtifactPath, contentTypeFor, hashedStream } from './artifact-body.ts'
import type { ArtifactBody, ArtifactRecord, ArtifactStore } from './context.ts'

/** Writes artifacts to a folder (`npm run job -- --out DIR`); `key` is `<prefix>/<path>` as in S3. */
export class DirectoryArtifactStore implements ArtifactStore {
  constructor(
    private readonly dir: string,
    private readonly prefix: string,
  ) {}

  async put(p: string, body: ArtifactBody, opts: { contentType?: string } = {}): Promise<ArtifactRecord> {
    const rel = checkArtifactPath(p)
    const target = path.join(this.dir, rel)
    await mkdir(path.dirname(target), { recursive: true })
    const { stream, digest } = hashedStream(body)
    await pipeline(stream, createWriteStream(target))
    return {
      path: rel,
      key: `${this.prefix}/${rel}`,
      contentType: opts.contentType ?? contentTypeFor(rel),
      ...digest(),
    }
  }
}

/** Keeps artifacts in memory, for handler unit tests. */
export class MemoryArtifactStore implements ArtifactStore {
  readonly files = new Map<string, { record: ArtifactRecord; bytes: Buffer }>()
  constructor(private readonly prefix: string) {}

  async put(p: string, body: ArtifactBody, opts: { contentType?: string } = {}): Promise<ArtifactRecord> {
    const rel = checkArtifactPath(p)
    const { stream, digest } = hashedStream(body)
    const chunks: Buffer[] = []
    for await (const chunk of stream) chunks.push(chunk as Buffer)
    const record = {
      path: rel,
      key: `${this.prefix}/${rel}`,
      contentType: opts.contentType ?? contentTypeFor(rel),
      ...digest(),
    }
    this.files.set(rel, { record, bytes: Buffer.concat(chunks) })
    return record
  }
}
