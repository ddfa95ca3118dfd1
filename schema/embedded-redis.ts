/**
 * The embedded Redis of `npm start`: a redis-server under DATA_DIR/redis (loopback, AOF on) for a machine
 * that has one installed but not running, stopped with `npm start` and killed when `npm start` dies.
 */
import { spawn } from 'node:child_process'
import { mkdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { probeRedis } from './clients.ts'
import { findExecutable } from './executables.ts'
import { StartupError } from './startup.ts'

/** The full path of `command` on PATH, or undefined. */
export const findOnPath = (command: string): Promise<string | undefined> => findExecutable(command)

export interface EmbeddedRedis {
  /** redis-server's pid (also in `dir/redis.pid`). */
  pid: number
  dir: string
  /** Stops it (SIGTERM: it writes its AOF and exits) and waits for it. */
  stop(): Promise<void>
}

// The watchdog between us and redis-server: it starts redis in the background and waits for its stdin to
// close, which happens when we stop it and also when this process dies in any way (even SIGKILL), and
// then stops redis. A shell, so no second Node.js process is needed for it.
const WATCHDOG = '"$0" "$@" & r=$!; echo "$r"; read -r _; kill -TERM "$r" 2>/dev/null; wait "$r"'

/**
 * Starts `server` (redis-server) on 127.0.0.1 at the port of `url` with its files in `dir`, and waits until
 * it answers. Throws a StartupError naming its log file when it does not come up.
 */
export async function startEmbeddedRedis(opts: {
  server: string
  dir: string
  url: string
}): Promise<EmbeddedRedis> {
  const { dir, url } = opts
  await mkdir(dir, { recursive: true })
  const port = new URL(url).port || '6379'
  const logFile = path.join(dir, 'redis.log')
  const args = [
    ...['--port', port, '--bind', '127.0.0.1', '--dir', dir],
    ...['--appendonly', 'yes', '--save', '', '--daemonize', 'no'],
    ...['--pidfile', path.join(dir, 'redis.pid'), '--logfile', logFile],
  ]
  const watchdog = spawn('sh', ['-c', WATCHDOG, opts.server, ...args], {
    // Its own process group: the terminal's Ctrl-C reaches us, and we stop Redis last, after the services
    // that use it have closed.
    detached: true,
    stdio: ['pipe', 'pipe', 'ignore'],
  })
  const exited = new Promise<void>((resolve) => watchdog.once('exit', () => resolve()))
  let gone = false
  void exited.then(() => {
    gone = true
  })
  const pid = await new Promise<number>((resolve, reject) => {
    watchdog.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())))
    void exited.then(() => reject(new Error('exited')))
  }).catch(() => 0)

  const failed = async (why: string) => {
    watchdog.stdin?.end()
    const tail = (await readFile(logFile, 'utf8').catch(() => ''))
      .trim()
      .split('\n')
      .filter((l) => /#/.test(l))
      .at(-1)
    return new StartupError(
      `the embedded Redis (redis-server on 127.0.0.1:${port}) ${why}` +
        `${tail ? `: ${tail.replace(/^.*# /, '')}` : ''} (log: ${logFile}); or set REDIS_URL`,
    )
  }
  const deadline = Date.now() + 15_000
  for (;;) {
    if (gone || pid === 0) throw await failed('did not start')
    try {
      await probeRedis(url, 500)
      break
    } catch {
      if (Date.now() > deadline) throw await failed('did not answer within 15 s')
      await sleep(100)
    }
  }
  return {
    pid,
    dir,
    stop: async () => {
      watchdog.stdin?.end()
      const timer = setTimeout(() => {
        if (!gone && watchdog.pid) process.kill(-watchdog.pid, 'SIGKILL')
      }, 10_000)
      await exited
      clearTimeout(timer)
    },
  }
}
