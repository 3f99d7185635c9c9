/**
 * `tenant-proxy tenants …` and `tenant-proxy domains …`: registry writes and reads, the
 * replacement for hand-written tenants:create/list/drop rake tasks.
 */
import { tpError } from '../errors.js'
import {
  checkDatabaseHost, checkDatabaseName, checkPort, checkServerName, checkSettings, checkSlug, checkState, checkUpstream, TENANT_STATES
} from '../registry/names.js'
import type { RegistryStore, TenantPatch, TenantRecord, Written } from '../registry/store.js'
import { canonicalHost, requireCanonicalHost } from '../routing/host.js'
import { flag, str, strs, table, type Command, type CommandContext, type ParsedArgs } from './command.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitTimeoutMs } from './wait.js'

const JSON_OPTION = { json: { type: 'boolean' } } as const
const LOCATION_HELP = `Database server: --server names a registered server (servers add), whose host and port the
descriptor then carries (and follows when the server changes); --db-host/--db-port give a host
and port directly. With neither, the tenant names tenantDatabase.defaultServer when that is set,
and otherwise lives on tenantDatabase.defaultHost/Port. These record where the database is; they
move no data.`

export const tenantsAdd: Command = {
  name: 'tenants add',
  summary: 'Register a tenant with its database and one or more domains (the first is primary).',
  usage: `tenant-proxy tenants add <slug> --domain <host> [--domain <host>…] --database <name> [--server <name> | --db-host <host> --db-port <port>] [--state active|suspended|maintenance] [--upstream <pool>] [--settings <json>] [--json] ${WAIT_USAGE}`,
  help: `${LOCATION_HELP}\n\n${WAIT_HELP}`,
  options: {
    domain: { type: 'string', multiple: true },
    database: { type: 'string' },
    'db-host': { type: 'string' },
    'db-port': { type: 'string' },
    server: { type: 'string' },
    state: { type: 'string' },
    upstream: { type: 'string' },
    settings: { type: 'string' },
    ...JSON_OPTION,
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const database = str(args, 'database')
    if (database === undefined) throw usage(`--database is required; usage: ${this.usage}`)
    const domains = canonicalDomains(strs(args, 'domain'))
    if (domains.length === 0) throw usage(`at least one --domain is required; usage: ${this.usage}`)
    const dbHost = str(args, 'db-host')
    const dbPort = str(args, 'db-port')
    const state = str(args, 'state')
    const upstream = str(args, 'upstream')
    const settings = str(args, 'settings')
    const server = serverOption(ctx, args, dbHost !== undefined || dbPort !== undefined)
    const input = {
      slug,
      databaseServer: server,
      databaseName: checkDatabaseName(database),
      databaseHost: dbHost === undefined ? null : checkDatabaseHost(dbHost),
      databasePort: dbPort === undefined ? null : checkPort(dbPort),
      state: state === undefined ? 'active' as const : checkState(state),
      upstream: upstream === undefined ? null : checkUpstream(upstream),
      settings: settings === undefined ? {} : checkSettings(settings),
      domains
    }
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).addTenant(input)
    await report(ctx, args, wait, written, `added tenant ${written.result.slug}`)
    return 0
  }
}

export const tenantsList: Command = {
  name: 'tenants list',
  summary: 'List every tenant with its state, database and domains.',
  usage: 'tenant-proxy tenants list [--json]',
  options: { ...JSON_OPTION },
  positionals: [0, 0],
  async run (ctx, args) {
    const tenants = await (await store(ctx)).listTenants()
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(tenants, null, 2) + '\n')
      return 0
    }
    const config = ctx.config()
    ctx.io.out(table(['SLUG', 'STATE', 'DATABASE', 'SERVER', 'EPOCH', 'DOMAINS'], tenants.map((t) => [
      t.slug, t.paused_hold_ms === null ? t.state : `${t.state} (paused)`, t.database_name, `${t.database_server !== null ? `${t.database_server}=` : ''}${server(t, config.tenantDatabase)}`, String(t.epoch), t.domains.map((d) => d.hostname).join(',')
    ])))
    ctx.io.out(`${tenants.length} tenant(s)\n`)
    return 0
  }
}

export const tenantsShow: Command = {
  name: 'tenants show',
  summary: 'Show one tenant, found by slug or by any of its domains.',
  usage: 'tenant-proxy tenants show <slug|host> [--json]',
  options: { ...JSON_OPTION },
  positionals: [1, 1],
  async run (ctx, args) {
    const tenant = await find(await store(ctx), args.positionals[0] ?? '')
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(tenant, null, 2) + '\n')
      return 0
    }
    const d = ctx.config().tenantDatabase
    ctx.io.out([
      `slug:      ${tenant.slug}`,
      `state:     ${tenant.state}${tenant.paused_hold_ms === null ? '' : `, paused (proxies hold its requests up to ${tenant.paused_hold_ms} ms each; tenants resume ${tenant.slug} ends it)`}`,
      `database:  ${tenant.database_name} on ${server(tenant, d)}${tenant.database_server !== null ? ` (server ${tenant.database_server})` : tenant.database_host === null ? ' (default server)' : ''}`,
      `epoch:     ${tenant.epoch}`,
      `upstream:  ${tenant.upstream ?? '(default pool)'}`,
      `settings:  ${JSON.stringify(tenant.settings)}`,
      `domains:   ${tenant.domains.map((x) => `${x.hostname}${x.kind === 'primary' ? ' (primary)' : ''}`).join(', ') || '(none)'}`,
      `created:   ${tenant.created_at}`,
      `updated:   ${tenant.updated_at}`
    ].join('\n') + '\n')
    return 0
  }
}

export const tenantsUpdate: Command = {
  name: 'tenants update',
  summary: "Change a tenant's database, server, state, upstream pool or settings. Moving the database bumps the epoch.",
  usage: `tenant-proxy tenants update <slug> [--database <name>] [--server <name> | --db-host <host> --db-port <port> | --default-db-server] [--state <state>] [--upstream <pool>] [--default-upstream] [--settings <json>] [--bump-epoch] [--json] ${WAIT_USAGE}`,
  help: `${LOCATION_HELP}
--default-db-server points the tenant back at tenantDatabase.defaultHost/Port; --db-host, --db-port
and --default-db-server clear the tenant's --server. --default-upstream clears the pool.

${WAIT_HELP}`,
  options: {
    database: { type: 'string' },
    'db-host': { type: 'string' },
    'db-port': { type: 'string' },
    'default-db-server': { type: 'boolean' },
    server: { type: 'string' },
    state: { type: 'string' },
    upstream: { type: 'string' },
    'default-upstream': { type: 'boolean' },
    settings: { type: 'string' },
    'bump-epoch': { type: 'boolean' },
    ...JSON_OPTION,
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const patch: TenantPatch = {}
    const database = str(args, 'database')
    const dbHost = str(args, 'db-host')
    const dbPort = str(args, 'db-port')
    const state = str(args, 'state')
    const upstream = str(args, 'upstream')
    const settings = str(args, 'settings')
    const server = str(args, 'server')
    if (flag(args, 'default-db-server') && (dbHost !== undefined || dbPort !== undefined)) throw usage('--default-db-server cannot be combined with --db-host or --db-port')
    if (server !== undefined && (dbHost !== undefined || dbPort !== undefined || flag(args, 'default-db-server'))) throw usage('--server cannot be combined with --db-host, --db-port or --default-db-server')
    if (server !== undefined) patch.databaseServer = checkServerName(server)
    // A host or port given directly replaces the server's: the tenant no longer follows it.
    if (dbHost !== undefined || dbPort !== undefined || flag(args, 'default-db-server')) patch.databaseServer = null
    if (flag(args, 'default-upstream') && upstream !== undefined) throw usage('--default-upstream cannot be combined with --upstream')
    if (database !== undefined) patch.databaseName = checkDatabaseName(database)
    if (dbHost !== undefined) patch.databaseHost = checkDatabaseHost(dbHost)
    if (dbPort !== undefined) patch.databasePort = checkPort(dbPort)
    if (flag(args, 'default-db-server')) {
      patch.databaseHost = null
      patch.databasePort = null
    }
    if (state !== undefined) patch.state = checkState(state)
    if (upstream !== undefined) patch.upstream = checkUpstream(upstream)
    if (flag(args, 'default-upstream')) patch.upstream = null
    if (settings !== undefined) patch.settings = checkSettings(settings)
    if (flag(args, 'bump-epoch')) patch.epoch = 'bump'
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).updateTenant(slug, patch)
    await report(ctx, args, wait, written, `updated tenant ${written.result.slug}`)
    return 0
  }
}

export const tenantsState: Command = {
  name: 'tenants state',
  summary: `Set a tenant's state: ${TENANT_STATES.join(', ')}.`,
  usage: `tenant-proxy tenants state <slug> active|suspended|maintenance [--json] ${WAIT_USAGE}`,
  help: `active routes requests; suspended answers 403; maintenance answers 503 with Retry-After.

${WAIT_HELP}`,
  options: { ...JSON_OPTION, ...WAIT_OPTIONS },
  positionals: [2, 2],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const state = checkState(args.positionals[1] ?? '')
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).updateTenant(slug, { state })
    await report(ctx, args, wait, written, `tenant ${written.result.slug} is now ${written.result.state}`)
    return 0
  }
}

export const tenantsRemove: Command = {
  name: 'tenants remove',
  summary: 'Remove a tenant and its domains from the registry (its database itself is left alone).',
  usage: `tenant-proxy tenants remove <slug> --yes [--json] ${WAIT_USAGE}`,
  help: WAIT_HELP,
  options: { yes: { type: 'boolean' }, ...JSON_OPTION, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    if (!flag(args, 'yes')) throw tpError('TENANT_PROXY_ERR_CLI_CONFIRM', [`refusing to remove tenant ${slug} without --yes`])
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).removeTenant(slug)
    const tenant = written.result
    await report(ctx, args, wait, written, `removed tenant ${tenant.slug} and ${tenant.domains.length} domain(s); database ${tenant.database_name} was not dropped`)
    return 0
  }
}

export const domainsAdd: Command = {
  name: 'domains add',
  summary: 'Add a domain to a tenant (an alias unless --primary, or the tenant has none).',
  usage: `tenant-proxy domains add <slug> <host> [--primary] [--json] ${WAIT_USAGE}`,
  help: WAIT_HELP,
  options: { primary: { type: 'boolean' }, ...JSON_OPTION, ...WAIT_OPTIONS },
  positionals: [2, 2],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const host = requireCanonicalHost(args.positionals[1] ?? '')
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).addDomain(slug, host, flag(args, 'primary') ? 'primary' : 'alias')
    await report(ctx, args, wait, written, `added domain ${host} to tenant ${written.result.slug}`)
    return 0
  }
}

export const domainsRemove: Command = {
  name: 'domains remove',
  summary: "Remove a domain from its tenant (not the tenant's last one; remove the tenant instead).",
  usage: `tenant-proxy domains remove <host> [--json] ${WAIT_USAGE}`,
  help: WAIT_HELP,
  options: { ...JSON_OPTION, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const host = requireCanonicalHost(args.positionals[0] ?? '')
    const wait = waitTimeoutMs(args)
    const written = await (await store(ctx)).removeDomain(host)
    await report(ctx, args, wait, written, `removed domain ${host} from tenant ${written.result.slug}`)
    return 0
  }
}

async function store (ctx: CommandContext): Promise<RegistryStore> {
  return (await ctx.registry()).store
}

async function find (s: RegistryStore, key: string): Promise<TenantRecord> {
  const canonical = canonicalHost(key)
  const tenant = await s.findTenant(canonical.ok ? canonical.host : key)
  if (tenant === null) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [JSON.stringify(key)])
  return tenant
}

function canonicalDomains (raw: readonly string[]): string[] {
  const seen = new Set<string>()
  for (const host of raw) {
    const canonical = requireCanonicalHost(host)
    if (seen.has(canonical)) throw usage(`domain ${canonical} is given twice`)
    seen.add(canonical)
  }
  return [...seen]
}

function server (t: TenantRecord, defaults: { defaultHost: string, defaultPort: number }): string {
  return `${t.database_host ?? defaults.defaultHost}:${t.database_port ?? defaults.defaultPort}`
}

/**
 * The server a new tenant names: --server, else tenantDatabase.defaultServer unless a host or
 * port was given directly (`direct`), else none.
 */
export function serverOption (ctx: CommandContext, args: ParsedArgs, direct: boolean): string | null {
  const given = str(args, 'server')
  if (given !== undefined && direct) throw usage('--server cannot be combined with --db-host or --db-port')
  if (given !== undefined) return checkServerName(given)
  return direct ? null : ctx.config().tenantDatabase.defaultServer
}

/**
 * Prints what a write did and, with --wait, waits for the proxies. The text summary comes first
 * (the change is committed whatever the wait finds); --json prints the tenant once the wait is
 * over, with a `wait` key added only when --wait was given (the other keys stay as documented).
 */
async function report (ctx: CommandContext, args: ParsedArgs, waitMs: number | null, written: Written<TenantRecord>, summary: string): Promise<void> {
  const json = flag(args, 'json')
  if (!json) ctx.io.out(summary + '\n')
  const wait = await waitAfterWrite(ctx, waitMs, written.version)
  if (json) ctx.io.out(JSON.stringify(wait === null ? written.result : { ...written.result, wait }, null, 2) + '\n')
  settleWait(ctx, wait)
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
