import { isTerminal } from '../../schema/common.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { line, type RunIO } from './command.ts'
import { eventLine, progressBar } from './render.ts'

/** How `follow` shows events: a progress bar redrawn in place (a terminal), one line each, or JSON lines. */
export type PrintMode = 'bar' | 'lines' | 'json'

/** At most one redraw of the bar per this many ms (events can come in hundreds per second). */
const REDRAW_MS = 100

/** Prints the events of a followed job, and notices (reconnects) on stderr without breaking the bar. */
export class EventPrinter {
  private drawn: ProgressEvent | undefined
  private pending: ProgressEvent | undefined
  private timer: NodeJS.Timeout | undefined
  private lastDrawAt = 0

  private readonly out: RunIO['stdout']
  private readonly err: RunIO['stderr']

  constructor(
    io: Pick<RunIO, 'stdout' | 'stderr'>,
    private readonly mode: PrintMode,
  ) {
    this.out = io.stdout
    this.err = io.stderr
  }

  event(e: ProgressEvent): void {
    if (this.mode === 'json') return void line(this.out, JSON.stringify(e))
    if (this.mode === 'lines') return void line(this.out, eventLine(e))
    const prev = this.drawn ?? this.pending
    const terminal = isTerminal(e.status)
    const changed = !prev || prev.status !== e.status || prev.attempt !== e.attempt
    // An attempt that ended keeps its own line, so retries stay visible above the bar.
    if (
      prev &&
      this.drawn &&
      (prev.attempt !== e.attempt || (e.status === 'retrying' && prev.status !== 'retrying'))
    ) {
      this.flushPending()
      this.out.write('\n')
      this.drawn = undefined
    }
    if (terminal || changed || Date.now() - this.lastDrawAt >= REDRAW_MS) {
      this.pending = undefined
      clearTimeout(this.timer)
      this.timer = undefined
      this.draw(e)
      if (terminal) {
        this.out.write('\n')
        this.drawn = undefined
      }
    } else {
      this.pending = e
      this.timer ??= setTimeout(() => {
        this.timer = undefined
        this.flushPending()
      }, REDRAW_MS)
    }
  }

  notice(text: string): void {
    if (this.mode === 'bar' && this.drawn) this.out.write('\r\x1b[K')
    line(this.err, text)
    if (this.mode === 'bar' && this.drawn) this.draw(this.drawn)
  }

  end(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.flushPending()
    if (this.drawn) this.out.write('\n')
    this.drawn = undefined
  }

  private flushPending(): void {
    if (this.pending) this.draw(this.pending)
    this.pending = undefined
  }

  private draw(e: ProgressEvent): void {
    // A pseudo-terminal without a size says 0 columns.
    const columns = this.out.columns && this.out.columns >= 20 ? this.out.columns : 80
    this.out.write(`\r${progressBar(e, columns)}\x1b[K`)
    this.drawn = e
    this.lastDrawAt = Date.now()
  }
}
