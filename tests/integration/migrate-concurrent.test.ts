import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { afterAll, describe, expect, it } from 'vitest'
import { TEST_DATABASE_URL } from '../helpers/stack.ts'

const OPEN = fileURLToPath(new URL('../fixtures/open-database.ts', import.meta.url))
const PROCESSES = 5
const ROUNDS = 4

/** The server of the test database, reached through its maintenance connection for create/drop. */
const admin = postgres(TEST_DATABASE_URL, { max: 1, onnotice: () => {} })
afterAll(() => admin.end({ timeout: 5 }))

const openIn = (url: string) =>
  new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', OPEN, url], {
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    child.on('exit', (code) => resolve({ code, stderr }))
  })

describe('migrations from several processes at once (gateway and hosts starting together)', () => {
  it(`${PROCESSES} processes on a fresh database: every one starts, ${ROUNDS} rounds`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const name = `gpu_jobs_mig_${randomBytes(6).toString('hex')}`
      await admin.unsafe(`create database ${name}`)
      try {
        const url = new URL(TEST_DATABASE_URL)
        url.pathname = `/${name}`
        const results = await Promise.all(Array.from({ length: PROCESSES }, () => openIn(url.toString())))
        expect(results, `round ${round}`).toEqual(results.map(() => ({ code: 0, stderr: '' })))
        const db = postgres(url.toString(), { max: 1, onnotice: () => {} })
        try {
          const applied = await db`select count(*)::int as n from drizzle.__drizzle_migrations`
          const tables =
            await db`select count(*)::int as n from information_schema.tables where table_name = 'jobs'`
          expect(tables[0]?.n).toBe(1)
          expect(applied[0]?.n).toBeGreaterThan(0)
        } finally {
          await db.end({ timeout: 5 })
        }
      } finally {
        await admin.unsafe(`drop database if exists ${name} with (force)`)
      }
    }
  }, 240_000)
})
