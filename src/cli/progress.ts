/**
 * What long commands show while they work, on stderr (stdout stays the command's result, a
 * summary or --json): on a terminal, steps and a progress bar redrawn in place; elsewhere (a log
 * file, CI), one plain line per step or finished item, so the output stays readable as text.
 */
import type { CliIo } from './command.js'

const CLEAR_LINE = '\r\x1b[2K'
/** Redraws of the bar at most this often; the last state is always drawn. */
const REDRAW_MS = 80

/** Milliseconds as people read them. */
export function duration (ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)} s`
  const m = Math.floor(ms / 60_000)
  return `${m} min ${Math.round((ms - m * 60_000) / 1_000)} s`
}

/** A failed step: which one, and the error. */
export class StepError extends Error {
  readonly step: string
  constructor (step: string, cause: unknown) {
    super(`${step}: ${(cause as Error).message}`, { cause })
    this.step = step
  }
}

/**
 * Runs named steps one after the other, showing each, and keeps the compensations registered by
 * the steps that completed, so a failure later can undo them (newest first).
 */
export class Steps {
  readonly #io: CliIo
  readonly #undo: Array<{ label: string, fn: () => Promise<void> }> = []
  readonly completed: Array<{ step: string, ms: number }> = []

  constructor (io: CliIo) {
    this.#io = io
  }

  /** Runs one step; a failure is rethrown as a StepError naming the step. */
  async run<T> (label: string, fn: () => Promise<T>): Promise<T> {
    const terminal = this.#io.errIsTerminal === true
    this.#io.err(terminal ? `  … ${label}` : `  → ${label}\n`)
    const started = performance.now()
    try {
      const result = await fn()
      const ms = performance.now() - started
      this.completed.push({ step: label, ms: Math.round(ms) })
      this.#io.err(`${terminal ? CLEAR_LINE : ''}  ✓ ${label} (${duration(ms)})\n`)
      return result
    } catch (err) {
      this.#io.err(`${terminal ? CLEAR_LINE : ''}  ✗ ${label}\n`)
      throw err instanceof StepError ? err : new StepError(label, err)
    }
  }

  /** Registers how to undo what a completed step did. */
  onUndo (label: string, fn: () => Promise<void>): void {
    this.#undo.push({ label, fn })
  }

  /** Forgets the compensations (the whole operation succeeded). */
  commit (): void {
    this.#undo.length = 0
  }

  /** Runs the compensations newest first, each attempted even if an earlier one failed; returns what failed. */
  async undo (): Promise<Array<{ label: string, error: string }>> {
    const failed: Array<{ label: string, error: string }> = []
    while (this.#undo.length > 0) {
      const { label, fn } = this.#undo.pop() as { label: string, fn: () => Promise<void> }
      try {
        await this.run(label, fn)
      } catch (err) {
        failed.push({ label, error: ((err as StepError).cause as Error | undefined)?.message ?? (err as Error).message })
      }
    }
    return failed
  }
}

/** Counts shown by the bar. */
export interface ProgressCounts {
  readonly done: number
  readonly failed: number
  readonly skipped?: number
  /** What is running now (shown after the counts, shortened to fit). */
  readonly running: readonly string[]
}

/**
 * A progress bar on a terminal (redrawn in place on stderr, lines printed above it), nothing but
 * the lines elsewhere.
 */
export class ProgressBar {
  readonly #io: CliIo
  readonly #total: number
  readonly #terminal: boolean
  readonly #width: number
  #last: ProgressCounts = { done: 0, failed: 0, running: [] }
  #drawnAt = 0
  #pending: NodeJS.Timeout | null = null
  #shown = false

  constructor (io: CliIo, total: number, opts: { width?: number } = {}) {
    this.#io = io
    this.#total = total
    this.#terminal = io.errIsTerminal === true
    this.#width = opts.width ?? 80
  }

  get terminal (): boolean {
    return this.#terminal
  }

  /** New counts; redrawn now or shortly (at most every REDRAW_MS). */
  update (counts: ProgressCounts): void {
    this.#last = counts
    if (!this.#terminal) return
    const now = performance.now()
    if (now - this.#drawnAt >= REDRAW_MS) {
      this.#draw()
    } else if (this.#pending === null) {
      this.#pending = setTimeout(() => { this.#pending = null; this.#draw() }, REDRAW_MS)
      this.#pending.unref()
    }
  }

  /** A line of its own (above the bar on a terminal). */
  line (text: string): void {
    if (this.#terminal && this.#shown) this.#io.err(CLEAR_LINE)
    this.#io.err(text + '\n')
    if (this.#terminal && this.#shown) this.#draw()
  }

  /** Draws the final state and leaves the bar's line behind. */
  finish (): void {
    if (this.#pending !== null) clearTimeout(this.#pending)
    this.#pending = null
    if (!this.#terminal) return
    this.#draw()
    this.#io.err('\n')
    this.#shown = false
  }

  /** The bar's text for counts (exported for tests through render()). */
  render (c: ProgressCounts): string {
    const finished = c.done + c.failed + (c.skipped ?? 0)
    const slots = 24
    const filled = this.#total === 0 ? slots : Math.round((finished / this.#total) * slots)
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(slots - filled)}]`
    const counts = `${finished}/${this.#total}  ok ${c.done}  failed ${c.failed}${c.skipped !== undefined && c.skipped > 0 ? `  skipped ${c.skipped}` : ''}  running ${c.running.length}`
    let text = `${bar} ${counts}`
    if (c.running.length > 0) {
      const room = this.#width - text.length - 3
      const names = c.running.join(' ')
      if (room > 8) text += `  ${names.length > room ? `${names.slice(0, room - 1)}…` : names}`
    }
    return text
  }

  #draw (): void {
    this.#drawnAt = performance.now()
    this.#shown = true
    this.#io.err(`${CLEAR_LINE}${this.render(this.#last)}`)
  }
}
