/**
 * Turns kohya sd-scripts' `train_network.py` output, line by line, into the job's progress: the `steps:`
 * tqdm bar on stderr (n/total and `avr_loss`), `epoch N/M` and `saving checkpoint:` on stdout.
 */
import type { EngineStream } from '../sdk/engine-process.ts'

export interface KohyaProgressUpdate {
  percent: number
  message: string
}

/** The bar's share of the job: loading the model comes before, uploading the file after. */
export const STEPS_FROM = 2
export const STEPS_TO = 95

/**
 * `steps:  33%|███▎      | 1/3 [00:01<00:03,  1.68s/it, avr_loss=1.12]`. Anchored at the start of a segment
 * so that kohya's other bars (`validation steps:`, `read caption:`, model loading) never count. With rich
 * logging a log record can follow the bar on the same line (no `\r` between them), so nothing after `]`
 * is required.
 */
const STEPS_BAR = /^steps:\s+\d+%\|[^|]*\|\s*(\d+)\/(\d+) \[([^\]]*)\]/
const AVR_LOSS = /(?:^|[\s,])avr_loss=([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))/
/** `accelerator.print(f"\nepoch {epoch+1}/{num_train_epochs}")` */
const EPOCH = /^epoch (\d+)\/(\d+)$/
/** `num epochs / epoch数: 2` in the startup block, before the first `epoch` line. */
const NUM_EPOCHS = /^\s*num epochs \/ [^:]*:\s*(\d+)\s*$/
const SAVING = /^saving checkpoint: (.+)$/

/**
 * Keeps the state across lines and answers an update when the percent or the message changes, e.g.
 * `{percent: 49.5, message: 'Epoch 1/2 - loss=1.16'}`. Feed it every line from both streams.
 *
 * @example
 * const progress = new KohyaProgress()
 * onLine: (stream, line) => { const u = progress.push(stream, line); if (u) ctx.progress(u.percent, u.message) }
 */
export class KohyaProgress {
  epoch = 1
  epochs: number | undefined
  step = 0
  totalSteps: number | undefined
  /** As tqdm printed it (`1.12`), so the message shows what kohya showed. */
  loss: string | undefined
  private last: KohyaProgressUpdate | undefined

  constructor(epochs?: number) {
    this.epochs = epochs
  }

  push(stream: EngineStream, line: string): KohyaProgressUpdate | null {
    let message: string | undefined
    const bar = stream === 'stderr' ? STEPS_BAR.exec(line) : null
    if (bar) {
      this.step = Number(bar[1])
      this.totalSteps = Number(bar[2])
      const loss = AVR_LOSS.exec(bar[3] ?? '')
      if (loss) this.loss = loss[1]
    } else if (stream === 'stdout') {
      const trimmed = line.trim()
      const epoch = EPOCH.exec(trimmed)
      const numEpochs = NUM_EPOCHS.exec(line)
      const saving = SAVING.exec(trimmed)
      if (epoch) {
        this.epoch = Number(epoch[1])
        this.epochs = Number(epoch[2])
      } else if (numEpochs) {
        this.epochs = Number(numEpochs[1])
      } else if (saving) {
        // The basename only: the job's scratch path means nothing to whoever reads the message.
        message = `saving checkpoint: ${saving[1]!.split('/').at(-1)}`
      } else return null
    } else return null

    const percent =
      this.totalSteps && this.totalSteps > 0
        ? Number(
            (
              STEPS_FROM +
              ((STEPS_TO - STEPS_FROM) * Math.min(this.step, this.totalSteps)) / this.totalSteps
            ).toFixed(2),
          )
        : (this.last?.percent ?? STEPS_FROM)
    message ??= this.message()
    if (this.last && this.last.percent === percent && this.last.message === message) return null
    this.last = { percent: Math.max(percent, this.last?.percent ?? 0), message }
    return this.last
  }

  /** "Epoch 3/5 - loss=0.34", or "Epoch 1/5" before the first loss. */
  message(): string {
    const of = this.epochs === undefined ? `${this.epoch}` : `${this.epoch}/${this.epochs}`
    return this.loss === undefined ? `Epoch ${of}` : `Epoch ${of} - loss=${this.loss}`
  }
}
