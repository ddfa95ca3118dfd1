#!/usr/bin/env node
// A stand-in for the Python of an F5-TTS environment (F5TTS_PYTHON), for CI where the real engine cannot
// run. It answers the three command lines the train_voice handler runs, as F5-TTS 2ae2c9b does:
//   python <F5TTS_DIR>/src/f5_tts/train/datasets/prepare_csv_wavs.py <metadata.csv> <out dir>
//   python -m accelerate.commands.launch [--num_processes N ...] <F5TTS_DIR>/src/f5_tts/train/finetune_cli.py ...
//   (and, started by that launcher as a child process, python <...>/finetune_cli.py ...)
// It checks the arguments as argparse would, finds `f5_tts` on PYTHONPATH as Python would (so its data/ and
// ckpts/ land where the real ones would), replays the recorded output of transcripts/ byte for byte (tqdm's
// `\r` redraws included), and writes files in F5-TTS's formats. See README.md for what it does not do.
//
// Set by the wrapper script a test writes (tests/engines/fake-f5tts/standin.ts), never by the handler:
//   F5_STANDIN_SITE      the src/ folder of the "editable install" (the fake F5TTS_DIR's src)
//   F5_STANDIN_LOG       a file each invocation appends {argv, cwd, env} to, as one JSON line
//   F5_STANDIN_STEP_MS   delay before each tqdm redraw of the epoch bar (0: as fast as possible)
//   F5_STANDIN_FAIL_AT   fail with a Python traceback after this update (exit 1), as a crash would
//   F5_STANDIN_PIDS      a file the launcher, trainer and workers append their pids to
import { spawn } from 'node:child_process'
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import wavefile from 'wavefile'
import { f5Checkpoint } from './torch-zip.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const transcript = (name) => readFileSync(path.join(here, 'transcripts', name))
const env = process.env
const argv = process.argv.slice(2)

if (env.F5_STANDIN_LOG)
  appendFileSync(
    env.F5_STANDIN_LOG,
    `${JSON.stringify({
      argv,
      cwd: process.cwd(),
      env: Object.fromEntries(
        Object.entries(env).filter(
          ([k]) => /^(PYTHON|HF_|CUDA_|F5TTS_)/.test(k) && !k.startsWith('F5_STANDIN'),
        ),
      ),
    })}\n`,
  )
if (env.F5_STANDIN_PIDS) appendFileSync(env.F5_STANDIN_PIDS, `${process.pid}\n`)

const die = (message, code = 1) => {
  process.stderr.write(message.endsWith('\n') ? message : `${message}\n`)
  process.exit(code)
}
const traceback = (where, error) =>
  die(`Traceback (most recent call last):\n  File "${where}", line 1, in <module>\n${error}`)

/** `files("f5_tts")`: the first sys.path entry (script dir, PYTHONPATH, then site) that holds `f5_tts/`. */
function f5Package(scriptPath) {
  const entries = [path.dirname(scriptPath), ...(env.PYTHONPATH ?? '').split(':').filter(Boolean)]
  if (env.F5_STANDIN_SITE) entries.push(env.F5_STANDIN_SITE)
  for (const e of entries) {
    const p = path.join(e, 'f5_tts')
    if (existsSync(p) && statSync(p).isDirectory()) return p
  }
  return die("ModuleNotFoundError: No module named 'f5_tts'")
}
// `files("f5_tts").joinpath("../../x")`: no normalisation, as pathlib does; the OS resolves `..` itself.
const beside = (pkg, rel) => `${pkg}/../../${rel}`

/** argparse: `--flag value` options and store_true flags; unknown ones are an error (exit 2). */
function parseArgs(prog, args, spec) {
  const out = {}
  const positional = []
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (!a.startsWith('--')) {
      positional.push(a)
      continue
    }
    const name = a.slice(2)
    const kind = spec[name]
    if (kind === undefined) die(`usage: ${prog} [-h] ...\n${prog}: error: unrecognized arguments: ${a}`, 2)
    if (kind === 'flag') out[name] = true
    else {
      const value = args[++i]
      if (value === undefined)
        die(`usage: ${prog} [-h] ...\n${prog}: error: argument ${a}: expected one argument`, 2)
      if (Array.isArray(kind) && !kind.includes(value))
        die(`usage: ${prog} [-h] ...\n${prog}: error: argument ${a}: invalid choice: '${value}'`, 2)
      if ((kind === 'int' && !/^-?\d+$/.test(value)) || (kind === 'float' && Number.isNaN(Number(value))))
        die(`usage: ${prog} [-h] ...\n${prog}: error: argument ${a}: invalid ${kind} value: '${value}'`, 2)
      out[name] = value
    }
  }
  return { opts: out, positional }
}

/** Duration of a PCM WAV from its header, as soundfile would read it; throws on anything else. */
function wavDuration(file) {
  const b = readFileSync(file)
  if (b.toString('latin1', 0, 4) !== 'RIFF' || b.toString('latin1', 8, 12) !== 'WAVE')
    throw new Error('Error opening: Format not recognised.')
  let byteRate = 0
  for (let o = 12; o + 8 <= b.length; ) {
    const id = b.toString('latin1', o, o + 4)
    const size = b.readUInt32LE(o + 4)
    if (id === 'fmt ') byteRate = b.readUInt32LE(o + 16)
    if (id === 'data' && byteRate > 0) return size / byteRate
    o += 8 + size + (size % 2)
  }
  throw new Error('Error opening: Format not recognised.')
}

// The recorded prepare_csv_wavs output, as a template: with the recorded inputs (6 clips, out dir
// data/tiny_pinyin, 2 workers) it is the recording byte for byte, less the recorder's own "WALL" line.
function prepare(scriptPath, args) {
  const prog = 'prepare_csv_wavs.py'
  const { opts, positional } = parseArgs(prog, args, { pretrain: 'flag', workers: 'int' })
  if (positional.length !== 2)
    die(
      `usage: ${prog} [-h] [--pretrain] [--workers WORKERS] inp_dir out_dir\n${prog}: error: the following arguments are required: inp_dir, out_dir`,
      2,
    )
  const [csv, outDir] = positional
  const vocabSrc = beside(f5Package(scriptPath), 'data/Emilia_ZH_EN_pinyin/vocab.txt')
  if (!opts.pretrain && !existsSync(vocabSrc))
    traceback(scriptPath, `AssertionError: pretrained vocab.txt not found: ${vocabSrc}`)
  if (!csv.toLowerCase().endsWith('.csv') || !existsSync(csv))
    traceback(scriptPath, `ValueError: input must be a .csv file: ${csv}`)
  const lines = readFileSync(csv, 'utf8')
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
  const header = (lines[0] ?? '').split('|')
  if (header[0]?.trim() !== 'audio_file' || header[1]?.trim() !== 'text')
    traceback(scriptPath, 'ValueError: CSV header must be: audio_file|text')
  const rows = []
  for (const [i, line] of lines.slice(1).entries()) {
    const cols = line.split('|')
    if (cols.length < 2 || !cols[0].trim()) continue
    if (!path.isAbsolute(cols[0].trim()))
      traceback(
        scriptPath,
        `ValueError: audio_file must be an absolute path (row ${i + 2}): ${cols[0].trim()}`,
      )
    rows.push([cols[0].trim(), cols[1].trim()])
  }
  if (rows.length === 0) traceback(scriptPath, 'RuntimeError: No valid rows found in CSV.')
  const workers = opts.workers ?? String(Math.min(2, rows.length))
  const rec = transcript('prepare_csv_wavs.log.raw').toString('utf8')
  const n = String(rows.length)
  const out = []
  out.push(['stdout', `\nProcessing ${n} audio files using ${workers} workers...\n`])
  const bar = (desc, total, rate) =>
    `\r${desc}:   0%|          | 0/${total} [00:00<?, ?it/s]\r${desc}: 100%|${'\u2588'.repeat(10)}| ${total}/${total} [00:00<00:00, ${rate}it/s]\n`
  const rates = [...rec.matchAll(/00:00<00:00, ([\d.]+)it\/s\]/g)].map((m) => m[1])
  out.push(['stderr', bar('Processing chunk 1/1', n, rates[0])])
  const results = []
  for (const [file, text] of rows) {
    if (!existsSync(file)) {
      out.push(['stdout', `audio ${file} not found, skipping\n`])
      continue
    }
    try {
      results.push({ file, text, duration: wavDuration(file) })
    } catch (err) {
      out.push([
        'stdout',
        `Warning: Failed to process ${file} due to error: ${err.message}. Skipping corrupt file.\n`,
      ])
    }
  }
  for (const [stream, text] of out) process[stream].write(text)
  if (results.length === 0) traceback(scriptPath, 'RuntimeError: No valid audio files were processed!')
  process.stderr.write(bar('Converting texts to pinyin', String(Math.ceil(results.length / 100)), rates[1]))
  mkdirSync(outDir, { recursive: true })
  process.stdout.write(`\nSaving to ${outDir} ...\n`)
  process.stderr.write(bar('Writing to raw.arrow ...', String(results.length), rates[2]))
  // raw.arrow: a placeholder (an Arrow IPC stream would need an Arrow writer); the stand-in trainer only
  // checks that it exists, as load_dataset needs it to.
  writeFileSync(
    path.join(outDir, 'raw.arrow'),
    JSON.stringify(results.map(({ file, text, duration }) => ({ audio_path: file, text, duration }))),
  )
  writeFileSync(
    path.join(outDir, 'duration.json'),
    JSON.stringify({ duration: results.map((r) => r.duration) }),
  )
  if (opts.pretrain)
    writeFileSync(
      path.join(outDir, 'vocab.txt'),
      `${[...new Set(rows.flatMap((r) => [...r[1]]))].sort().join('\n')}\n`,
    )
  else copyFileSync(vocabSrc, path.join(outDir, 'vocab.txt'))
  const name = path.basename(outDir)
  const vocabSize = new Set(results.flatMap((r) => [...r.text])).size
  const hours = (results.reduce((s, r) => s + r.duration, 0) / 3600).toFixed(2)
  process.stdout.write(
    `\nFor ${name}, sample count: ${results.length}\nFor ${name}, vocab size is: ${vocabSize}\nFor ${name}, total ${hours} hours\n`,
  )
}

// Which of accelerate's launch options a command line left to defaults, in the order accelerate warns.
const LAUNCH_DEFAULTS = [
  ['num_processes', '`0`'],
  ['num_machines', '`1`'],
  ['mixed_precision', "`'no'`"],
  ['dynamo_backend', "`'no'`"],
]
const TIME_REPORT = (stderr) => stderr.slice(stderr.indexOf('\tCommand being timed'))

async function launch(args) {
  const given = {}
  let i = 0
  for (; i < args.length && args[i].startsWith('--'); i += 2) {
    const name = args[i].slice(2)
    if (!LAUNCH_DEFAULTS.some(([n]) => n === name) && name !== 'num_cpu_threads_per_process')
      die(`accelerate <command> [<args>] launch: error: unrecognized arguments: ${args[i]}`, 2)
    given[name] = args[i + 1]
  }
  const script = args[i]
  if (!script)
    die(
      'accelerate <command> [<args>] launch: error: the following arguments are required: training_script',
      2,
    )
  const missing = LAUNCH_DEFAULTS.filter(([n]) => !(n in given))
  if (missing.length > 0)
    process.stderr.write(
      'The following values were not passed to `accelerate launch` and had defaults used instead:\n' +
        missing.map(([n, v]) => `\t\`--${n}\` was set to a value of ${v}\n`).join('') +
        'To avoid this warning pass in values for each of the problematic parameters or run `accelerate config`.\n',
    )
  // As accelerate's simple launcher: the script in a child process, waited for; a SIGTERM to the launcher
  // is not passed on (Node's default, like Python's, is to die at once).
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), script, ...args.slice(i + 1)], {
    stdio: 'inherit',
    env,
  })
  const code = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1))))
  if (code !== 0) {
    die(
      `Traceback (most recent call last):\n  File "accelerate/commands/launch.py", line 1002, in simple_launcher\nsubprocess.CalledProcessError: Command '[...]' returned non-zero exit status ${code}.`,
    )
  }
  // The recording ran under /usr/bin/time -v, whose report closes stderr; it is replayed as recorded.
  process.stderr.write(TIME_REPORT(transcript('finetune_cli_finetune_pretrain.stderr.raw').toString('utf8')))
}

const FINETUNE_SPEC = {
  exp_name: ['F5TTS_v1_Base', 'F5TTS_Base', 'E2TTS_Base'],
  dataset_name: 'str',
  learning_rate: 'float',
  batch_size_per_gpu: 'int',
  batch_size_type: ['frame', 'sample'],
  max_samples: 'int',
  grad_accumulation_steps: 'int',
  max_grad_norm: 'float',
  epochs: 'int',
  num_warmup_updates: 'int',
  save_per_updates: 'int',
  keep_last_n_checkpoints: 'int',
  last_per_updates: 'int',
  finetune: 'flag',
  pretrain: 'str',
  tokenizer: ['pinyin', 'char', 'custom'],
  tokenizer_path: 'str',
  log_samples: 'flag',
  logger: ['wandb', 'tensorboard'],
  bnb_optimizer: 'flag',
}

/** A DataLoader worker: it sleeps until killed (it does not watch its parent, the worst case). */
function worker() {
  setInterval(() => {}, 60_000)
}

async function finetune(scriptPath, args) {
  const { opts } = parseArgs('finetune_cli.py', args, FINETUNE_SPEC)
  const pkg = f5Package(scriptPath)
  const dataset = opts.dataset_name ?? 'Emilia_ZH_EN'
  const tokenizer = opts.tokenizer ?? 'pinyin'
  const ckpts = beside(pkg, `ckpts/${dataset}`)
  const data = beside(pkg, `data/${dataset}_${tokenizer}`)
  const hubError = (what) =>
    traceback(
      scriptPath,
      `huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache and outgoing traffic has been disabled. (${what})`,
    )
  const recOut = transcript('finetune_cli_finetune_pretrain.stdout').toString('utf8')
  const recErr = transcript('finetune_cli_finetune_pretrain.stderr.raw').toString('utf8')
  if (opts.finetune) {
    // Without --pretrain, finetune_cli fetches the published checkpoint with cached_path: a hub download.
    if (!opts.pretrain) hubError('hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors')
    if (!existsSync(opts.pretrain))
      traceback(scriptPath, `FileNotFoundError: [Errno 2] No such file or directory: '${opts.pretrain}'`)
    mkdirSync(ckpts, { recursive: true })
    const base = path.basename(opts.pretrain)
    const copy = path.join(ckpts, base.startsWith('pretrained_') ? base : `pretrained_${base}`)
    if (!existsSync(copy)) {
      copyFileSync(opts.pretrain, copy)
      process.stdout.write(recOut.slice(0, recOut.indexOf('\n') + 1))
    }
  }
  const vocabFile = path.join(data, 'vocab.txt')
  if (!existsSync(vocabFile))
    traceback(scriptPath, `FileNotFoundError: [Errno 2] No such file or directory: '${vocabFile}'`)
  const vocab = readFileSync(vocabFile, 'utf8')
    .split(/\r?\n/)
    .filter((l, i, all) => i < all.length - 1 || l !== '')
  // "\nvocab :  2545\n\nvocoder :  vocos\nUsing logger: None\nLoading dataset ...\n", with this vocab's size.
  const head = recOut.slice(recOut.indexOf('\n') + 1, recOut.indexOf('Saved last'))
  if (opts.log_samples) {
    const cache = env.HF_HUB_CACHE ?? path.join(env.HOME ?? '/root', '.cache/huggingface/hub')
    const repo = path.join(cache, 'models--charactr--vocos-mel-24khz')
    const rev = existsSync(path.join(repo, 'refs/main'))
      ? readFileSync(path.join(repo, 'refs/main'), 'utf8').trim()
      : ''
    for (const f of ['config.yaml', 'pytorch_model.bin'])
      if (!rev || !existsSync(path.join(repo, 'snapshots', rev, f))) hubError(`charactr/vocos-mel-24khz/${f}`)
  }
  process.stdout.write(head.replace(/vocab : {2}\d+/, `vocab :  ${vocab.length}`))
  for (const f of ['raw.arrow', 'duration.json'])
    if (!existsSync(path.join(data, f)))
      traceback(scriptPath, `FileNotFoundError: [Errno 2] No such file or directory: '${path.join(data, f)}'`)

  // Two DataLoader workers (the real Trainer starts 16), children of the trainer.
  const workers = [0, 1].map(() =>
    spawn(process.execPath, [fileURLToPath(import.meta.url), '--standin-worker'], { stdio: 'ignore', env }),
  )

  const lastEvery = Number(opts.last_per_updates ?? 5000)
  const saveEvery = Number(opts.save_per_updates ?? 50000)
  const failAt = env.F5_STANDIN_FAIL_AT ? Number(env.F5_STANDIN_FAIL_AT) : null
  const step = Number(env.F5_STANDIN_STEP_MS ?? 0)
  const save = (update) => {
    mkdirSync(ckpts, { recursive: true })
    writeFileSync(path.join(ckpts, 'model_last.pt'), f5Checkpoint(update))
    process.stdout.write(`Saved last checkpoint at update ${update}\n`)
  }
  // The trainer's stderr as recorded, after the launcher's warning and before the time report; each `\r`
  // redraw is written on its own, and a save follows the redraw whose postfix first shows its update.
  const body = recErr.slice(recErr.indexOf('\r'), recErr.indexOf('\tCommand being timed'))
  const segments = body.split(/(?=\r)/)
  let update = 0
  for (const seg of segments) {
    if (step > 0 && seg.startsWith('\rEpoch')) await sleep(step)
    process.stderr.write(seg)
    const m = /update=(\d+)\]/.exec(seg)
    if (m && Number(m[1]) > update) {
      update = Number(m[1])
      if (failAt !== null && update >= failAt) {
        await sleep(20)
        // PyTorch's DataLoader workers watch their parent and end with it.
        for (const w of workers) w.kill('SIGKILL')
        die(
          'Traceback (most recent call last):\n  File "src/f5_tts/model/trainer.py", line 385, in train\n    self.accelerator.backward(loss)\nRuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes.',
        )
      }
      if (update % lastEvery === 0) save(update)
      if (update % saveEvery === 0 && opts.log_samples) {
        mkdirSync(path.join(ckpts, 'samples'), { recursive: true })
        for (const kind of ['gen', 'ref'])
          writeFileSync(path.join(ckpts, 'samples', `update_${update}_${kind}.wav`), silentWav(0.5))
      }
    }
  }
  save(update)
  // The DataLoader's workers end with its iterator.
  for (const w of workers) w.kill('SIGKILL')
  process.exit(0)
}

/** A 24 kHz mono 16-bit PCM WAV of silence, as torchaudio.save writes the samples (header + data). */
function silentWav(seconds) {
  const wav = new wavefile.WaveFile()
  wav.fromScratch(1, 24_000, '16', new Int16Array(Math.round(24_000 * seconds)))
  return Buffer.from(wav.toBuffer())
}

const [first, ...rest] = argv
if (first === '--standin-worker') worker()
else if (first === '-m' && rest[0] === 'accelerate.commands.launch') await launch(rest.slice(1))
else if (first === '-m') die(`${process.argv[1]}: No module named ${rest[0]}`)
else if (!first || !existsSync(first))
  die(`python: can't open file '${first}': [Errno 2] No such file or directory`, 2)
else if (first.endsWith('prepare_csv_wavs.py')) prepare(first, rest)
else if (first.endsWith('finetune_cli.py')) await finetune(first, rest)
else die(`stand-in python: no script ${first}`, 2)
