/**
 * Reads what F5-TTS prints while it fine-tunes (model/trainer.py and finetune_cli.py at 2ae2c9b, as
 * recorded in shared/reference/engine-transcripts/f5tts/) and turns it into overall progress.
 *
 * The Trainer draws one tqdm bar per epoch on stderr, redrawn with `\r`:
 * `Epoch 1/3:  33%|███▎      | 1/3 [00:33<01:06, 33.08s/update, loss=42.5, update=1]`. tqdm sorts the
 * postfix keys (`loss` before `update`), and the redraw right after `progress_bar.update(1)` still shows the
 * previous postfix until `set_postfix` draws the new one. Each `model_last.pt` save prints
 * `Saved last checkpoint at update N` on stdout.
 */

/** One epoch bar redraw. `update` and `loss` are the postfix's (the Trainer's global update, the last loss). */
export interface EpochBar {
  epoch: number
  epochs: number
  /** Updates done in this epoch, out of `total`. */
  n: number
  total: number
  update?: number
  /** As tqdm printed it (`42.5`, `43`, `nan`). */
  loss?: string
}

// `[^|]*` is the bar itself (block characters, or ten columns of spaces when empty).
const EPOCH_BAR = /^Epoch (\d+)\/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)\/(\d+) \[([^\]]*)\]/
const LOSS = /(?:^|, )loss=([-+0-9.eE]+|nan|inf|-inf)(?=,|$)/
const UPDATE = /(?:^|, )update=(\d+)(?=,|$)/
const SAVED = /^Saved last checkpoint at update (\d+)\s*$/
const VOCAB = /^vocab :\s+(\d+)\s*$/
const SAMPLE_COUNT = /^For (.+), sample count: (\d+)\s*$/
// prepare_csv_wavs.py skips a row whose file is missing or unreadable and says so on stdout.
const SKIPPED_AUDIO = /^(?:audio (.+) not found, skipping|Warning: Failed to process (.+?) due to error: .*)$/

/**
 * Parses one line (split on `\r` or `\n`) of the epoch bar; anything else, including a bar line that a
 * warning was printed onto, yields what it can or null.
 *
 * @example parseEpochBar('Epoch 1/1:  33%|███▎      | 1/3 [00:33<01:06, 33.08s/update, loss=42.7, update=1]')
 * // { epoch: 1, epochs: 1, n: 1, total: 3, update: 1, loss: '42.7' }
 */
export function parseEpochBar(line: string): EpochBar | null {
  const m = EPOCH_BAR.exec(line)
  if (!m) return null
  const bar: EpochBar = { epoch: Number(m[1]), epochs: Number(m[2]), n: Number(m[3]), total: Number(m[4]) }
  // Inside the brackets: `elapsed<remaining, rate[, key=value...]`; the rate's unit (`update/s`) has no `=`.
  const inside = m[5] ?? ''
  const loss = LOSS.exec(inside)?.[1]
  const update = UPDATE.exec(inside)?.[1]
  if (loss !== undefined) bar.loss = loss
  if (update !== undefined) bar.update = Number(update)
  return bar
}

/** `Saved last checkpoint at update N` → N. */
export const parseSavedCheckpoint = (line: string): number | null => {
  const m = SAVED.exec(line)
  return m ? Number(m[1]) : null
}

/** finetune_cli's `vocab :  2545` → 2545. */
export const parseVocabSize = (line: string): number | null => {
  const m = VOCAB.exec(line)
  return m ? Number(m[1]) : null
}

/** prepare_csv_wavs's `For <name>, sample count: 6` → 6. */
export const parseSampleCount = (line: string): number | null => {
  const m = SAMPLE_COUNT.exec(line)
  return m ? Number(m[2]) : null
}

/** prepare_csv_wavs's notice that it skipped a row: the audio path it names. */
export const parseSkippedAudio = (line: string): string | null => {
  const m = SKIPPED_AUDIO.exec(line)
  return m ? (m[1] ?? m[2] ?? null) : null
}

/** Overall fraction (0..1) of the training an epoch bar stands for: `((epoch - 1) + n / total) / epochs`. */
export const trainingFraction = (bar: EpochBar): number => {
  const within = bar.total > 0 ? Math.min(bar.n, bar.total) / bar.total : 0
  return Math.min(1, Math.max(0, (bar.epoch - 1 + within) / Math.max(1, bar.epochs)))
}

/** A progress report: percent within [from, to] and the message a user sees. */
export interface TrainingProgress {
  percent: number
  message: string
}

/**
 * Follows the trainer's output lines (stdout and stderr, each split on `\r` and `\n`) and says when there is
 * something new to report: a redraw with the same numbers, or a progress that would go backwards, is not.
 * The last update, loss and saved checkpoint are kept for the job's result.
 */
export class TrainingTracker {
  update = 0
  loss: string | undefined
  savedUpdate: number | undefined
  vocabSize: number | undefined
  epochs: number | undefined
  private lastKey = ''
  private lastPercent: number

  constructor(
    private readonly range: { from: number; to: number },
    private readonly totalEpochs: number,
  ) {
    this.lastPercent = range.from
  }

  /** Feeds one line; returns what to report, or null. */
  line(line: string): TrainingProgress | null {
    const saved = parseSavedCheckpoint(line)
    if (saved !== null) {
      this.savedUpdate = saved
      return { percent: this.lastPercent, message: `Saved last checkpoint at update ${saved}` }
    }
    const vocab = parseVocabSize(line)
    if (vocab !== null) {
      this.vocabSize = vocab
      return null
    }
    const bar = parseEpochBar(line)
    if (!bar) return null
    this.epochs = bar.epochs
    if (bar.update !== undefined) this.update = bar.update
    if (bar.loss !== undefined) this.loss = bar.loss
    const key = `${bar.epoch}/${bar.n}/${bar.update}/${bar.loss}`
    if (key === this.lastKey) return null
    this.lastKey = key
    const { from, to } = this.range
    // The bar's own epoch count is the truth (it is what --epochs became); the job's is the fallback.
    const fraction = trainingFraction({ ...bar, epochs: bar.epochs || this.totalEpochs })
    const percent = Number((from + (to - from) * fraction).toFixed(2))
    // A bar of an earlier epoch (a redraw after a resume, say) would take progress backwards: not reported.
    if (percent < this.lastPercent) return null
    this.lastPercent = percent
    const detail =
      bar.update !== undefined && bar.loss !== undefined
        ? `update=${bar.update}, loss=${bar.loss}`
        : `${bar.n}/${bar.total} updates`
    return { percent, message: `Epoch ${bar.epoch}/${bar.epochs} - ${detail}` }
  }
}
