/**
 * `--wait` on CLI writes: after the write commits, poll pg_stat_activity until every proxy's
 * change-feed connection reports (in its application_name, see src/registry/feed-name.ts) a
 * registry version at least the one the write committed as. A proxy reports a version only after
 * its in-memory index holds it, so once the wait returns every connected proxy routes by the change.
 */
import { setTimeout as delay } from 'node:timers/promises'
import type pg from 'pg'
import { tpError } from '../errors.js'
import { feedPrefix, parseFeedApplicationName } from '../registry/feed-name.js'
import { flag, str, type CommandContext, type Options, type ParsedArgs } from './command.js'

/** Default bound of `--wait`, seconds. */
export const DEFAULT_WAIT_TIMEOUT_S = 30
const MAX_WAIT_TIMEOUT_S = 3_600
/** Polling pauses grow from the first to the last (a proxy usually applies a change within milliseconds). */
const FIRST_POLL_MS = 5
const MAX_POLL_MS = 50

/** The options every registry write accepts. */
export const WAIT_OPTIONS: Options = {
  wait: { type: 'boolean' },
  'wait-timeout': { type: 'string' }
}

/** Usage fragment of WAIT_OPTIONS. */
export const WAIT_USAGE = '[--wait] [--wait-timeout <s>]'

/** Help paragraph of WAIT_OPTIONS. */
export const WAIT_HELP = `--wait: return only once every proxy connected to the registry has applied the change (each
proxy reports its applied registry version in its change-feed connection's application_name);
--wait-timeout <s> (default ${DEFAULT_WAIT_TIMEOUT_S}, implies --wait) bounds the wait. On timeout the command exits 75
(TENANT_PROXY_ERR_WAIT_TIMEOUT) naming each proxy that has not applied it; the change itself is committed.
With no proxy connected it returns at once and says so.`

/** A proxy's change-feed connection as pg_stat_activity shows it. */
export interface ProxyFeed {
  /** Raw application_name (`<applicationName> feed [v=<version> ]<host>/<pid>`). */
  readonly application_name: string
  /** `<host>/<pid>` of the proxy process. */
  readonly proxy: string
  /** Registry version the proxy has applied; null while it has not reported one (loading). */
  readonly version: number | null
  readonly client_addr: string | null
  readonly backend_start: string
  /** Null unless the CLI's role may see the session's state (same role, superuser, pg_read_all_stats). */
  readonly state: string | null
}

/** What `--wait` found. */
export interface WaitResult {
  /** The registry version the write committed as. */
  readonly version: number
  /** True when every connected proxy reported at least `version` (also with none connected). */
  readonly applied: boolean
  readonly timeout_s: number
  readonly waited_ms: number
  readonly proxies: ReadonlyArray<{ proxy: string, version: number | null, applied: boolean }>
}

/** The wait timeout asked for in ms, or null without --wait; a bad value is a usage error (checked before writing). */
export function waitTimeoutMs (args: ParsedArgs): number | null {
  const raw = str(args, 'wait-timeout')
  if (raw === undefined) return flag(args, 'wait') ? DEFAULT_WAIT_TIMEOUT_S * 1000 : null
  const seconds = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN
  if (!(seconds > 0 && seconds <= MAX_WAIT_TIMEOUT_S)) {
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--wait-timeout must be a number of seconds above 0 and at most ${MAX_WAIT_TIMEOUT_S}, got ${JSON.stringify(raw)}`])
  }
  return Math.round(seconds * 1000)
}

/** Every proxy change feed connected to the registry database, oldest first. */
export async function listFeeds (pool: pg.Pool, applicationName: string): Promise<ProxyFeed[]> {
  // Any role sees every session's application_name in pg_stat_activity (other columns may be
  // hidden from it), so this works with a CLI role that is neither superuser nor the proxies' role.
  const r = await pool.query<{ application_name: string, client_addr: string | null, backend_start: string, state: string | null }>(
    `SELECT application_name, client_addr::text, to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS backend_start, state
     FROM pg_stat_activity WHERE datname = current_database() AND starts_with(application_name, $1)
     ORDER BY backend_start, pid`, [feedPrefix(applicationName)])
  const feeds: ProxyFeed[] = []
  for (const row of r.rows) {
    const parsed = parseFeedApplicationName(applicationName, row.application_name)
    if (parsed !== null) feeds.push({ ...row, proxy: parsed.proxy, version: parsed.version })
  }
  return feeds
}

/** Polls until every connected proxy has applied `version`, or `timeoutMs` passes. */
export async function waitForProxies (pool: pg.Pool, applicationName: string, version: number, timeoutMs: number): Promise<WaitResult> {
  const started = performance.now()
  for (let pause = FIRST_POLL_MS; ; pause = Math.min(pause * 2, MAX_POLL_MS)) {
    const feeds = await listFeeds(pool, applicationName)
    const proxies = feeds.map((f) => ({ proxy: f.proxy, version: f.version, applied: f.version !== null && f.version >= version }))
    const applied = proxies.every((p) => p.applied)
    const waited = performance.now() - started
    if (applied || waited >= timeoutMs) {
      return { version, applied, timeout_s: timeoutMs / 1000, waited_ms: Math.round(waited), proxies }
    }
    await delay(Math.min(pause, timeoutMs - waited))
  }
}

/**
 * Runs the wait a write command was asked for (`timeoutMs` from waitTimeoutMs); null when not
 * asked. The caller prints its own output, then hands the result to settleWait.
 */
export async function waitAfterWrite (ctx: CommandContext, timeoutMs: number | null, version: number): Promise<WaitResult | null> {
  if (timeoutMs === null) return null
  const registry = await ctx.registry()
  return await waitForProxies(registry.pool, ctx.config().registry.applicationName, version, timeoutMs)
}

/**
 * Tells the user what the wait found (stderr, so stdout stays the command's own output) and
 * throws TENANT_PROXY_ERR_WAIT_TIMEOUT when a proxy had not applied the change in time.
 */
export function settleWait (ctx: CommandContext, wait: WaitResult | null): void {
  if (wait === null) return
  const n = wait.proxies.length
  if (n === 0) {
    ctx.io.err(`tenant-proxy: no proxy connected to the registry; nothing to wait for (registry version ${wait.version})\n`)
    return
  }
  if (wait.applied) {
    ctx.io.err(`tenant-proxy: applied by ${n === 1 ? 'the one proxy' : `all ${n} proxies`} connected to the registry (registry version ${wait.version}, ${wait.waited_ms} ms)\n`)
    return
  }
  const lagging = wait.proxies.filter((p) => !p.applied)
  throw tpError('TENANT_PROXY_ERR_WAIT_TIMEOUT', [
    wait.version, wait.timeout_s, lagging.length, n,
    lagging.map((p) => `${p.proxy} (${p.version === null ? 'no version reported yet: still loading, or a tenant-proxy that does not report one' : `at version ${p.version}`})`).join(', ')
  ])
}
