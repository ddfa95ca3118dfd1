/** A job's artifacts: `GET /api/jobs/:jobId/artifacts` (the list) and `.../artifacts/<path>` (a download). */
import { GetObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3'
import { Hono } from 'hono'
import type { Artifact } from '../../schema/api.ts'
import type { JobArtifactRow } from '../../schema/db/tables.ts'
import { artifactPathOf, attachmentDisposition, byteRange } from '../downloads.ts'
import { ApiError } from '../errors.ts'
import type { JobStore } from '../store.ts'
import type { JobAccess } from './access.ts'

/** The gateway's download URL of an artifact (each path segment encoded on its own). */
const artifactUrl = (jobId: string, path: string) =>
  `/api/jobs/${encodeURIComponent(jobId)}/artifacts/${path.split('/').map(encodeURIComponent).join('/')}`

/** A stored artifact as the API shows it, with its download URL. */
export const toArtifact = (a: JobArtifactRow): Artifact => ({
  path: a.path,
  key: a.key,
  size: a.size,
  sha256: a.sha256,
  contentType: a.contentType,
  url: artifactUrl(a.jobId, a.path),
})

export interface ArtifactDeps {
  store: JobStore
  access: JobAccess
  s3: S3Client
  bucket: string
}

/** @example app.route('/', artifactRoutes({ store, access, s3, bucket })) */
export function artifactRoutes({ store, access, s3, bucket }: ArtifactDeps): Hono {
  const app = new Hono()
  app.get('/api/jobs/:jobId/artifacts', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    return c.json({ artifacts: (await store.artifacts(row.id)).map(toArtifact) })
  })

  app.get('/api/jobs/:jobId/artifacts/*', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    const rel = artifactPathOf(new URL(c.req.url).pathname)
    if (rel === null)
      throw new ApiError(400, 'invalid_path', 'invalid path: path has malformed percent-encoding', [
        { path: 'path', message: 'has malformed percent-encoding' },
      ])
    const artifact = (await store.artifacts(row.id)).find((a) => a.path === rel)
    if (!artifact) throw new ApiError(404, 'not_found', `job ${row.id} has no artifact at that path`)
    const unsatisfiable = () =>
      c.json(
        {
          error: {
            code: 'range_not_satisfiable',
            message: `the Range header asks for no byte of this ${artifact.size}-byte file`,
          },
        },
        416,
        { 'content-range': `bytes */${artifact.size}` },
      )
    const range = byteRange(c.req.header('range'), artifact.size)
    if (range.kind === 'unsatisfiable') return unsatisfiable()
    let obj: GetObjectCommandOutput
    try {
      obj = await s3.send(
        new GetObjectCommand({
          Bucket: bucket,
          Key: artifact.key,
          // The range as parsed here, never the client's text: every backend then answers the same.
          Range: range.kind === 'partial' ? `bytes=${range.start}-${range.end}` : undefined,
        }),
      )
    } catch (err) {
      const name = (err as Error).name
      if (name === 'NoSuchKey' || name === 'NotFound')
        throw new ApiError(404, 'not_found', `job ${row.id} has no stored file at that path`)
      // The object is shorter than its row says (it should not be): answer as for any range past the end.
      if (name === 'InvalidRange') return unsatisfiable()
      throw err
    }
    const headers: Record<string, string> = {
      'content-type': artifact.contentType,
      'accept-ranges': 'bytes',
      'content-disposition': attachmentDisposition(rel.split('/').pop() ?? ''),
      'x-checksum-sha256': artifact.sha256,
    }
    if (obj.ContentLength !== undefined) headers['content-length'] = String(obj.ContentLength)
    if (obj.ContentRange) headers['content-range'] = obj.ContentRange
    const bodyStream = obj.Body?.transformToWebStream() as ReadableStream | undefined
    return bodyStream ? c.body(bodyStream, obj.ContentRange ? 206 : 200, headers) : c.body(null, 200, headers)
  })
  return app
}
