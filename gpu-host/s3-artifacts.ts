import {
  DeleteObjectsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import {
  checkArtifactPath,
  contentTypeFor,
  hashedStream,
  MANIFEST_NAME,
} from '../functions/sdk/artifact-body.ts'
import type { ArtifactBody, ArtifactRecord, ArtifactStore } from '../functions/sdk/context.ts'

/** Streams artifacts straight from the job's process to S3 (multipart for large files). */
export class S3ArtifactStore implements ArtifactStore {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly prefix: string,
  ) {}

  async put(p: string, body: ArtifactBody, opts: { contentType?: string } = {}): Promise<ArtifactRecord> {
    const rel = checkArtifactPath(p)
    const key = `${this.prefix}/${rel}`
    const contentType = opts.contentType ?? contentTypeFor(rel)
    const { stream, digest } = hashedStream(body)
    await new Upload({
      client: this.s3,
      params: { Bucket: this.bucket, Key: key, Body: stream, ContentType: contentType },
      queueSize: 2,
      partSize: 8 * 1024 * 1024,
    }).done()
    return { path: rel, key, contentType, ...digest() }
  }
}

/** The manifest of a job's output, written last: a complete manifest means a complete output. */
export interface Manifest {
  jobId: string
  type: string
  attempt: number
  createdAt: string
  files: ArtifactRecord[]
}

export const manifestKey = (prefix: string): string => `${prefix}/${MANIFEST_NAME}`

async function listKeys(s3: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const keys: string[] = []
  let token: string | undefined
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/`, ContinuationToken: token }),
    )
    for (const obj of page.Contents ?? []) if (obj.Key) keys.push(obj.Key)
    token = page.IsTruncated ? page.NextContinuationToken : undefined
  } while (token)
  return keys
}

async function deleteKeys(s3: S3Client, bucket: string, keys: string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 1000) {
    const batch = keys.slice(i, i + 1000)
    await s3.send(
      new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: batch.map((Key) => ({ Key })) } }),
    )
  }
}

/** Removes the manifest before an attempt starts, so a half-written output is never taken as complete. */
export async function invalidateManifest(s3: S3Client, bucket: string, prefix: string): Promise<void> {
  await deleteKeys(s3, bucket, [manifestKey(prefix)])
}

/**
 * Finishes a job's output: removes files under the prefix that this attempt did not write (left by an
 * earlier attempt), then writes the manifest.
 */
export async function publishManifest(
  s3: S3Client,
  bucket: string,
  prefix: string,
  manifest: Manifest,
): Promise<void> {
  const keep = new Set(manifest.files.map((f) => f.key))
  const stale = (await listKeys(s3, bucket, prefix)).filter((k) => !keep.has(k) && k !== manifestKey(prefix))
  if (stale.length > 0) await deleteKeys(s3, bucket, stale)
  await s3.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: manifestKey(prefix),
      Body: JSON.stringify(manifest, null, 2),
      ContentType: 'application/json',
    }),
  )
}
