import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { jobEnv } from './child-env.ts'
import { terminateGroup } from './process-group.ts'

const here = import.meta.url
/** GPU_JOBS_CHILD_ENTRY: a bundled child for machines without the source tree (the GPU check's .device/). */
const CHILD_ENTRY =
  process.env.GPU_JOBS_CHILD_ENTRY ||
  fileURLToPath(new URL(here.endsWith('.ts') ? './child.ts' : './child.js', here))
/** Under tsx (development, tests) the child needs the same loader; production runs compiled JS. */
const CHILD_EXEC_ARGV = CHILD_ENTRY.endsWith('.ts') ? ['--import', 'tsx'] : []

/**
 * A forked job process that has loaded its code and waits for a job: the host keeps one per slot (a warm
 * spare) so a job does not wait for Node.js to start. It has run nothing yet, so it is as fresh as a new
 * fork (no CUDA context: it has not touched the GPU). Each is used for one job at most.
 */
export class ChildSpawn {
  readonly child: ChildProcess
  readonly pid: number
  ready = false

  constructor(cudaVisibleDevices: string | undefined, jobId?: string) {
    this.child = fork(CHILD_ENTRY, [], {
      detached: true,
      execArgv: CHILD_EXEC_ARGV,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // An allow-list, not the host's environment: a job never sees the host's credentials.
      env: jobEnv(process.env, {
        CUDA_VISIBLE_DEVICES: cudaVisibleDevices,
        GPU_JOBS_JOB_ID: jobId,
      }),
    })
    if (this.child.pid === undefined) throw new Error('fork failed: no pid')
    this.pid = this.child.pid
    const onMessage = (raw: unknown) => {
      if ((raw as { kind?: string })?.kind !== 'ready') return
      this.ready = true
      this.child.off('message', onMessage)
    }
    this.child.on('message', onMessage)
  }

  /** Still running (not exited) and able to take a job. */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.connected
  }

  /** Discards an unused spare: its whole group goes. */
  async discard(): Promise<void> {
    await terminateGroup(this.pid, 0)
  }
}
