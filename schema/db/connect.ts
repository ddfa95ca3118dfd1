import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { tables } from './tables.ts'

export type Db = PgDatabase<PgQueryResultHKT, typeof tables>

/** An open database with its migrations applied; `close()` ends its connections. */
export interface Database {
  db: Db
  kind: 'postgres' | 'pglite'
  /** Cheap round trip, for readiness. */
  ping(): Promise<void>
  close(): Promise<void>
}

/** Advisory lock key that serialises migrations across processes (any fixed bigint: "gpujobs" in ASCII). */
const MIGRATION_LOCK_KEY = '29115572200366707'

export const MIGRATIONS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'migrations')

/**
 * Connects to Postgres at `url` (postgres.js) or, when `url` is absent, to an embedded PGlite under
 * `pgliteDir`; applies the committed migrations either way. Opens nothing until called.
 */
export async function openDatabase(opts: {
  url?: string
  pgliteDir?: string
  poolSize?: number
}): Promise<Database> {
  if (opts.url) {
    const { default: postgres } = await import('postgres')
    const { drizzle } = await import('drizzle-orm/postgres-js')
    const { migrate } = await import('drizzle-orm/postgres-js/migrator')
    const client = postgres(opts.url, {
      max: opts.poolSize ?? 10,
      onnotice: () => {},
      connect_timeout: 5,
      idle_timeout: 30,
    })
    const db = drizzle(client, { schema: tables })
    // Gateways and hosts that start together would all create the same tables at once (and one would fail
    // on "duplicate key ... pg_type_typname_nsp_index"): migrate on a connection of its own that holds a
    // session advisory lock, so they take turns and the later ones find nothing left to do. Ending that
    // connection releases the lock, even when a migration fails.
    const migrator = postgres(opts.url, { max: 1, onnotice: () => {}, connect_timeout: 5 })
    try {
      await migrator`select pg_advisory_lock(${MIGRATION_LOCK_KEY}::bigint)`
      await migrate(drizzle(migrator), { migrationsFolder: MIGRATIONS_DIR })
    } catch (err) {
      await client.end({ timeout: 1 })
      throw err
    } finally {
      await migrator.end({ timeout: 5 })
    }
    return {
      db: db as unknown as Db,
      kind: 'postgres',
      ping: async () => {
        await client`select 1`
      },
      close: () => client.end({ timeout: 5 }),
    }
  }
  const { PGlite } = await import('@electric-sql/pglite')
  const { drizzle } = await import('drizzle-orm/pglite')
  const { migrate } = await import('drizzle-orm/pglite/migrator')
  if (opts.pgliteDir) await mkdir(opts.pgliteDir, { recursive: true })
  const client = new PGlite(opts.pgliteDir)
  const db = drizzle(client, { schema: tables })
  await migrate(db, { migrationsFolder: MIGRATIONS_DIR })
  return {
    db: db as unknown as Db,
    kind: 'pglite',
    ping: async () => {
      await client.query('select 1')
    },
    close: () => client.close(),
  }
}
