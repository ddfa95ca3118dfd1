import { CreateBucketCommand, HeadBucketCommand, type S3Client } from '@aws-sdk/client-s3'

/** Creates the artifact bucket unless it exists (another host creating it at the same time is fine). */
export async function ensureBucket(client: S3Client, Bucket: string): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket }))
  } catch {
    await client.send(new CreateBucketCommand({ Bucket })).catch((err: { name?: string }) => {
      if (err.name !== 'BucketAlreadyOwnedByYou' && err.name !== 'BucketAlreadyExists') throw err
    })
  }
}
