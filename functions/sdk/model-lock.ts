/**
 * The lock files of the model cache, one per model beside it: created with O_EXCL, heartbeated (mtime) by
 * their holder, and taken over only when stale (no heartbeat for `staleLockMs`, or a holder of this host
 * whose pid is gone), so a crashed fetcher never blocks a model for good and a live one is never displaced.
 */
import { randomBytes } from 'node:crypto'
import { link, open, readFile, rename, rm, stat, utimes } from 'node:fs/promises'
import { hostname } from 'node:os'
import { isAlive } from '../../schema/startup.ts'

interface LockInfo {
  token: string
  host: string
  pid: number
}

/** A process of this machine that is gone or a zombie (from /proc; kill(pid, 0) elsewhere). */
async function pidDead(pid: number): Promise<boolean> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
  if (s !== null) {
    const state = s.slice(s.lastIndexOf(')') + 2).split(' ')[0]
    return state === 'Z' || state === 'X'
  }
  return !isAlive(pid)
}

const readLock = async (lock: string): Promise<LockInfo | null> => {
  try {
    const info = JSON.parse(await readFile(lock, 'utf8')) as Partial<LockInfo>
    return typeof info.token === 'string' && typeof info.host === 'string' && typeof info.pid === 'number'
      ? (info as LockInfo)
      : null
  } catch {
    return null
  }
}

/** Acquires and takes over lock files; the timings are the cache's options. */
export function createLockFiles(opts: { staleLockMs: number; heartbeatMs: number }) {
  const { staleLockMs, heartbeatMs } = opts
  const me = hostname()

  /** The lock of a dead holder: no heartbeat for staleLockMs, or a pid of this host that is gone. */
  async function isStale(lock: string): Promise<{ ino: number } | null> {
    const st = await stat(lock).catch(() => null)
    if (!st) return null
    if (Date.now() - st.mtimeMs > staleLockMs) return { ino: st.ino }
    const info = await readLock(lock)
    if (info && info.host === me && info.pid !== process.pid && (await pidDead(info.pid)))
      return { ino: st.ino }
    return null
  }

  /**
   * Removes a stale lock without ever removing a fresh one: rename it aside (atomic), and if what was
   * moved is not the inode judged stale (a new holder came in between), link it back.
   */
  async function takeOver(lock: string, ino: number): Promise<void> {
    const aside = `${lock}.${randomBytes(6).toString('hex')}.stale`
    try {
      await rename(lock, aside)
    } catch {
      return
    }
    const moved = await stat(aside).catch(() => null)
    if (moved && moved.ino !== ino) await link(aside, lock).catch(() => {})
    await rm(aside, { force: true })
  }

  async function acquire(lock: string): Promise<(() => Promise<void>) | null> {
    const token = randomBytes(12).toString('hex')
    const handle = await open(lock, 'wx').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') return null
      throw err
    })
    if (!handle) return null
    try {
      await handle.writeFile(
        JSON.stringify({ token, host: me, pid: process.pid, at: new Date().toISOString() }),
      )
    } finally {
      await handle.close()
    }
    // The heartbeat tells waiters on other hosts that this fetch is alive, however long it takes.
    const beat = setInterval(() => {
      const now = new Date()
      void utimes(lock, now, now).catch(() => {})
    }, heartbeatMs)
    beat.unref()
    return async () => {
      clearInterval(beat)
      // Only our own lock: after a takeover (we looked dead) it is someone else's.
      if ((await readLock(lock))?.token === token) await rm(lock, { force: true })
    }
  }

  return {
    /** Creates `lock` if nobody holds it; resolves with its release, or null when it is held. */
    acquire,
    /** Takes a stale `lock` over (removes it); false when it is live, so the caller waits. */
    async takeOverIfStale(lock: string): Promise<boolean> {
      const stale = await isStale(lock)
      if (stale) await takeOver(lock, stale.ino)
      return stale !== null
    },
  }
}
