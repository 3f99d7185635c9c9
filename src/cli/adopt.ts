/**
 * `tenant-proxy registry adopt`: imports a Rails app's own tenants table (the tenants:create_from_legacy
 * and tenants:list world) into the registry in one transaction, reporting every row it could not
 * take and why; a second run changes nothing. The mapping rules are in src/registry/adopt.ts.
 */
import pg from 'pg'
import { tpError } from '../errors.js'
import { mapSourceRows, type SourceRow } from '../registry/adopt.js'
import { describeError } from '../registry/connect.js'
import { checkServerName, checkState, type TenantState } from '../registry/names.js'
import { quoteIdent } from '../registry/sql.js'
import type { AdoptOutcome } from '../registry/store.js'
import { flag, str, table, type Command } from './command.js'
import { StepError, Steps } from './progress.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitTimeoutMs } from './wait.js'

const COLUMN = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/
const TABLE = /^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$/

export const registryAdopt: Command = {
  name: 'registry adopt',
  summary: "Import an app's own tenants table (domain → database) into the registry, in one transaction; re-running changes nothing.",
  usage: `tenant-proxy registry adopt --from <url> --table <table> --domain-column <column> --database-column <column> [--active-column <column>] [--settings-column <column>] [--slug-column <column>] [--id-column <column>] [--server <name>] [--inactive-state suspended|maintenance|active] [--www-aliases] [--update] [--dry-run] [--json] ${WAIT_USAGE}`,
  help: `Reads every row of --table (schema-qualified or on the search path) from the database at --from
(a postgres:// URL, or env:NAME for the URL in the variable NAME, which keeps a password out of
the process list) and registers one tenant per row: the domain column's host (a leading www. stripped, as the app
looked hosts up without it) as the primary domain, the database column as its database, on --server
(default tenantDatabase.defaultServer, else tenantDatabase.defaultHost/Port). --active-column:
false or NULL gives --inactive-state (default suspended; the app itself never refused inactive
tenants' requests, only skipped them in its rake tasks). --settings-column: a JSON object kept as
the tenant's settings. Slugs come from --slug-column or from the domain (shop.example.com →
shop-example-com). --www-aliases also registers www.<domain> (not needed while routing.wwwFallback
is on). Rows are reported by --id-column (default id, when the table has one).

A row is not taken, with the reason printed, when it has no usable domain or database name, its
domain, slug or database collides with another row's, or its slug, domain or database belongs to
another tenant. A tenant adopted earlier is unchanged; if its state or settings differ now it is
reported, and updated with --update. Everything else is written in one transaction; the exit code
is 1 when any row was not taken. --dry-run checks everything and writes nothing.

${WAIT_HELP}`,
  options: {
    from: { type: 'string' },
    table: { type: 'string' },
    'domain-column': { type: 'string' },
    'database-column': { type: 'string' },
    'active-column': { type: 'string' },
    'settings-column': { type: 'string' },
    'slug-column': { type: 'string' },
    'id-column': { type: 'string' },
    server: { type: 'string' },
    'inactive-state': { type: 'string' },
    'www-aliases': { type: 'boolean' },
    update: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [0, 0],
  async run (ctx, args) {
    const config = ctx.config()
    const fromArg = str(args, 'from')
    if (fromArg === undefined) throw usage(`--from is required; usage: ${this.usage}`)
    const fromVar = fromArg.startsWith('env:') ? fromArg.slice(4) : null
    const from = fromVar === null ? fromArg : ctx.env[fromVar] ?? ''
    if (from === '') throw usage(`--from ${fromArg}: ${fromVar ?? ''} is not set`)
    const tableName = required(str(args, 'table'), '--table', TABLE)
    const columns = {
      domain: required(str(args, 'domain-column'), '--domain-column', COLUMN),
      database: required(str(args, 'database-column'), '--database-column', COLUMN),
      active: optional(str(args, 'active-column'), '--active-column'),
      settings: optional(str(args, 'settings-column'), '--settings-column'),
      slug: optional(str(args, 'slug-column'), '--slug-column'),
      id: optional(str(args, 'id-column'), '--id-column')
    }
    const inactiveText = str(args, 'inactive-state')
    const inactiveState: TenantState = inactiveText === undefined ? 'suspended' : checkState(inactiveText)
    const serverText = str(args, 'server')
    const serverName = serverText === undefined ? config.tenantDatabase.defaultServer : checkServerName(serverText)
    const dryRun = flag(args, 'dry-run')
    const json = flag(args, 'json')
    const wait = waitTimeoutMs(args)

    const steps = new Steps(ctx.io)
    const rows = await unwrap(steps.run(`read ${tableName}`, async () => await readSource(from, tableName, columns, config.registry.connectTimeoutMs)))
    const { candidates, refused, notes } = mapSourceRows(rows, { inactiveState, wwwAliases: flag(args, 'www-aliases') })
    const registry = await ctx.registry()
    let location: { server: string | null, host: string | null, port: number | null } = { server: null, host: null, port: null }
    if (serverName !== null) {
      const server = await registry.store.findServer(serverName)
      if (server === null) throw tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [serverName])
      location = { server: server.name, host: server.host, port: server.port }
    }
    const written = await unwrap(steps.run(`${dryRun ? 'check' : 'write'} ${candidates.length} tenant(s) ${dryRun ? 'against' : 'to'} the registry in one transaction`,
      async () => await registry.store.adoptTenants(candidates, location, { update: flag(args, 'update'), dryRun })))
    const outcomes = written.result
    const count = (action: AdoptOutcome['action']): number => outcomes.filter((o) => o.action === action).length
    const notTaken = [
      ...refused.map((r) => ({ row: r.key, domain: r.domain, reason: r.reason })),
      ...outcomes.filter((o) => o.action === 'refused').map((o) => ({ row: o.key, domain: candidates.find((c) => c.key === o.key)?.domains[0] ?? null, reason: o.reason ?? '' }))
    ]
    const differing = outcomes.filter((o) => o.action === 'differs')
    const result = {
      dry_run: dryRun,
      source: { table: tableName, rows: rows.length },
      created: count('created'),
      updated: count('updated'),
      unchanged: count('unchanged'),
      differs: differing.map((o) => ({ row: o.key, slug: o.slug, changes: o.reason })),
      not_taken: notTaken,
      notes: notes.map((n) => ({ row: n.key, domain: n.domain, note: n.note })),
      tenants: outcomes.filter((o) => o.action !== 'refused').map((o) => ({ row: o.key, slug: o.slug, action: o.action }))
    }
    if (!json) {
      if (notTaken.length > 0) {
        ctx.io.out(`rows not taken (${notTaken.length}):\n`)
        ctx.io.out(table(['ROW', 'DOMAIN', 'REASON'], notTaken.map((n) => [n.row, n.domain ?? '-', n.reason])))
      }
      if (differing.length > 0) {
        ctx.io.out(`tenants that differ from their row (${differing.length}):\n`)
        ctx.io.out(table(['ROW', 'SLUG', 'DIFFERENCE'], differing.map((d) => [d.key, d.slug, d.reason ?? ''])))
      }
      for (const n of notes) ctx.io.out(`note: row ${n.key}: ${n.note}\n`)
      ctx.io.out(`${dryRun ? 'dry run, nothing written: would have ' : ''}adopted ${rows.length} row(s) of ${tableName}: ${result.created} created, ${result.updated} updated, ${result.unchanged} unchanged${differing.length > 0 ? `, ${differing.length} differ` : ''}, ${notTaken.length} not taken\n`)
    }
    const waited = dryRun ? null : await waitAfterWrite(ctx, wait, written.version)
    if (json) ctx.io.out(JSON.stringify(waited === null ? result : { ...result, wait: waited }, null, 2) + '\n')
    settleWait(ctx, waited)
    if (notTaken.length > 0) throw tpError('TENANT_PROXY_ERR_ADOPT_INCOMPLETE', [`${notTaken.length} of ${rows.length} row(s) not taken (listed above); ${dryRun ? 'nothing was written (dry run)' : 'the others were adopted'}`])
    return 0
  }
}

/** A step's own error (a catalogue error says more than the step's wrapper). */
async function unwrap<T> (p: Promise<T>): Promise<T> {
  try {
    return await p
  } catch (err) {
    throw err instanceof StepError ? err.cause : err
  }
}

interface SourceColumns { domain: string, database: string, active: string | null, settings: string | null, slug: string | null, id: string | null }

/** Reads the source table with one query in a read-only transaction. */
async function readSource (url: string, tableName: string, columns: SourceColumns, connectTimeoutMs: number): Promise<SourceRow[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: connectTimeoutMs, application_name: 'tenant-proxy adopt' })
  client.on('error', () => {})
  try {
    await client.connect()
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_ADOPT_SOURCE', [describeError(err)], err)
  }
  try {
    const table = tableName.split('.').map(quoteIdent).join('.')
    let idColumn = columns.id
    if (idColumn === null) {
      // The table's id column when it has one (a Rails table does), for naming rows in reports.
      const has = await client.query('SELECT 1 FROM information_schema.columns WHERE table_name = $1 AND column_name = $2 AND ($3::text IS NULL OR table_schema = $3)',
        [tableName.split('.').pop(), 'id', tableName.includes('.') ? tableName.split('.')[0] : null])
      if (has.rowCount !== 0) idColumn = 'id'
    }
    const select = [
      `${idColumn === null ? 'NULL' : `${quoteIdent(idColumn)}::text`} AS key`,
      `${quoteIdent(columns.domain)}::text AS domain`,
      `${quoteIdent(columns.database)}::text AS database`,
      columns.active === null ? 'NULL AS active' : `${quoteIdent(columns.active)}::boolean AS active`,
      columns.settings === null ? 'NULL AS settings' : `${quoteIdent(columns.settings)}::text AS settings`,
      columns.slug === null ? 'NULL AS slug' : `${quoteIdent(columns.slug)}::text AS slug`
    ]
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    const r = await client.query<{ key: string | null, domain: string | null, database: string | null, active: boolean | null, settings: string | null, slug: string | null }>(
      `SELECT ${select.join(', ')} FROM ${table} ORDER BY ${idColumn === null ? quoteIdent(columns.domain) : quoteIdent(idColumn)}`)
    await client.query('COMMIT')
    return r.rows.map((row, i) => ({
      key: row.key === null ? `#${i + 1}` : `${idColumn ?? 'id'}=${row.key}`,
      domain: row.domain,
      database: row.database,
      ...(columns.active === null ? {} : { active: row.active }),
      ...(columns.settings === null ? {} : { settings: row.settings }),
      ...(columns.slug === null ? {} : { slug: row.slug })
    }))
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_ADOPT_SOURCE', [`${tableName}: ${describeError(err)}`], err)
  } finally {
    await client.end().catch(() => undefined)
  }
}

function required (value: string | undefined, option: string, pattern: RegExp): string {
  if (value === undefined) throw usage(`${option} is required`)
  if (!pattern.test(value)) throw usage(`${option} ${JSON.stringify(value)} is not a plain SQL name`)
  return value
}

function optional (value: string | undefined, option: string): string | null {
  return value === undefined ? null : required(value, option, COLUMN)
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
