/**
 * The command line of `accelerate launch`, which both training engines (kohya sd-scripts, F5-TTS) start
 * their trainer with: `<python> -m accelerate.commands.launch <options> <script> <script args>`.
 */

/** accelerate launch's options an engine passes, so accelerate asks nothing and warns of no default. */
export interface AccelerateOptions {
  num_processes: number
  num_machines: number
  mixed_precision: 'fp16' | 'bf16' | 'no'
  dynamo_backend: 'no'
  /** Without it accelerate sets OMP_NUM_THREADS=1. */
  num_cpu_threads_per_process?: number
}

/**
 * The interpreter's arguments that launch `script` with accelerate: the options in the order given, each
 * as `--name=value` or as `--name value` (`form`, as each engine's recorded runs pass them), then the
 * script and its own arguments.
 *
 * @example
 * accelerateLaunch({ num_processes: 1, num_machines: 1, mixed_precision: 'no', dynamo_backend: 'no' },
 *   'train_network.py', ['--sdpa'], 'name=value')
 * // ['-m', 'accelerate.commands.launch', '--num_processes=1', ..., 'train_network.py', '--sdpa']
 */
export function accelerateLaunch(
  options: AccelerateOptions,
  script: string,
  scriptArgs: readonly string[],
  form: 'name=value' | 'name value',
): string[] {
  const given = Object.entries(options).filter(([, value]) => value !== undefined)
  return [
    '-m',
    'accelerate.commands.launch',
    ...given.flatMap(([name, value]) =>
      form === 'name=value' ? [`--${name}=${value}`] : [`--${name}`, String(value)],
    ),
    script,
    ...scriptArgs,
  ]
}
