/**
 * The stores of the tests: the Postgres and Redis that the globalSetup provides, a database of its own, an
 * in-process s3rver and a small DATA_DIR. tests/helpers/stack.ts builds whole systems on them.
 */
import { randomUUID } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { S3Client } from '@aws-sdk/client-s3'
import postgres from 'postgres'
import S3rver from 's3rver'
import { createS3Client } from '../../schema/clients.ts'

/**
 * Postgres and Redis of the tests: TEST_DATABASE_URL and TEST_REDIS_URL, which the globalSetup
 * (tests/helpers/global-setup.ts) fills in when unset; the fall-backs only serve a file run without it.
 */
export const TEST_DATABASE_URL =
  process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/gpu_jobs_test'
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/**
 * A database of its own on the tests' Postgres server (migrated when a stack opens it), for a stack whose
 * GPU host runs the reconciler: it takes every unfinished row of its database for one of its own queue.
 */
export async function isolatedDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `gpu_jobs_iso_${randomUUID().slice(0, 8)}`
  const admin = postgres(TEST_DATABASE_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  const url = new URL(TEST_DATABASE_URL)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: async () => {
      await admin.unsafe(`drop database if exists ${name} with (force)`)
      await admin.end()
    },
  }
}

export interface S3Server {
  endpoint: string
  client: S3Client
  dir: string
  close(): Promise<void>
  /** Stops the server, keeping its files (restart with `startS3(port, dir)`). */
  stop(): Promise<void>
}

/** An in-process s3rver on a free port, in a temp dir. */
export async function startS3(port = 0, existingDir?: string): Promise<S3Server> {
  const dir = existingDir ?? (await mkdtemp(path.join(tmpdir(), 's3rver-')))
  const server = new S3rver({ address: '127.0.0.1', port, directory: dir, silent: true })
  const addr = (await server.run()) as AddressInfo
  const endpoint = `http://127.0.0.1:${addr.port}`
  const client = createS3Client({
    endpoint,
    region: 'us-east-1',
    bucket: 'x',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
  })
  return {
    endpoint,
    client,
    dir,
    close: async () => {
      client.destroy()
      await server.close()
      if (!existingDir) await rm(dir, { recursive: true, force: true })
    },
    stop: async () => {
      await server.close()
    },
  }
}

/** A DATA_DIR with a small dataset folder `ds` (and an empty `empty`). */
export async function makeDataDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gpu-data-'))
  await mkdir(path.join(dir, 'ds'), { recursive: true })
  await mkdir(path.join(dir, 'empty'), { recursive: true })
  for (let i = 0; i < 4; i++) {
    await writeFile(path.join(dir, 'ds', `img${i}.png`), `image ${i}`)
    await writeFile(path.join(dir, 'ds', `img${i}.txt`), `a photo of sks person, pose ${i}`)
    await writeFile(path.join(dir, 'ds', `clip${i}.wav`), `audio ${i}`)
  }
  return dir
}
