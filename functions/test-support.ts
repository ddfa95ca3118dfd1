import { execFile, spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import installedFfprobe from '@ffprobe-installer/ffprobe'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { JobType } from '../schema/params/index.ts'
import { NonRetryableError } from './sdk/errors.ts'
import { createTestContext, type RecordedProgress, type TestContext } from './sdk/testing.ts'

/**
 * Helpers for the handler tests (not a test file itself): a throw-away DATA_DIR with small datasets, a
 * suite's test contexts over it, the dataset refusals every training type shares, progress checks,
 * cancellation after a given number of progress events, and ffprobe as an independent reader.
 */

export interface DataDirFixture {
  /** DATA_DIR for the test context. */
  dataDir: string
  /** A folder beside DATA_DIR, outside it, holding a file a bad datasetPath might try to reach. */
  outside: string
  cleanup(): Promise<void>
}

/**
 * Lays out, under a new temp folder:
 * - `data/lora_ds/10_sks dog/`: 3 images with captions (kohya's `<repeats>_<class>` layout)
 * - `data/voice_ds/`: `metadata.csv` and `wavs/*.wav` (F5-TTS's prepare_csv_wavs input)
 * - `data/empty_ds/`: only a hidden file, so empty as far as training goes
 * - `data/not_a_folder.txt`, and `data/escape`, a symlink to `outside/`
 */
export async function makeDataDir(): Promise<DataDirFixture> {
  const root = await mkdtemp(path.join(tmpdir(), 'gpu-jobs-data-'))
  const dataDir = path.join(root, 'data')
  const outside = path.join(root, 'outside')
  const lora = path.join(dataDir, 'lora_ds', '10_sks dog')
  const voice = path.join(dataDir, 'voice_ds')
  await Promise.all([
    mkdir(lora, { recursive: true }),
    mkdir(path.join(voice, 'wavs'), { recursive: true }),
    mkdir(path.join(dataDir, 'empty_ds'), { recursive: true }),
    mkdir(outside, { recursive: true }),
  ])
  for (const i of ['001', '002', '003']) {
    await writeFile(path.join(lora, `${i}.png`), 'not really a png')
    await writeFile(path.join(lora, `${i}.caption`), 'a photo of sks dog')
    await writeFile(path.join(voice, 'wavs', `${i}.wav`), 'not really a wav')
  }
  await writeFile(path.join(voice, 'metadata.csv'), 'audio_file|text\n/abs/wavs/001.wav|hello there\n')
  await writeFile(path.join(dataDir, 'empty_ds', '.keep'), '')
  await writeFile(path.join(dataDir, 'not_a_folder.txt'), 'x')
  await writeFile(path.join(outside, 'secret.png'), 'outside DATA_DIR')
  await symlink(outside, path.join(dataDir, 'escape'))
  return { dataDir, outside, cleanup: () => rm(root, { recursive: true, force: true }) }
}

/** What a suite's test context may set besides its DATA_DIR and step time: job type and id, engine settings. */
export type SuiteContextOptions = Omit<
  NonNullable<Parameters<typeof createTestContext>[0]>,
  'dataDir' | 'simulateStepMs'
>

export interface HandlerSuite {
  /** The suite's DATA_DIR fixture (made before its first test). */
  readonly fx: DataDirFixture
  /** A new test context over the fixture, its simulated steps `simulateStepMs` long; removed after the suite. */
  context(simulateStepMs?: number, opts?: SuiteContextOptions): Promise<TestContext>
}

/**
 * The set-up of a handler suite: one DATA_DIR fixture made before its tests and, after them, it and every
 * test context removed. Call it at the top of a test file.
 *
 * @example
 * const suite = handlerSuite({ type: 'train_lora', jobId: 'lora-job-1' })
 * const t = await suite.context(5)
 */
export function handlerSuite(defaults: { type: JobType; jobId?: string }): HandlerSuite {
  let fx: DataDirFixture | undefined
  const contexts: TestContext[] = []
  beforeAll(async () => {
    fx = await makeDataDir()
  })
  afterAll(async () => {
    await Promise.all(contexts.map((t) => t.cleanup()))
    await fx?.cleanup()
  })
  const fixture = (): DataDirFixture => {
    if (!fx) throw new Error('the DATA_DIR fixture is made in beforeAll: use it inside a test')
    return fx
  }
  return {
    get fx() {
      return fixture()
    },
    async context(simulateStepMs = 0, opts = {}) {
      const t = await createTestContext({ ...defaults, ...opts, dataDir: fixture().dataDir, simulateStepMs })
      contexts.push(t)
      return t
    },
  }
}

/**
 * The dataset refusals of a training type, as tests: a dataset that is empty, missing or a file is
 * `invalid_dataset` and stores nothing; a path that leads out of DATA_DIR is `invalid_params` before
 * anything is read (no progress).
 */
export function itRefusesBadDatasets(
  suite: HandlerSuite,
  run: (t: TestContext, datasetPath: string) => Promise<unknown>,
): void {
  it.each([
    ['an empty dataset', 'empty_ds', /is empty/],
    ['a missing dataset', 'no_such_ds', /does not exist/],
    ['a file instead of a folder', 'not_a_folder.txt', /is not a folder/],
  ])('refuses %s as invalid_dataset', async (_what, datasetPath, message) => {
    const t = await suite.context()
    const err = await rejectionOf(run(t, datasetPath))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_dataset')
    expect(err.message).toMatch(message)
    expect(t.artifacts.files.size).toBe(0)
  })

  it.each([
    ['a relative path out of DATA_DIR', '../etc'],
    ['an absolute path outside DATA_DIR', '/etc'],
    ['a symlink that leads outside', 'escape'],
  ])('refuses %s as invalid_params before reading it', async (_what, datasetPath) => {
    const t = await suite.context()
    const err = await rejectionOf(run(t, datasetPath))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_params')
    expect(t.progress).toHaveLength(0)
  })
}

/** Checks progress rose monotonically within 0..100 and ended at exactly 100. */
export function expectProgressToEndAt100(progress: readonly RecordedProgress[]): void {
  expect(progress.length).toBeGreaterThan(0)
  for (const [i, p] of progress.entries()) {
    expect(p.percent).toBeGreaterThanOrEqual(0)
    expect(p.percent).toBeLessThanOrEqual(100)
    if (i > 0) expect(p.percent).toBeGreaterThanOrEqual(progress[i - 1]!.percent)
  }
  expect(progress.at(-1)?.percent).toBe(100)
}

/**
 * Checks a training run's progress: it rises to exactly 100; `count` of its events are per-step ones
 * (`Epoch ...`), the first matching `first` and the last `last`; the loss they report falls from the first
 * to the last. Returns those losses.
 */
export function expectEpochProgress(
  progress: readonly RecordedProgress[],
  count: number,
  first: RegExp,
  last: RegExp,
): number[] {
  expectProgressToEndAt100(progress)
  const steps = progress.filter((p) => p.message?.startsWith('Epoch '))
  expect(steps).toHaveLength(count)
  expect(steps[0]?.message).toMatch(first)
  expect(steps.at(-1)?.message).toMatch(last)
  const losses = steps.map((p) => Number(p.message?.split('loss=')[1]))
  expect(losses.at(-1)).toBeLessThan(losses[0]!)
  return losses
}

/**
 * Aborts `t`'s signal after its `calls`-th progress event and checks that `run` then rejects with that reason
 * within 2 s and stores nothing: a handler that honours its signal between steps.
 */
export async function expectStopsAfterProgress(
  t: TestContext,
  calls: number,
  run: () => Promise<unknown>,
): Promise<void> {
  const reason = abortAfterProgress(t, calls)
  const started = performance.now()
  expect(await rejectionOf(run())).toBe(reason)
  expect(performance.now() - started).toBeLessThan(2000)
  expect(t.artifacts.files.size).toBe(0)
}

/** Aborts `t`'s signal right after its `calls`-th progress event; returns the reason it aborts with. */
export function abortAfterProgress(
  t: TestContext,
  calls: number,
  reason = new Error('cancelled by test'),
): Error {
  const record = t.ctx.progress
  let n = 0
  t.ctx.progress = (percent, message) => {
    record(percent, message)
    if (++n === calls) t.abort(reason)
  }
  return reason
}

/** The error `promise` rejects with; fails the test if it resolves. */
export async function rejectionOf(
  promise: Promise<unknown>,
): Promise<Error & { reason?: unknown; code?: unknown }> {
  try {
    await promise
  } catch (err) {
    return err as Error
  }
  throw new Error('expected the promise to reject, but it resolved')
}

const runs = (command: string): boolean => spawnSync(command, ['-version'], { stdio: 'ignore' }).status === 0

/** ffprobe from PATH, else the build @ffprobe-installer/ffprobe (a dev dependency) brought. */
const FFPROBE = runs('ffprobe') ? 'ffprobe' : installedFfprobe.path

/** True when an ffprobe runs here; tests that need it are skipped otherwise. */
export const HAS_FFPROBE = FFPROBE === 'ffprobe' || runs(FFPROBE)

/** True when ffmpeg is on PATH (Debian's package, which CI installs); tests that decode with it skip otherwise. */
export const HAS_FFMPEG = runs('ffmpeg')

/** Every frame of a video or animation as ffmpeg decodes it: raw RGB24, frame after frame. */
export async function ffmpegFrames(file: string): Promise<Buffer> {
  const { stdout } = await promisify(execFile)(
    'ffmpeg',
    ['-v', 'error', '-i', file, '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'],
    { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 },
  )
  return stdout
}

/** ffprobe's JSON view of a file's streams and format, counting the frames it can decode. */
export async function ffprobe(file: string): Promise<{
  streams: Record<string, string | number>[]
  format: Record<string, unknown>
}> {
  const { stdout } = await promisify(execFile)(FFPROBE, [
    '-v',
    'error',
    '-count_frames',
    '-show_streams',
    '-show_format',
    '-of',
    'json',
    file,
  ])
  return JSON.parse(stdout)
}
