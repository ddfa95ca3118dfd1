import { mkdir, open, rename, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import type { ModelCache } from './context.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A lock older than this belongs to a dead process (a download touches its temp file as it goes). */
const STALE_LOCK_MS = 10 * 60_000

/**
 * Fetch-once model cache on a shared volume: the first job takes `<name>.lock` (O_EXCL), downloads to a
 * temp file and renames it into place; the others wait for the file to appear. Works across processes
 * and hosts that share the directory.
 */
export function createModelCache(modelsDir: string, signal?: AbortSignal): ModelCache {
  return {
    async ensure(name, fetch) {
      if (!/^[A-Za-z0-9_.\-/]+$/.test(name) || name.split('/').includes('..'))
        throw new Error(`invalid model name "${name}"`)
      const target = path.join(modelsDir, name)
      const lock = `${target}.lock`
      await mkdir(path.dirname(target), { recursive: true })
      for (;;) {
        if (
          await stat(target).then(
            () => true,
            () => false,
          )
        )
          return target
        signal?.throwIfAborted()
        const handle = await open(lock, 'wx').catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'EEXIST') return null
          throw err
        })
        if (handle) {
          const tmp = `${target}.${process.pid}.tmp`
          try {
            await fetch(tmp)
            await rename(tmp, target)
            return target
          } finally {
            await handle.close()
            await rm(tmp, { force: true })
            await rm(lock, { force: true })
          }
        }
        const age = await stat(lock).then(
          (s) => Date.now() - s.mtimeMs,
          () => 0,
        )
        if (age > STALE_LOCK_MS) await rm(lock, { force: true })
        else await sleep(200)
      }
    },
  }
}
