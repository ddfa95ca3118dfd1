import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { buildChildBundle, buildHandlerBundle } from './child-bundle.ts'
import { jobEnv } from './child-env.ts'
import { terminateGroup } from './process-group.ts'

const here = import.meta.url
/** From dist/ the child is compiled already; from the source tree it is bundled (child-bundle.ts). */
const FROM_SOURCE = here.endsWith('.ts')
const SOURCE_ENTRY = fileURLToPath(new URL(FROM_SOURCE ? './child.ts' : './child.js', here))
/** The bundle, once prepareChildEntry() has made it. */
let bundled: string | undefined
let preparing: Promise<void> | undefined

/**
 * Makes (or finds in its cache) the compiled child, once per host process; until it is there, and if
 * it cannot be made, job processes start from the TypeScript source under tsx (slower, same code).
 */
export function prepareChildEntry(onError: (err: unknown) => void): Promise<void> {
  if (!FROM_SOURCE || process.env.GPU_JOBS_CHILD_ENTRY) return Promise.resolve()
  preparing ??= buildChildBundle().then(
    ({ file }) => {
      bundled = file
    },
    (err: unknown) => onError(err),
  )
  return preparing
}

/** Compiled copies of TypeScript handler modules (buildHandlerBundle), by the path the host was given. */
const compiledModules = new Map<string, string>()

/**
 * Compiles the host's TypeScript handler modules once (or finds them in the cache); until a module is
 * compiled, and if it cannot be, job processes load it from source through tsx (slower, same code).
 */
export async function prepareHandlerModules(
  files: readonly string[],
  onError: (err: unknown) => void,
): Promise<void> {
  await Promise.all(
    files
      .filter((f) => f.endsWith('.ts') && !compiledModules.has(f))
      .map((f) =>
        buildHandlerBundle(f).then(
          (out) => void compiledModules.set(f, out),
          (err: unknown) => onError(err),
        ),
      ),
  )
}

/** The file a job process imports for handler module `file`: its compiled copy once there is one. */
export const handlerModuleFile = (file: string): string => compiledModules.get(file) ?? file

/**
 * The file a job process runs and its Node.js flags. GPU_JOBS_CHILD_ENTRY: a bundled child for machines
 * without the source tree (the GPU check's .device/). Only the TypeScript source needs the tsx loader.
 */
export function childEntry(): { file: string; execArgv: string[] } {
  const file = process.env.GPU_JOBS_CHILD_ENTRY || bundled || SOURCE_ENTRY
  return { file, execArgv: file.endsWith('.ts') ? ['--import', 'tsx'] : [] }
}

/**
 * A forked job process that has loaded its code and waits for a job: the host keeps some ready per GPU
 * device (warm spares, spare-pool.ts) so a job does not wait for Node.js to start. It has run nothing yet, so it is as fresh as a new
 * fork (no CUDA context: it has not touched the GPU). Each is used for one job at most.
 */
export class ChildSpawn {
  readonly child: ChildProcess
  readonly pid: number
  ready = false

  /** `preload`: handler modules (paths) the process imports before it says 'ready'. */
  constructor(cudaVisibleDevices: string | undefined, jobId?: string, preload: readonly string[] = []) {
    const entry = childEntry()
    this.child = fork(entry.file, preload.map(handlerModuleFile), {
      detached: true,
      execArgv: entry.execArgv,
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
