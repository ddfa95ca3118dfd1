import { createServer } from 'node:net'

/** A TCP port on 127.0.0.1 that was free a moment ago (for a server the test starts itself). */
export const freePort = (): Promise<number> =>
  new Promise<number>((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
    s.once('error', reject)
  })

/** Arguments of a private redis-server on loopback; `aof`: every write on disk, to survive a restart. */
export const redisServerArgs = (port: number, dir: string, { aof = false } = {}): string[] => [
  ...['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir],
  ...(aof ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
]
