/**
 * The run directory of `tenants exec`: `<runDirectory>/<RUN_ID>/run.json` records the command,
 * the tenants and each one's outcome, and `<slug>.log` holds each tenant's output. run.json is
 * replaced atomically (src/file-write.ts), so a crash leaves the previous complete state, and
 * `--resume RUN_ID` reads it to skip the tenants that succeeded.
 */
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, unlinkSync } from 'node:fs'
import { join } from 'node:path'
import { tpError } from '../errors.js'
import { createExclusive, replaceAtomically } from '../file-write.js'

export const RUN_STATE_FILE = 'run.json'
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/

export type TenantRunStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'interrupted' | 'skipped'

/** One tenant's record in a run. */
export interface TenantRun {
  status: TenantRunStatus
  exit_code: number | null
  signal: string | null
  /** Why it failed or was skipped beyond the exit code (timeout, spawn error, gone from the registry). */
  reason: string | null
  attempts: number
  started_at: string | null
  finished_at: string | null
  duration_ms: number | null
  /** Log file name, relative to the run directory. */
  log: string
}

/** The whole run. */
export interface RunState {
  format: 1
  id: string
  command: string[]
  selection: { only: string[] | null, states: string[] | null, server: string | null }
  created_at: string
  updated_at: string
  /** How many times the run was started (1, plus one per --resume). */
  invocations: number
  tenants: Record<string, TenantRun>
}

/** A new run id: UTC time to the second and 6 random hex digits (sortable, unique enough). */
export function newRunId (now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')
  return `${stamp}-${randomBytes(3).toString('hex')}`
}

/** Checks a run id given on the command line (it names a directory: no separators, no '..'). */
export function checkRunId (id: string): string {
  if (!RUN_ID.test(id) || id.includes('..')) throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [JSON.stringify(id), 'not a run id (letters, digits, ".", "_" and "-")'])
  return id
}

/** The directory of a run. */
export function runPath (runDirectory: string, id: string): string {
  return join(runDirectory, id)
}

/** Creates a new run's directory (owner only: logs may show what the commands print). */
export function createRunDirectory (runDirectory: string, id: string): string {
  mkdirSync(runDirectory, { recursive: true, mode: 0o700 })
  const dir = runPath(runDirectory, id)
  mkdirSync(dir, { mode: 0o700 })
  return dir
}

/** Reads a run's state for --resume; a missing or damaged file is a usage error naming the run. */
export function readRunState (runDirectory: string, id: string): RunState {
  const file = join(runPath(runDirectory, id), RUN_STATE_FILE)
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [id, `no run state at ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); runs are kept under tenantExec.runDirectory or --run-dir`], err)
  }
  let state: RunState
  try {
    state = JSON.parse(text) as RunState
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [id, `${file} is not JSON`], err)
  }
  if (state.format !== 1 || state.id !== id || !Array.isArray(state.command) || typeof state.tenants !== 'object' || state.tenants === null) {
    throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [id, `${file} is not a tenants exec run state`])
  }
  return state
}

const LOCK_FILE = 'run.lock'

/**
 * Takes a run's lock (run.lock, created exclusively, holding the pid), so two processes never run
 * one run's tenants at once (two --resume of the same run). A lock whose process is gone is stale
 * and taken over. `alive` tells whether a pid runs (process.kill(pid, 0) in the CLI).
 */
export function lockRun (dir: string, id: string, pid: number, alive: (pid: number) => boolean): () => void {
  const file = join(dir, LOCK_FILE)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      createExclusive(file, `${pid}\n`, 0o600)
      return () => { try { unlinkSync(file) } catch { /* already gone */ } }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = Number(readFileSync(file, 'utf8').trim())
      if (Number.isInteger(holder) && holder > 0 && alive(holder)) throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [id, `it is running in process ${holder} (${file})`])
      unlinkSync(file)
    }
  }
  throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [id, `cannot take its lock ${file}`])
}

/**
 * Writes the state at most every `intervalMs` (a run over many tenants finishes many per second),
 * or ten times as long as the last write took if that is longer, and on flush(). A crash loses at
 * most the last interval's outcomes: those tenants run again on --resume.
 */
export class RunStateWriter {
  readonly #file: string
  readonly #state: RunState
  readonly #minIntervalMs: number
  #intervalMs: number
  #writtenAt = 0
  #timer: NodeJS.Timeout | null = null

  constructor (dir: string, state: RunState, intervalMs = 100) {
    this.#file = join(dir, RUN_STATE_FILE)
    this.#state = state
    this.#minIntervalMs = intervalMs
    this.#intervalMs = intervalMs
  }

  /** The state changed: write it now or soon. */
  changed (): void {
    const now = performance.now()
    if (now - this.#writtenAt >= this.#intervalMs) {
      this.flush()
    } else if (this.#timer === null) {
      this.#timer = setTimeout(() => this.flush(), this.#intervalMs - (now - this.#writtenAt))
    }
  }

  /** Writes the state now. */
  flush (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.#state.updated_at = new Date().toISOString()
    const started = performance.now()
    replaceAtomically(this.#file, JSON.stringify(this.#state, null, 2) + '\n', 0o600)
    this.#writtenAt = performance.now()
    // A run over many thousands of tenants has a large state: write it less often rather than
    // spend the run writing it (at most a tenth of the time goes to the state file).
    this.#intervalMs = Math.max(this.#minIntervalMs, (this.#writtenAt - started) * 10)
  }
}
