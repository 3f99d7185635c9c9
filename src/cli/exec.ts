/**
 * `tenant-proxy tenants exec -- <command…>`: runs a command once per tenant (`bin/rails
 * db:migrate` on every tenant database), the replacement for the tenants:migrate and tenants:seed
 * rake tasks. Each run has an id and a directory (tenantExec.runDirectory/<RUN_ID>) holding its
 * state (run.json, replaced atomically) and one log per tenant; `--resume RUN_ID` runs the
 * tenants of that run that did not succeed.
 *
 * Children run in process groups of their own, so a signal reaches each exactly once, from here:
 * SIGINT/SIGTERM stops starting tenants and forwards the signal to the running ones, which get
 * --kill-after seconds to finish before SIGKILL; a second signal kills them at once.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, writeSync } from 'node:fs'
import { kill, pid as ownPid } from 'node:process'
import { join, resolve } from 'node:path'
import { tpError } from '../errors.js'
import { checkServerName, checkSlug, checkState } from '../registry/names.js'
import type { TenantRecord } from '../registry/store.js'
import { checkTemplateCredentials, databaseUrl, shownDatabaseUrl, type UrlCredentials } from '../exec/database-url.js'
import {
  checkRunId, createRunDirectory, lockRun, newRunId, readRunState, runPath, RunStateWriter, type RunState, type TenantRun
} from '../exec/run-state.js'
import { flag, str, strs, table, type Command, type CommandContext } from './command.js'
import { duration, ProgressBar } from './progress.js'

const MAX_PARALLEL = 256
const DEFAULT_KILL_AFTER_S = 30
/** A summary table lists every tenant up to this many, only the ones that did not succeed beyond. */
const FULL_SUMMARY_MAX = 100

export const tenantsExec: Command = {
  name: 'tenants exec',
  summary: 'Run a command once per tenant with its database in the environment (migrations, seeds), in parallel, resumable.',
  usage: 'tenant-proxy tenants exec [--parallel <n>] [--only <slug,…>] [--state <state>] [--server <name>] [--timeout <s>] [--kill-after <s>] [--run-dir <dir>] [--database-url-template <template>] [--resume <run-id>] [--dry-run] [--json] -- <command…>',
  help: `Each command gets the CLI's environment plus TENANT_SLUG, TENANT_DATABASE_NAME, TENANT_DATABASE_HOST,
TENANT_DATABASE_PORT, TENANT_DATABASE_SERVER (empty when none), TENANT_PROXY_RUN_ID and
DATABASE_URL, built from tenantExec.databaseUrlTemplate (or --database-url-template) with
{database} {host} {port} {slug} of the tenant and {user} {password} {userinfo} from the variables
tenantExec.userEnv / passwordEnv (default TENANT_DATABASE_USER / TENANT_DATABASE_PASSWORD) of this
process; the password is never stored or printed. The command runs directly (no shell: use
-- sh -c '…' for one).

--parallel runs up to n tenants at once (default 1). --only takes slugs (comma-separated or
repeated); --state and --server keep the tenants in that state or on that server. --timeout
stops a tenant's command after that many seconds (SIGTERM, then SIGKILL after --kill-after).
Each tenant's output goes to <run-dir>/<RUN_ID>/<slug>.log (run-dir: tenantExec.runDirectory);
run.json there records every tenant's outcome. A progress bar is drawn on a terminal (stderr),
one line per finished tenant otherwise; a summary table follows; the exit code is 1 when any
tenant failed, 130 when interrupted.

--resume RUN_ID runs again the tenants of that run that did not succeed (failed, interrupted or
not started), with the run's command (a command given must be the same) and the same tenants;
their logs get a new section. SIGINT/SIGTERM stops starting tenants, forwards the signal to the
running commands and waits --kill-after seconds (default ${DEFAULT_KILL_AFTER_S}) before SIGKILL; a second signal
kills them at once. --dry-run lists the tenants and the environment (password hidden).`,
  options: {
    parallel: { type: 'string' },
    only: { type: 'string', multiple: true },
    state: { type: 'string', multiple: true },
    server: { type: 'string' },
    timeout: { type: 'string' },
    'kill-after': { type: 'string' },
    'run-dir': { type: 'string' },
    'database-url-template': { type: 'string' },
    resume: { type: 'string' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' }
  },
  positionals: [0, 100_000],
  async run (ctx, args) {
    const config = ctx.config()
    const parallel = positiveInt(str(args, 'parallel') ?? '1', '--parallel', MAX_PARALLEL)
    const timeoutMs = str(args, 'timeout') === undefined ? null : seconds(str(args, 'timeout') ?? '', '--timeout') * 1000
    const killAfterMs = seconds(str(args, 'kill-after') ?? String(DEFAULT_KILL_AFTER_S), '--kill-after') * 1000
    const runDirectory = resolve(str(args, 'run-dir') ?? config.tenantExec.runDirectory)
    const template = str(args, 'database-url-template') ?? config.tenantExec.databaseUrlTemplate
    if (!template.includes('{database}')) throw usage('--database-url-template must contain {database}')
    const creds: UrlCredentials = {
      user: nonEmpty(ctx.env[config.tenantExec.userEnv]),
      password: nonEmpty(ctx.env[config.tenantExec.passwordEnv]),
      userEnv: config.tenantExec.userEnv,
      passwordEnv: config.tenantExec.passwordEnv
    }
    checkTemplateCredentials(template, creds)
    const only = strs(args, 'only').flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '').map(checkSlug)
    const states = strs(args, 'state').flatMap((v) => v.split(',')).map((v) => checkState(v.trim()))
    const serverText = str(args, 'server')
    const server = serverText === undefined ? null : checkServerName(serverText)
    const resumeId = str(args, 'resume')
    const dryRun = flag(args, 'dry-run')
    const json = flag(args, 'json')

    const tenants = await (await ctx.registry()).store.listTenants()
    const bySlug = new Map(tenants.map((t) => [t.slug, t]))
    let state: RunState
    let resumed = false
    if (resumeId !== undefined) {
      if (only.length > 0 || states.length > 0 || server !== null) throw usage('--resume runs the tenants of that run: --only, --state and --server cannot be given with it')
      state = readRunState(runDirectory, checkRunId(resumeId))
      if (args.positionals.length > 0 && JSON.stringify(args.positionals) !== JSON.stringify(state.command)) {
        throw tpError('TENANT_PROXY_ERR_EXEC_RUN', [resumeId, `it ran ${JSON.stringify(state.command)}, not ${JSON.stringify(args.positionals)}; give no command to run the run's own`])
      }
      resumed = true
    } else {
      if (args.positionals.length === 0) throw usage(`no command given; usage: ${this.usage}`)
      const unknown = only.filter((s) => !bySlug.has(s))
      if (unknown.length > 0) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [unknown.join(', ')])
      const selected = tenants.filter((t) => (only.length === 0 || only.includes(t.slug)) && (states.length === 0 || states.includes(t.state)) && (server === null || t.database_server === server))
      const now = new Date().toISOString()
      state = {
        format: 1,
        id: newRunId(),
        command: [...args.positionals],
        selection: { only: only.length === 0 ? null : only, states: states.length === 0 ? null : states, server },
        created_at: now,
        updated_at: now,
        invocations: 0,
        tenants: Object.fromEntries(selected.map((t) => [t.slug, newTenantRun(t.slug)]))
      }
    }
    const slugs = Object.keys(state.tenants).sort()
    const gone = slugs.filter((s) => !bySlug.has(s))
    const toRun = slugs.filter((s) => bySlug.has(s) && state.tenants[s]?.status !== 'succeeded')
    const alreadyDone = slugs.filter((s) => state.tenants[s]?.status === 'succeeded')
    const location = (t: TenantRecord): { slug: string, database: string, host: string, port: number } => ({
      slug: t.slug, database: t.database_name, host: t.database_host ?? config.tenantDatabase.defaultHost, port: t.database_port ?? config.tenantDatabase.defaultPort
    })

    if (dryRun) {
      const plan = toRun.map((slug) => {
        const t = bySlug.get(slug) as TenantRecord
        return { slug, state: t.state, database_name: t.database_name, database_url: shownDatabaseUrl(template, location(t), creds) }
      })
      if (json) {
        ctx.io.out(JSON.stringify({ dry_run: true, run_id: resumed ? state.id : null, command: state.command, parallel, tenants: plan, skipped_succeeded: alreadyDone, gone }, null, 2) + '\n')
      } else {
        ctx.io.out(table(['SLUG', 'STATE', 'DATABASE_URL'], plan.map((p) => [p.slug, p.state, p.database_url])))
        ctx.io.out(`dry run, nothing ran: ${JSON.stringify(state.command)} would run for ${plan.length} tenant(s), ${parallel} at a time${alreadyDone.length > 0 ? `; ${alreadyDone.length} already succeeded in run ${state.id}` : ''}${gone.length > 0 ? `; ${gone.length} no longer in the registry` : ''}\n`)
      }
      return 0
    }

    const dir = resumed ? runPath(runDirectory, state.id) : createRunDirectory(runDirectory, state.id)
    const unlock = lockRun(dir, state.id, ownPid, isAlive)
    try {
      state.invocations++
      for (const slug of gone) {
        const r = state.tenants[slug]
        if (r !== undefined && r.status !== 'succeeded') Object.assign(r, { status: 'skipped', reason: 'no longer in the registry' })
      }
      const writer = new RunStateWriter(dir, state)
      writer.flush()
      ctx.io.err(`tenant-proxy: ${resumed ? 'resuming' : 'starting'} run ${state.id}: ${JSON.stringify(state.command)} for ${toRun.length} tenant(s), ${parallel} at a time${alreadyDone.length > 0 ? ` (${alreadyDone.length} already succeeded)` : ''}; logs in ${dir}\n`)

      const bar = new ProgressBar(ctx.io, toRun.length)
      const running = new Map<string, ChildProcess>()
      const counts = { done: 0, failed: 0 }
      let finished = 0
      let stopping: string | null = null
      const queue = [...toRun]
      const refresh = (): void => bar.update({ done: counts.done, failed: counts.failed, running: [...running.keys()] })
      const killAll = (signal: NodeJS.Signals): void => {
        for (const child of running.values()) signalGroup(child, signal)
      }
      ctx.onForcedExit(() => killAll('SIGKILL'))
      let killTimer: NodeJS.Timeout | null = null
      void ctx.stopSignal.then((signal) => {
        stopping = signal
        if (running.size === 0) return
        bar.line(`tenant-proxy: ${signal}: starting no more tenants; ${running.size} running get ${signal} and ${duration(killAfterMs)} to finish (again to kill them now)`)
        killAll(signal as NodeJS.Signals)
        killTimer = setTimeout(() => killAll('SIGKILL'), killAfterMs)
        killTimer.unref()
      })

      const runOne = async (slug: string): Promise<void> => {
        const tenant = bySlug.get(slug) as TenantRecord
        const record = state.tenants[slug] as TenantRun
        const started = Date.now()
        Object.assign(record, { status: 'running', attempts: record.attempts + 1, started_at: new Date(started).toISOString(), finished_at: null, duration_ms: null, exit_code: null, signal: null, reason: null })
        writer.changed()
        const logFile = join(dir, record.log)
        const fd = openSync(logFile, 'a', 0o600)
        writeSync(fd, `${record.attempts > 1 ? '\n' : ''}# tenant-proxy tenants exec run ${state.id}, tenant ${slug}, attempt ${record.attempts}, ${record.started_at}: ${JSON.stringify(state.command)}\n`)
        const loc = location(tenant)
        const env = {
          ...definedEnv(ctx.env),
          TENANT_SLUG: slug,
          TENANT_DATABASE_NAME: loc.database,
          TENANT_DATABASE_HOST: loc.host,
          TENANT_DATABASE_PORT: String(loc.port),
          TENANT_DATABASE_SERVER: tenant.database_server ?? '',
          TENANT_PROXY_RUN_ID: state.id,
          DATABASE_URL: databaseUrl(template, loc, creds)
        }
        const [command = '', ...rest] = state.command
        let timedOut = false
        const outcome = await new Promise<{ code: number | null, signal: string | null, error: string | null }>((resolveOutcome) => {
          let child: ChildProcess
          try {
            child = spawn(command, rest, { env, stdio: ['ignore', fd, fd], detached: true })
          } catch (err) {
            resolveOutcome({ code: null, signal: null, error: (err as Error).message })
            return
          }
          let timer: NodeJS.Timeout | null = null
          child.once('error', (err: NodeJS.ErrnoException) => {
            if (timer !== null) clearTimeout(timer)
            running.delete(slug)
            resolveOutcome({ code: null, signal: null, error: err.code === 'ENOENT' ? `command not found: ${command}` : err.message })
          })
          child.once('spawn', () => {
            running.set(slug, child)
            refresh()
            if (timeoutMs !== null) {
              timer = setTimeout(() => {
                timedOut = true
                signalGroup(child, 'SIGTERM')
                setTimeout(() => signalGroup(child, 'SIGKILL'), killAfterMs).unref()
              }, timeoutMs)
            }
          })
          child.once('exit', (code, signal) => {
            if (timer !== null) clearTimeout(timer)
            running.delete(slug)
            resolveOutcome({ code, signal, error: null })
          })
        })
        const ms = Date.now() - started
        const ok = outcome.code === 0
        const status = ok ? 'succeeded' : stopping !== null && outcome.error === null && !timedOut ? 'interrupted' : 'failed'
        const reason = outcome.error ?? (timedOut ? `timed out after ${duration(timeoutMs ?? 0)}` : stopping !== null && !ok ? `stopped by ${stopping}` : null)
        writeSync(fd, `# ${status}${outcome.code !== null ? `, exit code ${outcome.code}` : ''}${outcome.signal !== null ? `, signal ${outcome.signal}` : ''}${reason !== null ? ` (${reason})` : ''}, after ${duration(ms)}\n`)
        closeSync(fd)
        Object.assign(record, { status, exit_code: outcome.code, signal: outcome.signal, reason, finished_at: new Date().toISOString(), duration_ms: ms })
        writer.changed()
        finished++
        if (status === 'succeeded') counts.done++
        else counts.failed++
        const what = status === 'succeeded' ? 'ok' : `${status.toUpperCase()}${outcome.code !== null ? ` (exit ${outcome.code})` : ''}${outcome.signal !== null ? ` (${outcome.signal})` : ''}${reason !== null ? `: ${reason}` : ''}`
        if (!bar.terminal || status !== 'succeeded') bar.line(`[${finished}/${toRun.length}] ${slug}: ${what} in ${duration(ms)}${status === 'succeeded' ? '' : `, log ${logFile}`}`)
        refresh()
      }

      const worker = async (): Promise<void> => {
        for (let slug = queue.shift(); slug !== undefined && stopping === null; slug = queue.shift()) await runOne(slug)
      }
      refresh()
      await Promise.all(Array.from({ length: Math.min(parallel, Math.max(queue.length, 1)) }, worker))
      if (killTimer !== null) clearTimeout(killTimer)
      bar.finish()
      writer.flush()

      const rows = slugs.map((slug) => ({ slug, ...(state.tenants[slug] as TenantRun) }))
      const tally = (status: string): number => rows.filter((r) => r.status === status).length
      const summary = {
        run_id: state.id,
        run_dir: dir,
        command: state.command,
        tenants: rows.length,
        succeeded: tally('succeeded'),
        failed: tally('failed'),
        interrupted: tally('interrupted'),
        not_started: tally('pending'),
        skipped: tally('skipped'),
        results: rows.map((r) => ({ slug: r.slug, status: r.status, exit_code: r.exit_code, signal: r.signal, reason: r.reason, attempts: r.attempts, duration_ms: r.duration_ms, log: join(dir, r.log) }))
      }
      if (json) {
        ctx.io.out(JSON.stringify(summary, null, 2) + '\n')
      } else {
        const shown = rows.length <= FULL_SUMMARY_MAX ? rows : rows.filter((r) => r.status !== 'succeeded')
        ctx.io.out(table(['SLUG', 'STATUS', 'EXIT', 'TIME', 'LOG'], shown.map((r) => [
          r.slug, r.status, r.exit_code === null ? (r.signal ?? '-') : String(r.exit_code), r.duration_ms === null ? '-' : duration(r.duration_ms), r.status === 'pending' ? '-' : join(dir, r.log)
        ])))
        ctx.io.out(`run ${state.id}: ${summary.succeeded} succeeded, ${summary.failed} failed${summary.interrupted > 0 ? `, ${summary.interrupted} interrupted` : ''}${summary.not_started > 0 ? `, ${summary.not_started} not started` : ''}${summary.skipped > 0 ? `, ${summary.skipped} skipped (no longer in the registry)` : ''} of ${rows.length}${rows.length > shown.length ? ` (only those that did not succeed are listed)` : ''}\n`)
      }
      if (stopping !== null) throw tpError('TENANT_PROXY_ERR_EXEC_INTERRUPTED', [stopping, summary.interrupted + summary.not_started, state.id, state.id])
      if (summary.failed > 0) throw tpError('TENANT_PROXY_ERR_EXEC_FAILED', [summary.failed, rows.length, state.id, dir, state.id])
      return 0
    } finally {
      unlock()
    }
  }
}

function isAlive (pid: number): boolean {
  try {
    kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function newTenantRun (slug: string): TenantRun {
  return { status: 'pending', exit_code: null, signal: null, reason: null, attempts: 0, started_at: null, finished_at: null, duration_ms: null, log: `${slug}.log` }
}

/**
 * Signals a child's whole process group (it was spawned detached, as its group's leader), so a
 * `sh -c` wrapper and what it started get the signal too. Node has no child API for a group.
 */
function signalGroup (child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  try {
    kill(-child.pid, signal)
  } catch {
    // The group is gone already.
  }
}

function definedEnv (env: CommandContext['env']): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v
  return out
}

function nonEmpty (v: string | undefined): string | null {
  return v === undefined || v === '' ? null : v
}

function positiveInt (text: string, option: string, max: number): number {
  const n = /^\d{1,6}$/.test(text) ? Number(text) : NaN
  if (!(n >= 1 && n <= max)) throw usage(`${option} must be a whole number from 1 to ${max}, got ${JSON.stringify(text)}`)
  return n
}

function seconds (text: string, option: string): number {
  const n = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN
  if (!(n > 0 && n <= 7 * 86_400)) throw usage(`${option} must be a number of seconds above 0, got ${JSON.stringify(text)}`)
  return n
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
