/**
 * Stand-in for kohya sd-scripts' Python, run by ./python. CI has no sd-scripts, torch or model, so this
 * plays both processes of a real run:
 *
 * - `python -m accelerate.commands.launch [--opts] <KOHYA_DIR>/train_network.py [args]`: checks the launcher's
 *   options and the environment (PYTHONUNBUFFERED=1, HF_HUB_OFFLINE=1), then starts `python <script> args`
 *   as a child and waits for it, passing on no signal (as accelerate's simple launcher does), so killing
 *   only the launcher would leave the trainer running.
 * - `python <KOHYA_DIR>/train_network.py [args]`: checks the arguments as train_network.py's argparse would
 *   (an unknown one is exit 2 with argparse's usage error), then replays a recorded run byte for byte
 *   (transcripts/train_network_run3.* with kohya's default rich logging; run4.* with --console_log_simple):
 *   stderr as recorded, `\r` redraws included, one write per tqdm redraw or line, a pause before each
 *   `steps:` redraw; stdout's blocks (startup, `epoch k/E`, `saving checkpoint:`) at the point of the
 *   run they belong to. Before each `saving checkpoint:` it writes a real kohya-format LoRA (SD1.5 module
 *   names, lora_down/lora_up/alpha, F32, `ss_*` and `modelspec.*` metadata as kohya writes them) to
 *   `--output_dir`.
 *
 * Scenario: `stand-in.json` beside train_network.py (all optional), see {@link Scenario}. Not recorded,
 * so made up: a failure (`failAtStep`) prints a Python traceback and exits 1.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { appendFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { sd15LoraTensors } from '../../../functions/formats/kohya-lora.ts'
import { encodeSafetensors } from '../../../functions/formats/safetensors.ts'

export interface Scenario {
  /** Which recording to replay; default run3, or run4 when --console_log_simple is passed. */
  transcript?: 'run3' | 'run4'
  /** Pause before each `steps:` redraw (default 20 ms). */
  stepMs?: number
  /** Print a traceback and exit 1 when the bar reaches this step. */
  failAtStep?: number
  /** Stop before the bar passes this step and never go on (a trainer mid-step, for cancel and timeout). */
  hangAtStep?: number
  /** The trainer ignores SIGTERM (a process stuck in native code), so only SIGKILL stops it. */
  ignoreSigterm?: boolean
  /** Options to refuse as argparse does an unknown one (an sd-scripts older than the handler). */
  unknownOptions?: string[]
  /** Exit 0 without writing any file. */
  noOutput?: boolean
  /** Append `{role, pid, pgid, argv, env, cwd}` of each process here, one JSON object a line. */
  recordFile?: string
}

const here = path.dirname(fileURLToPath(import.meta.url))
const PYTHON = path.join(here, 'python')
const argv = process.argv.slice(2)

const die = (code: number, message: string): never => {
  process.stderr.write(`${message}\n`)
  process.exit(code)
}
const write = (stream: NodeJS.WriteStream, data: string | Buffer) =>
  new Promise<void>((resolve) => {
    if (stream.write(data)) resolve()
    else stream.once('drain', resolve)
  })

const scenarioFor = (script: string): Scenario => {
  const file = path.join(path.dirname(script), 'stand-in.json')
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Scenario) : {}
}

const pgidOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2])
}

function record(scenario: Scenario, role: string): void {
  if (!scenario.recordFile) return
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => /^(PYTHON|HF_|KOHYA|CUDA|PATH$|HOME$)/.test(k)),
  )
  const entry = { role, pid: process.pid, pgid: pgidOf(process.pid), argv, env, cwd: process.cwd() }
  appendFileSync(scenario.recordFile, `${JSON.stringify(entry)}\n`)
}

// ---- accelerate launch -------------------------------------------------------------------------------

const ACCELERATE_OPTIONS = new Set([
  'num_processes',
  'num_machines',
  'num_cpu_threads_per_process',
  'mixed_precision',
  'dynamo_backend',
])

async function launch(args: string[]): Promise<void> {
  const opts = new Map<string, string>()
  let i = 0
  for (; i < args.length && args[i]!.startsWith('--'); i++) {
    const m = /^--([\w-]+)(?:=(.*))?$/.exec(args[i]!)
    const name = m?.[1]?.replaceAll('-', '_') ?? ''
    if (!ACCELERATE_OPTIONS.has(name))
      die(2, `accelerate <command> [<args>] launch: error: unrecognized arguments: ${args[i]}`)
    opts.set(name, m?.[2] ?? args[++i] ?? '')
  }
  const script = args[i]
  if (!script)
    die(
      2,
      'accelerate <command> [<args>] launch: error: the following arguments are required: training_script',
    )
  if (!existsSync(script!)) die(2, `python: can't open file '${script}': [Errno 2] No such file or directory`)
  if (opts.get('num_processes') !== '1') die(1, 'stand-in: expected --num_processes=1')
  if (!['no', 'fp16', 'bf16'].includes(opts.get('mixed_precision') ?? 'no'))
    die(1, `stand-in: bad --mixed_precision ${opts.get('mixed_precision')}`)
  for (const [k, value] of [
    ['PYTHONUNBUFFERED', '1'],
    ['HF_HUB_OFFLINE', '1'],
  ] as const)
    if (process.env[k] !== value) die(1, `stand-in: the engine must run with ${k}=${value}`)
  const scenario = scenarioFor(script!)
  record(scenario, 'launcher')
  // accelerate's simple launcher: Popen([sys.executable, script, *args]) and wait, forwarding nothing.
  const child = spawn(PYTHON, args.slice(i), { stdio: 'inherit' })
  const code = await new Promise<number>((resolve) =>
    child.once('exit', (c, signal) => resolve(c ?? (signal === 'SIGKILL' ? 137 : 143))),
  )
  process.exit(code)
}

// ---- train_network.py ----------------------------------------------------------------------------------

/** The train_network.py options the stand-in knows (a subset of the real parser's); true = takes no value. */
const TRAIN_OPTIONS: Record<string, boolean> = {
  pretrained_model_name_or_path: false,
  tokenizer_cache_dir: false,
  dataset_config: false,
  train_data_dir: false,
  output_dir: false,
  output_name: false,
  save_model_as: false,
  network_module: false,
  network_dim: false,
  network_alpha: false,
  learning_rate: false,
  optimizer_type: false,
  lr_scheduler: false,
  max_train_epochs: false,
  max_train_steps: false,
  save_every_n_epochs: false,
  save_every_n_steps: false,
  mixed_precision: false,
  save_precision: false,
  seed: false,
  resolution: false,
  caption_extension: false,
  train_batch_size: false,
  config_file: false,
  sdpa: true,
  xformers: true,
  gradient_checkpointing: true,
  cache_latents: true,
  console_log_simple: true,
}

function parseTrainArgs(args: string[], unknown: readonly string[] = []): Map<string, string | true> {
  const out = new Map<string, string | true>()
  const usage = 'usage: train_network.py [-h] [--console_log_level {DEBUG,INFO,WARNING,ERROR,CRITICAL}]'
  for (let i = 0; i < args.length; i++) {
    const m = /^--(\w+)(?:=(.*))?$/s.exec(args[i]!)
    const name = m?.[1] ?? ''
    if (!m || !(name in TRAIN_OPTIONS) || unknown.includes(name))
      die(2, `${usage}\ntrain_network.py: error: unrecognized arguments: ${args[i]}`)
    if (TRAIN_OPTIONS[name]) out.set(name, true)
    else {
      const value = m?.[2] ?? args[++i]
      if (value === undefined)
        die(2, `${usage}\ntrain_network.py: error: argument --${name}: expected one argument`)
      out.set(name, value!)
    }
  }
  return out
}

/** Checks what kohya itself would refuse, with the message it would give (or close to it). */
function checkTrainArgs(a: Map<string, string | true>): void {
  const str = (k: string) => (typeof a.get(k) === 'string' ? (a.get(k) as string) : undefined)
  const model = str('pretrained_model_name_or_path')
  if (!model || !existsSync(model))
    die(1, `OSError: ${model} does not appear to have a file named model_index.json.`)
  const tok = str('tokenizer_cache_dir')
  if (!tok || !existsSync(path.join(tok, 'openai_clip-vit-large-patch14')))
    die(1, "OSError: We couldn't connect to 'https://huggingface.co' to load the files (HF_HUB_OFFLINE=1).")
  const config = str('dataset_config')
  if (!config || !existsSync(config)) die(1, `FileNotFoundError: ${config}`)
  for (const m of readFileSync(config!, 'utf8').matchAll(/image_dir = "((?:[^"\\]|\\.)*)"/g)) {
    const dir = JSON.parse(`"${m[1]}"`) as string
    if (!existsSync(dir)) die(1, `ValueError: not directory: ${dir}`)
  }
  const out = str('output_dir')
  if (!out || !statSync(out, { throwIfNoEntry: false })?.isDirectory())
    die(1, `stand-in: no output_dir ${out}`)
  if (str('network_module') !== 'networks.lora')
    die(1, `ModuleNotFoundError: No module named '${str('network_module')}'`)
  if (!/^\d+$/.test(str('network_dim') ?? ''))
    die(2, `train_network.py: error: argument --network_dim: invalid int value`)
  if (str('save_model_as') !== 'safetensors') die(1, 'stand-in: expected --save_model_as=safetensors')
}

interface Piece {
  stream: 'stdout' | 'stderr'
  data: Buffer
  /** Step shown by a `steps:` redraw. */
  step?: number
}

const TRANSCRIPTS = path.join(here, 'transcripts')

/**
 * The recording without what the recording harness added around it (run_kohya.sh): `/usr/bin/time -v`'s
 * report at the end of stderr and `rc=N` at the end of stdout.
 */
function loadTranscript(name: string): { stdout: string; stderr: Buffer } {
  const stderr = readFileSync(path.join(TRANSCRIPTS, `train_network_${name}.stderr.raw`))
  const timeReport = stderr.indexOf('\tCommand being timed:')
  const stdout = readFileSync(path.join(TRANSCRIPTS, `train_network_${name}.stdout`), 'utf8').replace(
    /rc=\d+\n$/,
    '',
  )
  return { stdout, stderr: timeReport >= 0 ? stderr.subarray(0, timeReport) : stderr }
}

/** stderr as it was written: a piece before each `\r` and after each `\n`. */
function stderrPieces(raw: Buffer): Piece[] {
  const pieces: Piece[] = []
  let start = 0
  for (let i = 0; i <= raw.length; i++) {
    const at = raw[i]
    const cut = i === raw.length || (at === 0x0d && i > start) || raw[i - 1] === 0x0a
    if (cut && i > start) {
      const data = raw.subarray(start, i)
      const m = /^\rsteps:\s+\d+%\|[^|]*\|\s*(\d+)\//.exec(data.toString('utf8'))
      pieces.push({ stream: 'stderr', data, step: m ? Number(m[1]) : undefined })
      start = i
    }
  }
  return pieces
}

/** stdout cut before each `epoch k/E` and `saving checkpoint:` line, with the step each block follows. */
function stdoutBlocks(stdout: string, spe: number, total: number) {
  const blocks: { text: string; afterStep: number; checkpoint?: string; final?: boolean }[] = []
  const re = /\n(?=epoch \d+\/\d+\n)|\n(?=saving checkpoint: )/g
  let last = 0
  const cuts: number[] = []
  for (let m = re.exec(stdout); m; m = re.exec(stdout)) cuts.push(m.index)
  for (const cut of [...cuts, stdout.length]) {
    const text = stdout.slice(last, cut)
    last = cut
    if (!text) continue
    const epoch = /^\nepoch (\d+)\//.exec(text)
    const saving = /^\nsaving checkpoint: (.+)$/m.exec(text)
    if (epoch) blocks.push({ text, afterStep: (Number(epoch[1]) - 1) * spe })
    else if (saving) {
      const file = path.basename(saving[1]!)
      const stepSave = /-step(\d{8})\./.exec(file)
      const epochSave = /-(\d{6})\./.exec(file)
      const afterStep = stepSave ? Number(stepSave[1]) : epochSave ? Number(epochSave[1]) * spe : total
      blocks.push({ text, afterStep, checkpoint: file, final: !stepSave && !epochSave })
    } else blocks.push({ text, afterStep: -1 })
  }
  return blocks
}

function loraFile(a: Map<string, string | true>, steps: number, epoch: number, images: number): Buffer {
  const rank = Number(a.get('network_dim'))
  const alpha = Number(a.get('network_alpha') ?? 1)
  const tensors = sd15LoraTensors({ rank, alpha, seed: String(a.get('output_dir')), dtype: 'F32' })
  const body = Buffer.concat([...encodeSafetensors(tensors)])
  const config = readFileSync(a.get('dataset_config') as string, 'utf8')
  const res = Number(/resolution = (\d+)/.exec(config)?.[1] ?? 512)
  const subsets = config
    .split('[[datasets.subsets]]')
    .slice(1)
    .map((block) => {
      const dir = JSON.parse(/image_dir = ("(?:[^"\\]|\\.)*")/.exec(block)?.[1] ?? '""') as string
      const tokens = /class_tokens = ("(?:[^"\\]|\\.)*")/.exec(block)?.[1]
      return {
        image_dir: path.basename(dir),
        img_count: readdirSync(dir).filter((f) => /\.(png|jpe?g|webp|bmp)$/i.test(f)).length,
        num_repeats: Number(/num_repeats = (\d+)/.exec(block)?.[1] ?? 1),
        class_tokens: tokens === undefined ? null : (JSON.parse(tokens) as string),
      }
    })
  const now = Date.now() / 1000
  const model = String(a.get('pretrained_model_name_or_path'))
  const metadata: Record<string, string> = {
    'modelspec.architecture': 'stable-diffusion-v1/lora',
    'modelspec.implementation': 'diffusers',
    'modelspec.sai_model_spec': '1.0.1',
    'modelspec.title': String(a.get('output_name')),
    'modelspec.resolution': `${res}x${res}`,
    ss_session_id: String(Math.floor(Math.random() * 2 ** 32)),
    ss_training_started_at: String(startedAt),
    ss_training_finished_at: String(now),
    ss_output_name: String(a.get('output_name')),
    ss_learning_rate: String(a.get('learning_rate')),
    ss_num_train_images: String(images),
    ss_num_epochs: String(a.get('max_train_epochs') ?? 1),
    ss_epoch: String(epoch),
    ss_steps: String(steps),
    ss_max_train_steps: String(steps),
    ss_network_module: 'networks.lora',
    ss_network_dim: String(rank),
    ss_network_alpha: alpha.toFixed(1),
    ss_mixed_precision: String(a.get('mixed_precision') ?? 'no'),
    ss_optimizer: 'torch.optim.adamw.AdamW',
    ss_lr_scheduler: String(a.get('lr_scheduler') ?? 'constant'),
    // With --dataset_config kohya describes the datasets in ss_datasets (no ss_resolution).
    ss_datasets: JSON.stringify([
      {
        is_dreambooth: true,
        batch_size_per_device: 1,
        num_train_images: subsets.reduce((n, x) => n + x.img_count * x.num_repeats, 0),
        num_reg_images: 0,
        resolution: [res, res],
        enable_bucket: false,
        subsets: subsets.map((x) => ({ ...x, is_reg: false })),
      },
    ]),
    ss_dataset_dirs: JSON.stringify(
      Object.fromEntries(
        subsets.map((x) => [x.image_dir, { n_repeats: x.num_repeats, img_count: x.img_count }]),
      ),
    ),
    ss_sd_model_name: path.basename(model),
    ss_base_model_version: 'sd_v1',
    ss_v2: 'False',
    sshs_model_hash: createHash('sha256').update(body).digest('hex'),
  }
  return Buffer.concat([...encodeSafetensors(tensors, metadata)])
}

const startedAt = Date.now() / 1000

async function train(args: string[]): Promise<void> {
  const script = args[0]!
  const scenario = scenarioFor(script)
  record(scenario, 'trainer')
  if (scenario.ignoreSigterm) process.on('SIGTERM', () => {})
  const a = parseTrainArgs(args.slice(1), scenario.unknownOptions)
  checkTrainArgs(a)
  const name = scenario.transcript ?? (a.get('console_log_simple') ? 'run4' : 'run3')
  const { stdout, stderr } = loadTranscript(name)
  const stepMs = scenario.stepMs ?? 20
  const total = Number(/total optimization steps[^:]*: (\d+)/.exec(stdout)?.[1])
  const epochs = Number(/num epochs[^:]*: (\d+)/.exec(stdout)?.[1])
  const spe = total / epochs
  const blocks = stdoutBlocks(stdout, spe, total)
  const outDir = a.get('output_dir') as string
  const outName = a.get('output_name') as string

  const emitBlock = async (b: (typeof blocks)[number]) => {
    if (b.checkpoint && !scenario.noOutput) {
      const file = b.checkpoint.replace(/^tinylora/, outName)
      const epoch = /-(\d{6})\./.exec(file)?.[1]
      writeFileSync(path.join(outDir, file), loraFile(a, b.afterStep, epoch ? Number(epoch) : epochs, spe))
    }
    await write(process.stdout, b.text)
  }
  let nextBlock = 0
  let started = false
  for (const piece of stderrPieces(stderr)) {
    if (piece.step !== undefined) {
      if (!started) {
        // The startup stdout (dataset, "running training" block) is printed before the bar is created.
        while (blocks[nextBlock]?.afterStep === -1) await emitBlock(blocks[nextBlock++]!)
        started = true
      }
      await sleep(stepMs)
      // Apart in time from the redraws around it: the two pipes are read in no fixed order otherwise.
      let emitted = false
      while (blocks[nextBlock] && !blocks[nextBlock]!.final && piece.step > blocks[nextBlock]!.afterStep) {
        await emitBlock(blocks[nextBlock++]!)
        emitted = true
      }
      if (emitted) await sleep(Math.min(stepMs, 10))
      if (scenario.hangAtStep !== undefined && piece.step > scenario.hangAtStep) {
        setInterval(() => {}, 60_000)
        return
      }
      if (scenario.failAtStep !== undefined && piece.step >= scenario.failAtStep) {
        await write(
          process.stderr,
          `\nTraceback (most recent call last):\n  File "${script}", line 1772, in <module>\n    trainer.train(args)\n  File "${script}", line 1424, in train\n    loss = self.process_batch(batch)\nRuntimeError: stand-in failure at step ${piece.step}\n`,
        )
        process.exit(1)
      }
    } else if (started && /model saved\./.test(piece.data.toString('utf8'))) {
      // Rich logging: "model saved." follows the final checkpoint's stdout line.
      while (blocks[nextBlock]) await emitBlock(blocks[nextBlock++]!)
    }
    await write(process.stderr, piece.data)
  }
  while (blocks[nextBlock]) await emitBlock(blocks[nextBlock++]!)
}

if (argv[0] === '-m') {
  if (argv[1] === 'accelerate.commands.launch') await launch(argv.slice(2))
  else die(1, `${process.execPath}: No module named ${argv[1]}`)
} else if (argv[0]?.endsWith('train_network.py')) {
  await train(argv)
} else die(2, `stand-in python: unexpected arguments ${JSON.stringify(argv)}`)
