/**
 * `tenant-proxy tenants move`: a tenant's database to another registered server with no failed
 * request. The cut-over is a pause (src/cli/pause.ts): every proxy holds the tenant's new
 * requests while the database is copied and verified, then one registry transaction names the
 * new server, bumps the epoch and ends the pause, and the held requests go on to the new database.
 *
 * Before that transaction nothing the tenant uses is changed: any failure (or SIGINT/SIGTERM)
 * resumes the tenant on its old server, which was only read, and drops the half-made target
 * database. After it, only the source database's removal is left, and its failure is reported
 * with what to drop by hand.
 *
 * In-flight requests: once every proxy connected to the registry reports the pause applied (the
 * version report of `--wait`, src/cli/wait.ts), no new request reaches the app for this tenant.
 * The requests forwarded before then are done once the source database has had no statement
 * running and no transaction open for `--settle` (pg_stat_activity, which the admin role sees
 * whole); the copy starts only then. docs/operations.md, "Moving a tenant", says what this does
 * not cover (writers outside the proxy, such as background jobs).
 */
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import pg from 'pg'
import { isTpError, tpError } from '../errors.js'
import { checkServerName, checkSlug } from '../registry/names.js'
import { quoteIdent } from '../registry/sql.js'
import type { ServerAdmin } from '../servers/admin.js'
import { dumpDatabase, restoreDump } from '../servers/pg-tools.js'
import { serverOfTenant } from '../servers/resolve.js'
import { redactUrls } from '../redact.js'
import { flag, str, type Command } from './command.js'
import { formatHold, parseHoldTimeout } from './pause.js'
import { openAdmin, stopController } from './provision.js'
import { duration, StepError, Steps } from './progress.js'
import { settleWait, waitForProxies, waitTimeoutMs, DEFAULT_WAIT_TIMEOUT_S, WAIT_OPTIONS } from './wait.js'

/** Default hold time of the move's pause: the copy must fit in it, or held requests get 503. */
const DEFAULT_MOVE_HOLD_MS = 60_000
const DEFAULT_DRAIN_MS = 30_000
const DEFAULT_SETTLE_MS = 1_000
const POLL_MS = 50
/** Most stderr kept from a copy command for the error message. */
const STDERR_KEEP = 8_192

/** A table and its exact row count. */
export interface TableCount { readonly table: string, readonly rows: number }

export const tenantsMove: Command = {
  name: 'tenants move',
  summary: 'Move a tenant\'s database to another server with no failed request: pause, copy, verify, switch, resume.',
  usage: 'tenant-proxy tenants move <slug> --to <server> --yes [--copy-with pg_dump|<command>] [--keep-source] [--timeout <duration>] [--drain-timeout <duration>] [--settle <duration>] [--dry-run] [--json] [--wait-timeout <s>]',
  help: `Steps: check (the tenant is active and not paused, the target server differs and has no
database of that name, both servers reachable with their admin credentials); create the target
database (owner: the target server's owner, else the source database's owner when that role exists
there); pause the tenant (--timeout, default ${formatHold(DEFAULT_MOVE_HOLD_MS)}: the longest a request is held; the
copy must fit in it); wait until every proxy connected to the registry has applied the pause
(--wait-timeout, default ${DEFAULT_WAIT_TIMEOUT_S} s); wait until the source database has had no statement running
and no transaction open for --settle (default ${formatHold(DEFAULT_SETTLE_MS)}), at most --drain-timeout (default ${formatHold(DEFAULT_DRAIN_MS)});
copy; verify (the same tables on both sides, each with exactly as many rows); switch the tenant to
the new server, bump its epoch and resume it in one registry transaction; wait for the proxies to
apply it; drop the source database unless --keep-source.

--copy-with pg_dump (the default) copies with pg_dump --format=custom and pg_restore --no-owner
(as the target database's owner). Any other value is a shell command run instead, with
SOURCE_DATABASE_URL and TARGET_DATABASE_URL (admin credentials, each naming its database),
SOURCE_DATABASE_NAME, TARGET_DATABASE_NAME and TENANT_SLUG in its environment; it must exit 0.

Any failure before the switch resumes the tenant on its old server, untouched, and drops the
target database again. --dry-run runs the checks and changes nothing. --yes is required unless
--keep-source or --dry-run (the source database is dropped).`,
  options: {
    to: { type: 'string' },
    'copy-with': { type: 'string' },
    'keep-source': { type: 'boolean' },
    timeout: { type: 'string' },
    'drain-timeout': { type: 'string' },
    settle: { type: 'string' },
    yes: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const config = ctx.config()
    const slug = checkSlug(args.positionals[0] ?? '')
    const toName = str(args, 'to')
    if (toName === undefined) throw usage(`--to is required; usage: ${this.usage}`)
    checkServerName(toName)
    const copyWith = str(args, 'copy-with') ?? 'pg_dump'
    if (copyWith.trim() === '') throw usage('--copy-with must be pg_dump or a command')
    const keepSource = flag(args, 'keep-source')
    const dryRun = flag(args, 'dry-run')
    const json = flag(args, 'json')
    if (!dryRun && !keepSource && !flag(args, 'yes')) throw tpError('TENANT_PROXY_ERR_CLI_CONFIRM', [`refusing to move tenant ${slug} and drop its source database without --yes (or keep it with --keep-source)`])
    const timeout = str(args, 'timeout')
    const holdMs = timeout === undefined ? DEFAULT_MOVE_HOLD_MS : parseHoldTimeout(timeout)
    const drainText = str(args, 'drain-timeout')
    const drainMs = drainText === undefined ? DEFAULT_DRAIN_MS : parseHoldTimeout(drainText, '--drain-timeout')
    const settleText = str(args, 'settle')
    const settleMs = settleText === undefined ? DEFAULT_SETTLE_MS : parseHoldTimeout(settleText, '--settle')
    const waitMs = waitTimeoutMs(args) ?? DEFAULT_WAIT_TIMEOUT_S * 1000

    const registry = await ctx.registry()
    const store = registry.store
    const tenant = await store.findTenant(slug)
    if (tenant === null || tenant.slug !== slug) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
    if (tenant.state !== 'active') throw tpError('TENANT_PROXY_ERR_TENANT_NOT_ACTIVE', [slug, tenant.state, 'tenants move moves active tenants (a database not in use needs no pause: copy it and tenants update --server)'])
    if (tenant.paused_hold_ms !== null) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_ACTIVE', [slug, 'paused', 'another pause or move is under way (tenants resume ends a pause)'])
    const servers = await store.listServers()
    const to = servers.find((s) => s.name === toName)
    if (to === undefined) throw tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [toName])
    const found = serverOfTenant(tenant, servers, config.tenantDatabase)
    if (!found.ok) throw tpError('TENANT_PROXY_ERR_SERVER_NONE', [`cannot reach the database of tenant ${slug}: ${found.reason}`])
    const from = found.server
    if (from.name === to.name || (from.host === to.host && from.port === to.port)) {
      throw usage(`tenant ${slug} is already on server ${to.name} (${to.host}:${to.port})`)
    }
    const db = tenant.database_name
    const fromHost = tenant.database_host ?? config.tenantDatabase.defaultHost
    const fromPort = tenant.database_port ?? config.tenantDatabase.defaultPort

    const stop = stopController(ctx)
    const steps = new Steps(ctx.io)
    let source: ServerAdmin | null = null
    let target: ServerAdmin | null = null
    try {
      source = await openAdmin(ctx, from)
      target = await openAdmin(ctx, to)
      const src = source
      const dst = target
      const owner = await steps.run('check the tenant, both servers and the databases', async () => {
        const sourceDb = (await src.listDatabases()).find((d) => d.name === db)
        if (sourceDb === undefined) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`database ${db} does not exist on server ${from.name}; nothing to move`])
        if (await dst.databaseExists(db)) throw tpError('TENANT_PROXY_ERR_DATABASE_EXISTS', [db, to.name, '; tenants move copies into a database it creates'])
        if (to.owner !== null) {
          if (!await dst.roleExists(to.owner)) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`owner role ${to.owner} of server ${to.name} does not exist there`])
          return to.owner
        }
        return await dst.roleExists(sourceDb.owner) ? sourceDb.owner : null
      })
      const plan = {
        slug,
        database: db,
        from: { server: from.name, host: from.host, port: from.port },
        to: { server: to.name, host: to.host, port: to.port, owner },
        copy_with: copyWith,
        hold_ms: holdMs,
        source: keepSource ? 'keep' : 'drop'
      }
      ctx.io.err(`${dryRun ? 'dry run: would move' : 'moving'} tenant ${slug}: database ${db} from ${from.name} (${from.host}:${from.port}) to ${to.name} (${to.host}:${to.port}), requests held up to ${formatHold(holdMs)} meanwhile${keepSource ? ', source kept' : ''}\n`)
      if (dryRun) {
        ctx.io.out(json ? JSON.stringify({ dry_run: true, ...plan }, null, 2) + '\n' : `dry run, nothing changed: tenant ${slug} can be moved from ${from.name} to ${to.name}\n`)
        return 0
      }
      stop.check()
      await steps.run(`create database ${db} on ${to.name}`, async () => {
        await dst.createDatabase(db, { owner, comment: `tenant-proxy: copy of tenant ${slug} being moved from ${from.name}, started ${new Date().toISOString()}` })
        steps.onUndo(`drop the half-made database ${db} on ${to.name}`, async () => { await dst.dropDatabase(db) })
      })
      stop.check()
      const paused = await steps.run(`pause tenant ${slug} (requests held up to ${formatHold(holdMs)})`, async () => {
        const written = await store.setPause(slug, holdMs, { unlessPaused: true })
        steps.onUndo(`resume tenant ${slug} on ${from.name}`, async () => { await store.setPause(slug, null) })
        return written
      })
      stop.check()
      const applied = await steps.run('wait for every connected proxy to hold its requests', async () => {
        const waited = await waitForProxies(registry.pool, config.registry.applicationName, paused.version, waitMs)
        if (!waited.applied) settleWait(ctx, waited)
        return waited
      })
      stop.check()
      await steps.run(`wait for the requests in flight to finish (${db} quiet for ${formatHold(settleMs)})`, async () => {
        await waitQuiet(src, db, settleMs, drainMs, stop.signal)
      })
      stop.check()
      await steps.run(`copy ${db} with ${copyWith === 'pg_dump' ? 'pg_dump and pg_restore' : 'the --copy-with command'}`, async () => {
        if (copyWith === 'pg_dump') {
          const dir = await mkdtemp(join(tmpdir(), 'tenant-proxy-move-'))
          try {
            const file = join(dir, `${db}.dump`)
            await dumpDatabase({ command: config.tenantDatabase.pgDump, url: src.urlFor(db), env: ctx.env, signal: stop.signal }, file)
            await restoreDump({ command: config.tenantDatabase.pgRestore, url: dst.urlFor(db), env: ctx.env, signal: stop.signal }, file, { role: owner })
          } finally {
            await rm(dir, { recursive: true, force: true })
          }
        } else {
          await runCopyCommand(copyWith, {
            ...ctx.env,
            SOURCE_DATABASE_URL: src.urlFor(db),
            TARGET_DATABASE_URL: dst.urlFor(db),
            SOURCE_DATABASE_NAME: db,
            TARGET_DATABASE_NAME: db,
            TENANT_SLUG: slug
          }, stop.signal)
        }
      })
      stop.check()
      const verified = await steps.run('verify: the same tables with the same row counts on both sides', async () => {
        const [a, b] = [await tableCounts(src.urlFor(db)), await tableCounts(dst.urlFor(db))]
        const problems = compareCounts(a, b)
        if (problems.length > 0) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`the copy differs from the source: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`])
        return { tables: a.length, rows: a.reduce((n, t) => n + t.rows, 0) }
      })
      stop.check()
      const switched = await steps.run(`switch tenant ${slug} to ${to.name}, bump its epoch and resume it (one registry transaction)`, async () =>
        await store.switchServer(slug, to.name, { host: fromHost, port: fromPort, databaseName: db }))
      // The tenant lives on the new server now: nothing before this point is undone any more.
      steps.commit()
      const result: Record<string, unknown> = { ...plan, epoch: { from: tenant.epoch, to: switched.result.epoch }, verified, proxies: applied.proxies.length }
      try {
        const confirmed = await steps.run('wait for every connected proxy to route to the new server', async () => {
          const waited = await waitForProxies(registry.pool, config.registry.applicationName, switched.version, waitMs)
          if (!waited.applied) settleWait(ctx, waited)
          return waited
        })
        result.switch_wait = confirmed
        await dst.commentDatabase(db, `tenant-proxy: database of tenant ${slug}, moved from ${from.name} at ${new Date().toISOString()}`)
        if (keepSource) {
          await src.commentDatabase(db, `tenant-proxy: former database of tenant ${slug}, moved to ${to.name} at ${new Date().toISOString()}; kept by --keep-source`)
        } else {
          await steps.run(`drop the source database ${db} on ${from.name}`, async () => { await src.dropDatabase(db) })
        }
      } catch (err) {
        const failure = err instanceof StepError ? err : new StepError('finish', err)
        throw tpError('TENANT_PROXY_ERR_MOVE_FAILED', [slug, failure.step, messageOf(failure.cause),
          `The tenant runs on ${to.name} (epoch ${switched.result.epoch}); ${keepSource ? `its old database ${db} on ${from.name} is kept` : `its old database ${db} on ${from.name} is left behind: drop it once every proxy routes to ${to.name} (DROP DATABASE ${db})`}`], failure.cause)
      }
      const total = steps.completed.reduce((n, s) => n + s.ms, 0)
      if (json) ctx.io.out(JSON.stringify({ ...result, tenant: switched.result, steps: steps.completed }, null, 2) + '\n')
      else ctx.io.out(`moved tenant ${slug} to ${to.name} (${to.host}:${to.port}): ${verified.tables} table(s), ${verified.rows} row(s) verified, epoch ${tenant.epoch} → ${switched.result.epoch}, source database ${keepSource ? 'kept' : 'dropped'} (${duration(total)})\n`)
      return 0
    } catch (err) {
      if (isTpError(err, 'TENANT_PROXY_ERR_MOVE_FAILED')) throw err
      const failure = err instanceof StepError ? err : new StepError('move', err)
      const cause = failure.cause
      // A refusal found by the checks is reported as itself: nothing was started.
      if (steps.completed.length === 0 && isTpError(cause)) throw cause
      const undone = await steps.undo()
      const created = steps.completed.some((s) => s.step.startsWith('create database'))
      const left = undone.length > 0
        ? `CLEANUP FAILED: ${undone.map((u) => `${u.label}: ${u.error}`).join('; ')}; check tenant ${slug} (tenants show; tenants resume ${slug}) and drop database ${db} on server ${to.name} by hand`
        : `Tenant ${slug} runs on ${from.name} as before${created ? `; the half-made database ${db} on ${to.name} was dropped` : ''}`
      throw tpError('TENANT_PROXY_ERR_MOVE_FAILED', [slug, stop.signal.aborted ? `${failure.step} (interrupted by ${String(stop.signal.reason)})` : failure.step, messageOf(cause), left], cause)
    } finally {
      stop.dispose()
      await source?.close()
      await target?.close()
    }
  }
}

/**
 * Waits until no session on `db` but the caller's is running a statement or inside a transaction,
 * continuously for `settleMs`; fails after `limitMs`.
 */
async function waitQuiet (admin: ServerAdmin, db: string, settleMs: number, limitMs: number, signal: AbortSignal): Promise<void> {
  const started = performance.now()
  let quietSince: number | null = null
  for (;;) {
    // state is NULL for sessions of other roles unless the admin role may read them (superuser,
    // pg_read_all_stats): then the drain cannot be observed, and waiting would only time out.
    const r = await admin.query<{ busy: number, hidden: number }>(
      `SELECT count(*) FILTER (WHERE state IS DISTINCT FROM 'idle')::int AS busy, count(*) FILTER (WHERE state IS NULL)::int AS hidden
       FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'`, [db])
    const hidden = r.rows[0]?.hidden ?? 0
    if (hidden > 0) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`the admin role of server ${admin.name} cannot see what ${hidden} session(s) on ${db} are doing (pg_stat_activity.state); make it a superuser or GRANT pg_read_all_stats TO it`])
    const busy = r.rows[0]?.busy ?? 0
    const now = performance.now()
    if (busy > 0) quietSince = null
    else quietSince ??= now
    if (quietSince !== null && now - quietSince >= settleMs) return
    if (now - started >= limitMs) {
      throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`database ${db} still had ${busy} session(s) running a statement or in a transaction after ${formatHold(limitMs)} (--drain-timeout)`])
    }
    await delay(POLL_MS, undefined, { signal }).catch(() => undefined)
    if (signal.aborted) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`interrupted by ${String(signal.reason)}`])
  }
}

/** Every ordinary table outside the system schemas with its exact row count, by name. */
export async function tableCounts (url: string): Promise<TableCount[]> {
  const client = new pg.Client({ connectionString: url, application_name: 'tenant-proxy move verify' })
  client.on('error', () => {})
  await client.connect()
  try {
    // One snapshot for the list and every count.
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    const tables = await client.query<{ schema: string, name: string }>(
      `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
       ORDER BY 1, 2`)
    const out: TableCount[] = []
    for (const t of tables.rows) {
      const r = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ONLY ${quoteIdent(t.schema)}.${quoteIdent(t.name)}`)
      out.push({ table: `${t.schema}.${t.name}`, rows: Number(r.rows[0]?.n ?? 0) })
    }
    await client.query('COMMIT')
    return out
  } finally {
    await client.end().catch(() => undefined)
  }
}

/** What differs between the source's tables and the copy's; empty when they match. */
export function compareCounts (source: readonly TableCount[], copy: readonly TableCount[]): string[] {
  const problems: string[] = []
  const copied = new Map(copy.map((t) => [t.table, t.rows]))
  for (const t of source) {
    const n = copied.get(t.table)
    if (n === undefined) problems.push(`table ${t.table} is missing from the copy`)
    else if (n !== t.rows) problems.push(`table ${t.table} has ${t.rows} row(s) in the source and ${n} in the copy`)
    copied.delete(t.table)
  }
  for (const table of copied.keys()) problems.push(`table ${table} is in the copy only`)
  return problems
}

/** Runs the operator's copy command in a shell; its stderr's end is the error when it fails. */
async function runCopyCommand (command: string, env: Readonly<Record<string, string | undefined>>, signal: AbortSignal): Promise<void> {
  const clean: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v
  if (signal.aborted) throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', ['the --copy-with command was not started: interrupted'])
  // A process group of its own, so an interruption stops the whole pipeline (pg_dump | psql), not only the shell.
  const child = spawn('/bin/sh', ['-c', command], { env: clean, stdio: ['ignore', 'ignore', 'pipe'], detached: true })
  const stopGroup = (): void => {
    // Never -0: that would be this CLI's own group.
    if (child.pid !== undefined) try { process.kill(-child.pid, 'SIGTERM') } catch { /* already gone */ }
  }
  signal.addEventListener('abort', stopGroup, { once: true })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-STDERR_KEEP) })
  const outcome = await new Promise<{ code: number | null, signal: NodeJS.Signals | null, error: Error | null }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, signal: null, error }))
    child.once('close', (code, sig) => resolve({ code, signal: sig, error: null }))
  })
  signal.removeEventListener('abort', stopGroup)
  if (outcome.error !== null) throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`the --copy-with command could not run: ${outcome.error.message}`], outcome.error)
  if (outcome.code !== 0) {
    const shown = stderr.trim().split('\n').filter((l) => l.trim() !== '').slice(-5).join(' | ')
    const how = outcome.signal !== null ? `was killed by ${outcome.signal}` : `exited with ${outcome.code ?? '?'}`
    // The command's output may echo the URLs it was given: never their passwords.
    throw tpError('TENANT_PROXY_ERR_TOOL_FAILED', [`the --copy-with command ${how}${shown === '' ? '' : `: ${redactUrls(shown)}`}`])
  }
}

function messageOf (err: unknown): string {
  const m = (err as Error | undefined)?.message ?? String(err)
  return m.replace(/ \(TENANT_PROXY_ERR_[A-Z_]+\)$/, '')
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
