import {
  DeleteObjectsCommand,
  GetObjectCommand,
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
import { type JobType, outputPrefixFor } from '../schema/params/index.ts'

/**
 * Why `given` (an envelope's `artifacts.outputPrefix`, from any producer) cannot be the job's prefix, or
 * undefined when it can: it must be exactly the type's prefix for the job id (`loras/<jobId>`), and that
 * must be a plain folder name (a jobId `.` or `..` would put keys beside other jobs' or at the root).
 */
export function outputPrefixProblem(
  type: JobType,
  jobId: string,
  given: string | undefined,
): string | undefined {
  const expected = outputPrefixFor(type, jobId)
  if (!isPlainPrefix(expected))
    return `jobId ${JSON.stringify(jobId.slice(0, 128))} cannot name a folder of artifacts`
  if (given !== undefined && given !== expected)
    return `artifacts.outputPrefix must be "${expected}" (the type's prefix and the jobId), not ${JSON.stringify(given.slice(0, 200))}`
  return undefined
}

/** `a/b`: no empty, `.` or `..` segment, no backslash or NUL. */
const isPlainPrefix = (prefix: string): boolean =>
  prefix
    .split('/')
    .every((s) => s !== '' && s !== '.' && s !== '..' && !s.includes('\\') && !s.includes('\0'))

/** Guards every list and delete: a prefix that is not a plain folder is never touched. */
function plainPrefix(prefix: string): string {
  if (!isPlainPrefix(prefix)) throw new Error(`refusing to touch artifact prefix ${JSON.stringify(prefix)}`)
  return prefix
}

/** Streams artifacts straight from the job's process to S3 (multipart for large files). */
export class S3ArtifactStore implements ArtifactStore {
  /** `before`: what must be done before any file lands (the last attempt's manifest removed). */
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly prefix: string,
    private readonly before: Promise<unknown> = Promise.resolve(),
  ) {}

  async put(p: string, body: ArtifactBody, opts: { contentType?: string } = {}): Promise<ArtifactRecord> {
    await this.before
    const rel = checkArtifactPath(p)
    const key = `${plainPrefix(this.prefix)}/${rel}`
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
      new ListObjectsV2Command({
        Bucket: bucket,
        Prefix: `${plainPrefix(prefix)}/`,
        ContinuationToken: token,
      }),
    )
    for (const obj of page.Contents ?? []) if (obj.Key?.startsWith(`${prefix}/`)) keys.push(obj.Key)
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
  await deleteKeys(s3, bucket, [manifestKey(plainPrefix(prefix))])
}

/** The keys a job's manifest lists, or null when it has none. */
async function manifestFiles(s3: S3Client, bucket: string, prefix: string): Promise<Set<string> | null> {
  try {
    const obj = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: manifestKey(prefix) }))
    const manifest = JSON.parse((await obj.Body?.transformToString()) ?? '') as Partial<Manifest>
    return new Set((manifest.files ?? []).map((f) => f.key))
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return null
    throw err
  }
}

/**
 * Removes the files under a job's prefix that no manifest covers: partial output of an attempt that was
 * cancelled or failed for good (or of an earlier attempt of a job cancelled while waiting to retry).
 * What a manifest lists, and the manifest itself, stay. Returns how many files went.
 */
export async function removeUncovered(s3: S3Client, bucket: string, prefix: string): Promise<number> {
  const keys = await listKeys(s3, bucket, prefix)
  if (keys.length === 0) return 0
  const covered = (await manifestFiles(s3, bucket, prefix)) ?? new Set<string>()
  const stale = keys.filter((k) => !covered.has(k) && k !== manifestKey(prefix))
  if (stale.length > 0) await deleteKeys(s3, bucket, stale)
  return stale.length
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
