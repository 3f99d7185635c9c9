/**
 * The registry's JSON lines exchange format (`registry export` / `registry import`): one tenant
 * per line, the same keys as `tenants show --json` minus the timestamps. Import validates every
 * line before anything is written and reports every problem with its line number.
 */
import { canonicalHost } from '../routing/host.js'
import { checkDatabaseHost, checkDatabaseName, checkPort, checkSlug, checkState, checkUpstream } from './names.js'
import { databaseLabel, type DatabaseLocation, type ImportProblem } from './problems.js'
import type { DomainKind, TenantRecord } from './store.js'

export { databaseLabel, formatProblems, type DatabaseLocation, type ImportProblem } from './problems.js'

/**
 * One tenant as exported and imported: the CLI's record without what the registry assigns. The
 * database server's name is not part of it: a line carries the host and port the server had.
 */
export type TransferTenant = Omit<TenantRecord, 'epoch' | 'created_at' | 'updated_at' | 'database_server' | 'paused_hold_ms'>

// database_server (tenants show --json) is accepted and ignored like the timestamps.
const KEYS = new Set(['slug', 'state', 'database_name', 'database_host', 'database_port', 'database_server', 'upstream', 'epoch', 'settings', 'domains', 'created_at', 'updated_at'])

/** The export line of a tenant. */
export function exportLine (t: TenantRecord): string {
  const { slug, state, database_name: dbName, database_host: dbHost, database_port: dbPort, upstream, epoch, settings, domains } = t
  return JSON.stringify({ slug, state, database_name: dbName, database_host: dbHost, database_port: dbPort, upstream, epoch, settings, domains }) + '\n'
}

/**
 * One input line: the tenant when the line is valid, and in any case whatever parts of it are
 * valid, so conflicts with the registry are found on the same pass as format problems.
 */
export interface ImportEntry {
  readonly line: number
  readonly tenant: TransferTenant | null
  readonly slug: string | null
  readonly domains: readonly string[]
  readonly database: DatabaseLocation | null
}

/**
 * Parses and validates JSON lines; returns every line's entry and every problem found in the
 * input itself (format, names, canonical hosts, duplicates within the input). Conflicts with the
 * registry are the store's part (RegistryStore.importTenants). `epoch`, `created_at` and
 * `updated_at` are accepted (export output) and ignored: the registry assigns them.
 */
export function parseImport (text: string): { entries: ImportEntry[], problems: ImportProblem[] } {
  const entries: ImportEntry[] = []
  const problems: ImportProblem[] = []
  const slugs = new Map<string, number>()
  const hosts = new Map<string, number>()
  const locations = new Map<string, number>()
  const lines = text.split('\n')
  for (const [i, raw] of lines.entries()) {
    const n = i + 1
    const line = raw.trim()
    if (line === '') continue
    let lineProblems = 0
    const problem = (message: string): void => {
      lineProblems++
      problems.push({ line: n, message })
    }
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch (err) {
      problem(`not JSON (${(err as Error).message})`)
      continue
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problem('not a JSON object')
      continue
    }
    const o = value as Record<string, unknown>
    const unknown = Object.keys(o).filter((k) => !KEYS.has(k))
    if (unknown.length > 0) problem(`unknown key(s) ${unknown.join(', ')}`)
    const entry = validate(o, n, problem)
    const seen = (map: Map<string, number>, key: string, what: string): void => {
      const first = map.get(key)
      if (first !== undefined) problem(`${what} also on line ${first}`)
      else map.set(key, n)
    }
    if (entry.slug !== null) seen(slugs, entry.slug, `slug ${entry.slug}`)
    for (const hostname of entry.domains) seen(hosts, hostname, `domain ${hostname}`)
    if (entry.database !== null) seen(locations, locationKey(entry.database), databaseLabel(entry.database))
    entries.push(lineProblems > 0 ? { ...entry, tenant: null } : entry)
  }
  if (entries.length === 0 && problems.length === 0) problems.push({ line: null, message: 'no tenants in the input' })
  return { entries, problems }
}

/** The registry's uniqueness key of a database location (see tenants_database_location_key). */
function locationKey (db: DatabaseLocation): string {
  return `${db.host ?? ''}:${db.port ?? 0}/${db.name}`
}

function validate (o: Record<string, unknown>, line: number, problem: (msg: string) => void): ImportEntry {
  let count = 0
  const report = (msg: string): void => { count++; problem(msg) }
  const check = <T>(fn: () => T): T | null => {
    try {
      return fn()
    } catch (err) {
      report((err as Error).message.replace(/ \(TENANT_PROXY_ERR_[A-Z_]+\)$/, ''))
      return null
    }
  }
  const str = (key: string): string | null => {
    if (typeof o[key] === 'string') return o[key]
    report(`${key} must be a string`)
    return null
  }
  const optional = <T>(key: string, fn: (v: never) => T): T | null => {
    const v = o[key]
    if (v === undefined || v === null) return null
    return check(() => fn(v as never))
  }
  const slugText = str('slug')
  const slug = slugText === null ? null : check(() => checkSlug(slugText))
  const dbText = str('database_name')
  const databaseName = dbText === null ? null : check(() => checkDatabaseName(dbText))
  const state = o.state === undefined ? 'active' : check(() => checkState(String(o.state)))
  const databaseHost = optional('database_host', (v: string) => checkDatabaseHost(String(v)))
  const databasePort = optional('database_port', (v: number) => checkPort(v))
  const upstream = optional('upstream', (v: string) => checkUpstream(String(v)))
  let settings: Record<string, unknown> = {}
  if (o.settings !== undefined) {
    if (typeof o.settings !== 'object' || o.settings === null || Array.isArray(o.settings)) {
      report('settings must be a JSON object')
    } else {
      settings = o.settings as Record<string, unknown>
    }
  }
  const domains: Array<{ hostname: string, kind: DomainKind }> = []
  if (!Array.isArray(o.domains) || o.domains.length === 0) {
    report('domains must be a non-empty list')
  } else {
    let primaries = 0
    for (const [j, d] of (o.domains as unknown[]).entries()) {
      const entry = typeof d === 'string' ? { hostname: d, kind: j === 0 ? 'primary' : 'alias' } : d
      if (typeof entry !== 'object' || entry === null || typeof (entry as { hostname?: unknown }).hostname !== 'string') {
        report(`domains[${j}] must be a hostname or {"hostname","kind"}`)
        continue
      }
      const { hostname, kind = 'alias' } = entry as { hostname: string, kind?: unknown }
      const canonical = canonicalHost(hostname)
      if (!canonical.ok) {
        report(`domains[${j}]: invalid host ${JSON.stringify(hostname)}: ${canonical.reason}`)
        continue
      }
      if (kind !== 'primary' && kind !== 'alias') {
        report(`domains[${j}]: kind must be primary or alias`)
        continue
      }
      if (kind === 'primary') primaries++
      domains.push({ hostname: canonical.host, kind })
    }
    if (primaries > 1) {
      report('more than one primary domain')
    }
  }
  const hostnames = domains.map((d) => d.hostname)
  // A location is only known when its host and port are valid too (absent means the default).
  const locationValid = databaseName !== null && (databaseHost !== null || o.database_host === undefined || o.database_host === null) &&
    (databasePort !== null || o.database_port === undefined || o.database_port === null)
  const database = locationValid ? { name: databaseName, host: databaseHost, port: databasePort } : null
  const tenant = count > 0 || slug === null || databaseName === null || state === null
    ? null
    : { slug, state, database_name: databaseName, database_host: databaseHost, database_port: databasePort, upstream, settings, domains }
  return { line, tenant, slug, domains: hostnames, database }
}
