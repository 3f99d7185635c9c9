/**
 * PostgreSQL's own client programs, run as child processes: psql loads a schema file, pg_dump
 * writes a dump, pg_restore restores one (for moving a tenant between servers). psql rather than pg's simple query protocol because a structure.sql is psql input,
 * not plain SQL: pg_dump (which `rails db:schema:dump` runs for structure.sql) writes psql
 * meta-commands such as `\restrict` (added by the August 2025 minor releases, CVE-2025-8714) and
 * `\connect`, and data as `COPY … FROM stdin`, none of which a plain SQL connection understands.
 * Rails itself loads structure.sql the same way (psql with ON_ERROR_STOP=1 and no psqlrc).
 *
 * The password never appears in a command line (other users see /proc/<pid>/cmdline): the tools
 * get the URL without it and the password in PGPASSWORD, in their environment only.
 */
import { spawn } from 'node:child_process'
import { closeSync, fsyncSync, linkSync, openSync, statSync, unlinkSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { basename, dirname, join } from 'node:path'
import { tpError } from '../errors.js'
import { redactUrls } from '../redact.js'

/** Most stderr kept from a tool for its error message. */
const STDERR_KEEP_BYTES = 16_384

/** How to run one tool. */
export interface ToolRun {
  /** The command (tenantDatabase.psql / pgDump), looked up in PATH. */
  readonly command: string
  /** Connection URL with credentials; split into a password-free URL and PGPASSWORD. */
  readonly url: string
  /** The CLI's environment, passed on (PATH, HOME for ~/.pgpass, PGSSLROOTCERT, …). */
  readonly env: Readonly<Record<string, string | undefined>>
  /** Aborts the tool (SIGTERM) when signalled: an interrupted CLI leaves no tool running. */
  readonly signal?: AbortSignal
}

/**
 * Loads a psql script into the database `url` names: ON_ERROR_STOP so the first error stops it
 * (and fails the step), -X so no ~/.psqlrc changes what runs. With `role`, the session runs as
 * that role (SET ROLE at connection start through PGOPTIONS), so the tables belong to the
 * database owner the app migrates as, not to the admin.
 */
export async function loadSqlFile (run: ToolRun, file: string, opts: { role?: string | null } = {}): Promise<void> {
  const extra: Record<string, string> = {}
  if (opts.role != null) extra.PGOPTIONS = `-c role=${opts.role}`
  await runTool(run, ['-X', '--quiet', '--no-password', '-v', 'ON_ERROR_STOP=1', '--output', '/dev/null', '--file', file], extra, 'psql')
}

/**
 * Dumps the database `url` names into `file` (pg_dump's custom format unless `plain`): written
 * to a new file beside it, readable by its owner only, synced, then linked into place, so `file`
 * appears complete or not at all, and an existing file is never overwritten.
 */
export async function dumpDatabase (run: ToolRun, file: string, opts: { format?: 'custom' | 'plain' } = {}): Promise<{ bytes: number }> {
  const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`)
  // Created first with mode 0600: pg_dump truncates and writes it, keeping the mode.
  closeSync(openSync(tmp, 'wx', 0o600))
  try {
    await runTool(run, ['--no-password', `--format=${opts.format === 'plain' ? 'p' : 'c'}`, '--file', tmp], {}, 'pg_dump')
    const fd = openSync(tmp, 'r+')
    try { fsyncSync(fd) } finally { closeSync(fd) }
    const bytes = statSync(tmp).size
    // link(2) fails when `file` exists: no clobbering, and no window in which it is half-written.
    linkSync(tmp, file)
    return { bytes }
  } finally {
    try { unlinkSync(tmp) } catch { /* already gone */ }
  }
}

/**
 * Restores a custom-format dump (dumpDatabase) into the existing, empty database `url` names
 * (pg_restore, `command` being tenantDatabase.pgRestore or alike), stopping at the first error.
 * With `role`, objects are created as that role and the dump's owners are not restored, so the
 * copy belongs to the owner the app migrates as wherever it lands; `jobs` restores in parallel.
 */
export async function restoreDump (run: ToolRun, file: string, opts: { role?: string | null, jobs?: number } = {}): Promise<void> {
  const args = ['--no-password', '--exit-on-error', '--no-owner', '--no-privileges']
  if (opts.role != null) args.push('--role', opts.role)
  if (opts.jobs !== undefined && opts.jobs > 1) args.push('--jobs', String(opts.jobs))
  await runTool(run, [...args, file], {}, 'pg_restore')
}

/** The URL without its password (for a command line), and the password (for PGPASSWORD). */
export function splitPassword (url: string): { url: string, password: string | null } {
  const u = new URL(url)
  const password = u.password === '' ? null : decodeURIComponent(u.password)
  u.password = ''
  return { url: u.toString(), password }
}

async function runTool (run: ToolRun, args: readonly string[], extraEnv: Record<string, string>, label: string): Promise<void> {
  const { url, password } = splitPassword(run.url)
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(run.env)) if (v !== undefined) env[k] = v
  if (password !== null) env.PGPASSWORD = password
  Object.assign(env, extraEnv)
  // The URL goes last as --dbname: libpq reads a URI there (sslmode and other parameters included).
  const child = spawn(run.command, [...args, '--dbname', url], { env, stdio: ['ignore', 'ignore', 'pipe'], signal: run.signal })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_KEEP_BYTES)
  })
  const outcome = await new Promise<{ code: number | null, signal: NodeJS.Signals | null, error: Error | null }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, signal: null, error }))
    child.once('close', (code, signal) => resolve({ code, signal, error: null }))
  })
  if (outcome.error !== null) {
    const e = outcome.error as NodeJS.ErrnoException
    if (e.code === 'ENOENT') throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`${label} not found: ${JSON.stringify(run.command)} is not in PATH (install PostgreSQL's client programs, e.g. Debian's postgresql-client, or configure its path)`], e)
    if (e.name === 'AbortError') throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`${label} was stopped`], e)
    throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`${label} could not run: ${e.message}`], e)
  }
  if (outcome.code !== 0) {
    const lines = stderr.trim().split('\n').filter((l) => l.trim() !== '')
    const shown = lines.slice(-5).join(' | ')
    const how = outcome.signal !== null ? `was killed by ${outcome.signal}` : `exited with ${outcome.code ?? '?'}`
    throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`${label} ${how}${shown === '' ? '' : `: ${redactUrls(shown)}`}`])
  }
}
