/**
 * Start-up guards of the services: one `npm start` per DATA_DIR (a lock file with its pid), ports checked
 * before anything is opened, and each such failure reported as one line with what to change.
 */
import { readFileSync, unlinkSync } from 'node:fs'
import { link, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import path from 'node:path'

/** A start-up failure the user can fix; its message is the one line to print. */
export class StartupError extends Error {
  override name = 'StartupError'
}

/** A port a service is about to listen on, and the variable that moves it. */
export interface PortUse {
  variable: string
  host: string
  port: number
  /** Who listens there, for the message ("the gateway"). */
  what: string
}

const portInUse = (use: PortUse) =>
  new StartupError(
    `port ${use.port} on ${use.host} is already in use (${use.variable}, ${use.what}): stop what holds it, ` +
      `or set ${use.variable} to a free port`,
  )

/**
 * Fails with a StartupError naming the variable when one of the ports is taken. Run it before opening
 * anything, so a half-started instance never takes a job. Port 0 (any free port) is never taken.
 */
export async function assertPortsFree(uses: PortUse[]): Promise<void> {
  for (const use of uses) {
    if (use.port === 0) continue
    await new Promise<void>((resolve, reject) => {
      const probe = createServer()
      probe.once('error', (err: NodeJS.ErrnoException) =>
        reject(err.code === 'EADDRINUSE' || err.code === 'EACCES' ? portInUse(use) : err),
      )
      probe.listen({ port: use.port, host: use.host, exclusive: true }, () => probe.close(() => resolve()))
    })
  }
}

/**
 * Prints a start-up failure as one line and exits 1: a StartupError, or a listen error on one of `uses`
 * (a port taken between the check and the listen). Anything else is a bug and is rethrown, stack and all.
 */
export function exitOnStartupError(err: unknown, uses: PortUse[] = []): never {
  const e = err as NodeJS.ErrnoException & { port?: number }
  const use = e?.code === 'EADDRINUSE' ? uses.find((u) => u.port === e.port) : undefined
  const failure = err instanceof StartupError ? err : use ? portInUse(use) : undefined
  if (!failure) throw err
  process.stderr.write(`${failure.message}\n`)
  process.exit(1)
}

export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

const readPid = async (file: string): Promise<number | undefined> => {
  const text = await readFile(file, 'utf8').catch(() => '')
  const pid = Number(text.trim())
  return Number.isInteger(pid) && pid > 0 ? pid : undefined
}

/**
 * Takes `dataDir/.lock` for this process (the file holds its pid), so a second instance never opens the
 * same embedded stores. The lock of a pid that is gone (a killed instance) is taken over. It is released
 * by the returned function and, at the latest, when the process exits.
 *
 * ```ts
 * const release = await lockDataDir(config.dataDir) // throws StartupError when another instance holds it
 * ```
 */
export async function lockDataDir(dataDir: string): Promise<() => void> {
  await mkdir(dataDir, { recursive: true })
  const file = path.join(dataDir, '.lock')
  const mine = `${file}.${process.pid}`
  // Written whole first, then linked into place: link() fails when the lock exists, so there is no moment
  // at which another process could read a half-written lock.
  await writeFile(mine, `${process.pid}\n`)
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await link(mine, file)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
        const holder = await readPid(file)
        if (holder !== undefined && holder !== process.pid && isAlive(holder))
          throw new StartupError(
            `another instance (pid ${holder}) is using DATA_DIR ${dataDir} (lock file ${file}): stop it, ` +
              'or set DATA_DIR to another folder',
          )
        // Stale: move it aside. rename() is atomic, so of two starters only one moves it; one that moved a
        // lock another starter had just taken (not the stale pid it read) puts it back and tries again.
        const aside = `${file}.stale.${process.pid}`
        try {
          await rename(file, aside)
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue
          throw e
        }
        if ((await readPid(aside)) !== holder) await rename(aside, file)
        else await rm(aside, { force: true })
        continue
      }
      const release = () => {
        try {
          if (readFileSync(file, 'utf8').trim() === String(process.pid)) unlinkSync(file)
        } catch {
          // Already gone.
        }
      }
      process.once('exit', release)
      return release
    }
    throw new StartupError(`could not take the lock file ${file}: another instance is starting in DATA_DIR`)
  } finally {
    await rm(mine, { force: true })
  }
}
