/**
 * `tenant-proxy tenants create` and `tenant-proxy tenants drop`: a tenant's database and its
 * registry entry together, replacing the tenants:create / tenants:drop rake tasks.
 *
 * create is all or nothing: the database is created and loaded first and the tenant registered
 * last, so a registry row never names a database that does not exist; a failure (or SIGINT) at
 * any step drops the database this run created. drop goes the other way: the tenant leaves
 * routing first (maintenance, and every connected proxy confirms), then the dump, then the
 * database, and the registry row only once the database is gone (or kept, as asked).
 */
import { access, constants, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { isTpError, tpError } from '../errors.js'
import { checkDatabaseName, checkRoleName, checkSettings, checkSlug, checkState, checkUpstream, type TenantState } from '../registry/names.js'
import type { RegistryStore, ServerRecord } from '../registry/store.js'
import { ServerAdmin } from '../servers/admin.js'
import { resolveAdminUrl } from '../servers/credentials.js'
import { dumpDatabase, loadSqlFile } from '../servers/pg-tools.js'
import { serverOfTenant } from '../servers/resolve.js'
import { requireCanonicalHost } from '../routing/host.js'
import { flag, str, strs, type Command, type CommandContext } from './command.js'
import { Steps, StepError } from './progress.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitForProxies, waitTimeoutMs, DEFAULT_WAIT_TIMEOUT_S } from './wait.js'

export const tenantsCreate: Command = {
  name: 'tenants create',
  summary: 'Create a tenant: its database on a server, the schema loaded, and its registry entry, all or nothing.',
  usage: `tenant-proxy tenants create <slug> --domain <host> [--domain <host>…] [--server <name>] [--database <name>] [--template <db> | --schema-file <file>] [--owner <role>] [--state active|suspended|maintenance] [--upstream <pool>] [--settings <json>] [--dry-run] [--json] ${WAIT_USAGE}`,
  help: `Steps: check (slug, domains and database free in the registry; server reachable with its admin
credentials; the database absent; owner role, template and schema file present), create the
database (CREATE DATABASE … OWNER … [TEMPLATE …]), load the schema file with psql
(ON_ERROR_STOP, as the owner role), register the tenant. If any step fails, or the command is
interrupted (SIGINT/SIGTERM), the database it created is dropped again: nothing is left behind.

--server defaults to tenantDatabase.defaultServer. --database defaults to the slug with '-' as '_'.
--owner defaults to the server's owner (servers add --owner), else the admin role.
--template copies an existing database (it must have no other connections while it is copied).
--schema-file loads a psql script such as Rails' db/structure.sql.
--dry-run runs the checks and changes nothing.

${WAIT_HELP}`,
  options: {
    domain: { type: 'string', multiple: true },
    server: { type: 'string' },
    database: { type: 'string' },
    template: { type: 'string' },
    'schema-file': { type: 'string' },
    owner: { type: 'string' },
    state: { type: 'string' },
    upstream: { type: 'string' },
    settings: { type: 'string' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const config = ctx.config()
    const slug = checkSlug(args.positionals[0] ?? '')
    const domains = uniqueDomains(strs(args, 'domain'))
    if (domains.length === 0) throw usage(`at least one --domain is required; usage: ${this.usage}`)
    const databaseName = checkDatabaseName(str(args, 'database') ?? defaultDatabaseName(slug))
    const template = str(args, 'template')
    const schemaFileArg = str(args, 'schema-file')
    if (template !== undefined && schemaFileArg !== undefined) throw usage('give --template or --schema-file, not both')
    if (template !== undefined) checkDatabaseName(template)
    const schemaFile = schemaFileArg === undefined ? undefined : resolve(schemaFileArg)
    const stateText = str(args, 'state')
    const state: TenantState = stateText === undefined ? 'active' : checkState(stateText)
    const upstreamText = str(args, 'upstream')
    const upstream = upstreamText === undefined ? null : checkUpstream(upstreamText)
    const settingsText = str(args, 'settings')
    const settings = settingsText === undefined ? {} : checkSettings(settingsText)
    const ownerText = str(args, 'owner')
    if (ownerText !== undefined) checkRoleName(ownerText)
    const serverName = str(args, 'server') ?? config.tenantDatabase.defaultServer
    if (serverName === null) throw tpError('TENANT_PROXY_ERR_SERVER_NONE', ['tenants create needs a database server: give --server <name> or set tenantDatabase.defaultServer (tenant-proxy servers add registers one)'])
    const dryRun = flag(args, 'dry-run')
    const wait = waitTimeoutMs(args)
    if (schemaFile !== undefined) await readable(schemaFile, '--schema-file')

    const store = (await ctx.registry()).store
    const server = await mustFindServer(store, serverName)
    const owner = ownerText ?? server.owner
    const stop = stopController(ctx)
    const admin = await openAdmin(ctx, server)
    const steps = new Steps(ctx.io)
    const plan = { database: databaseName, server: server.name, host: server.host, port: server.port, owner, template: template ?? null, schema_file: schemaFile ?? null }
    ctx.io.err(`${dryRun ? 'dry run: would create' : 'creating'} tenant ${slug}: database ${databaseName} on ${server.name} (${server.host}:${server.port})${owner === null ? '' : `, owner ${owner}`}${template !== undefined ? `, from template ${template}` : ''}${schemaFile !== undefined ? `, schema ${schemaFile}` : ''}\n`)
    try {
      await steps.run('check the registry, the server and the inputs', async () => {
        const conflicts = await store.newTenantConflicts({ slug, domains, databaseName, host: server.host, port: server.port })
        if (conflicts[0] !== undefined) throw conflicts[0]
        if (await admin.databaseExists(databaseName)) {
          throw tpError('TENANT_PROXY_ERR_DATABASE_EXISTS', [databaseName, server.name, '; tenants create only registers databases it creates (tenant-proxy tenants add registers an existing one)'])
        }
        if (owner !== null && !await admin.roleExists(owner)) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`owner role ${owner} does not exist on server ${server.name}`])
        if (template !== undefined && !await admin.databaseExists(template)) throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`template database ${template} does not exist on server ${server.name}`])
      })
      if (dryRun) {
        const result = { dry_run: true, slug, domains, state, ...plan }
        ctx.io.out(flag(args, 'json') ? JSON.stringify(result, null, 2) + '\n' : `dry run, nothing changed: tenant ${slug} can be created (database ${databaseName} on ${server.name})\n`)
        return 0
      }
      stop.check()
      await steps.run(`create database ${databaseName} on ${server.name}`, async () => {
        await admin.createDatabase(databaseName, { owner, template, comment: `tenant-proxy: created for tenant ${slug} at ${new Date().toISOString()}` })
        steps.onUndo(`drop database ${databaseName} on ${server.name} again`, async () => { await admin.dropDatabase(databaseName) })
      })
      stop.check()
      if (schemaFile !== undefined) {
        await steps.run(`load ${schemaFile} into ${databaseName}`, async () => {
          await loadSqlFile({ command: config.tenantDatabase.psql, url: admin.urlFor(databaseName), env: ctx.env, signal: stop.signal }, schemaFile, { role: owner })
        })
        stop.check()
      }
      const written = await steps.run(`register tenant ${slug}`, async () => await store.addTenant({
        slug, domains, databaseName, databaseHost: null, databasePort: null, databaseServer: server.name, state, upstream, settings
      }))
      steps.commit()
      const tenant = written.result
      const json = flag(args, 'json')
      if (!json) ctx.io.out(`created tenant ${tenant.slug}: database ${tenant.database_name} on ${server.name} (${tenant.database_host ?? ''}:${tenant.database_port ?? ''}), ${tenant.domains.map((d) => d.hostname).join(', ')}, ${tenant.state}\n`)
      const waited = await waitAfterWrite(ctx, wait, written.version)
      if (json) ctx.io.out(JSON.stringify({ ...tenant, provisioned: { ...plan, steps: steps.completed }, ...(waited === null ? {} : { wait: waited }) }, null, 2) + '\n')
      settleWait(ctx, waited)
      return 0
    } catch (err) {
      const failure = err instanceof StepError ? err : new StepError('create', err)
      const cause = failure.cause
      // A refusal found by the checks is reported as itself: nothing was started.
      if (steps.completed.length === 0 && isTpError(cause)) throw cause
      const undone = await steps.undo()
      const created = steps.completed.some((s) => s.step.startsWith('create database'))
      const cleanup = undone.length > 0
        ? `CLEANUP FAILED: ${undone.map((u) => `${u.label}: ${u.error}`).join('; ')}; drop database ${databaseName} on server ${server.name} by hand (DROP DATABASE ${databaseName})`
        : created ? `Nothing was left behind: database ${databaseName} was dropped again and no tenant was registered` : 'Nothing was created'
      throw tpError('TENANT_PROXY_ERR_PROVISION_FAILED', [slug, stop.signal.aborted ? `${failure.step} (interrupted by ${String(stop.signal.reason)})` : failure.step, messageOf(cause), cleanup], cause)
    } finally {
      stop.dispose()
      await admin.close()
    }
  }
}

export const tenantsDrop: Command = {
  name: 'tenants drop',
  summary: "Retire a tenant: its database dropped (or kept, or dumped first) and then its registry entry removed.",
  usage: `tenant-proxy tenants drop <slug> --yes [--keep-database | --dump-to <file> [--dump-format custom|plain]] [--force] [--dry-run] [--json] ${WAIT_USAGE}`,
  help: `Refused for an active tenant unless --force: suspend it or put it in maintenance first
(tenants state <slug> maintenance --wait). Steps: with --force, set the tenant to maintenance;
wait until every proxy connected to the registry has applied its state (so no request reaches
the database while it goes; bounded by --wait-timeout, default ${DEFAULT_WAIT_TIMEOUT_S} s); dump it with pg_dump
(--dump-to, custom format unless --dump-format plain; an existing file is never overwritten);
drop the database (its remaining sessions are ended); then remove the tenant and its domains
from the registry. A failure before the drop changes nothing (a state set by --force is set back).
--keep-database removes only the registry entry and leaves the database alone.
--dry-run shows what would happen and changes nothing (no --yes needed).

${WAIT_HELP}`,
  options: {
    yes: { type: 'boolean' },
    'keep-database': { type: 'boolean' },
    'dump-to': { type: 'string' },
    'dump-format': { type: 'string' },
    force: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const config = ctx.config()
    const slug = checkSlug(args.positionals[0] ?? '')
    const dryRun = flag(args, 'dry-run')
    if (!dryRun && !flag(args, 'yes')) throw tpError('TENANT_PROXY_ERR_CLI_CONFIRM', [`refusing to drop tenant ${slug} and its database without --yes`])
    const keep = flag(args, 'keep-database')
    const dumpArg = str(args, 'dump-to')
    if (keep && dumpArg !== undefined) throw usage('give --keep-database or --dump-to, not both')
    const formatText = str(args, 'dump-format')
    if (formatText !== undefined && dumpArg === undefined) throw usage('--dump-format needs --dump-to')
    if (formatText !== undefined && formatText !== 'custom' && formatText !== 'plain') throw usage(`--dump-format must be custom or plain, got ${JSON.stringify(formatText)}`)
    const dumpFormat = formatText === 'plain' ? 'plain' : 'custom'
    const dumpFile = dumpArg === undefined ? undefined : resolve(dumpArg)
    const waitMs = waitTimeoutMs(args)
    const json = flag(args, 'json')

    const registry = await ctx.registry()
    const store = registry.store
    const tenant = await store.findTenant(slug)
    if (tenant === null || tenant.slug !== slug) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
    if (tenant.state === 'active' && !flag(args, 'force')) {
      throw tpError('TENANT_PROXY_ERR_TENANT_ACTIVE', [slug, `take it out of service first (tenant-proxy tenants state ${slug} maintenance --wait), or add --force to do that as the first step`])
    }
    if (dumpFile !== undefined && await exists(dumpFile)) throw usage(`${dumpFile} exists; tenants drop never overwrites a dump`)

    let server: ServerRecord | null = null
    let admin: ServerAdmin | null = null
    if (!keep) {
      const found = serverOfTenant(tenant, await store.listServers(), config.tenantDatabase)
      if (!found.ok) throw tpError('TENANT_PROXY_ERR_SERVER_NONE', [`cannot reach the database of tenant ${slug}: ${found.reason}; or keep it with --keep-database`])
      server = found.server
      admin = await openAdmin(ctx, server)
    }
    const stop = stopController(ctx)
    const steps = new Steps(ctx.io)
    const db = tenant.database_name
    const where = server === null ? '' : ` on ${server.name}`
    try {
      const present = admin === null ? null : await admin.databaseExists(db)
      const size = admin === null || present !== true ? null : await admin.databaseSize(db)
      const plan = {
        slug,
        state: tenant.state,
        set_maintenance: tenant.state === 'active',
        database: { name: db, server: server?.name ?? null, exists: present, bytes: size, action: keep ? 'keep' : present === false ? 'already absent' : 'drop' },
        dump: dumpFile === undefined ? null : { file: dumpFile, format: dumpFormat }
      }
      ctx.io.err(`${dryRun ? 'dry run: would drop' : 'dropping'} tenant ${slug}: database ${db}${where} ${keep ? 'kept' : present === false ? 'already absent' : `(${size === null ? '?' : formatBytes(size)}) dropped`}${dumpFile === undefined ? '' : `, dumped to ${dumpFile} first`}\n`)
      if (dryRun) {
        ctx.io.out(json ? JSON.stringify({ dry_run: true, ...plan }, null, 2) + '\n' : `dry run, nothing changed: tenant ${slug} ${plan.set_maintenance ? 'would be set to maintenance, ' : ''}${dumpFile === undefined ? '' : `its database dumped to ${dumpFile}, `}${keep ? 'its database kept' : present === false ? 'its database is already absent' : `database ${db}${where} dropped`}, then its registry entry removed\n`)
        return 0
      }
      if (dumpFile !== undefined && present === false) throw usage(`database ${db}${where} does not exist: nothing to dump`)
      if (tenant.state === 'active') {
        await steps.run(`set tenant ${slug} to maintenance`, async () => {
          await store.updateTenant(slug, { state: 'maintenance' })
          steps.onUndo(`set tenant ${slug} back to active`, async () => { await store.updateTenant(slug, { state: 'active' }) })
        })
      }
      stop.check()
      const confirmed = await steps.run('wait for every connected proxy to stop routing it', async () => {
        const version = (await store.version()).version
        const waited = await waitForProxies(registry.pool, config.registry.applicationName, version, waitMs ?? DEFAULT_WAIT_TIMEOUT_S * 1000)
        // A lagging proxy fails the step (TENANT_PROXY_ERR_WAIT_TIMEOUT naming it): nothing is dropped.
        if (!waited.applied) settleWait(ctx, waited)
        return waited
      })
      settleWait(ctx, confirmed)
      let dumped: { file: string, bytes: number } | null = null
      if (dumpFile !== undefined && admin !== null) {
        stop.check()
        const a = admin
        dumped = await steps.run(`dump ${db} to ${dumpFile}`, async () => {
          const { bytes } = await dumpDatabase({ command: config.tenantDatabase.pgDump, url: a.urlFor(db), env: ctx.env, signal: stop.signal }, dumpFile, { format: dumpFormat })
          return { file: dumpFile, bytes }
        })
      }
      stop.check()
      if (admin !== null && present === true) {
        const a = admin
        await steps.run(`drop database ${db}${where}`, async () => { await a.dropDatabase(db) })
      }
      // The database is gone (or kept): nothing before this point can be undone any more.
      steps.commit()
      const removed = await steps.run(`remove tenant ${slug} from the registry`, async () => await store.removeTenant(slug))
      if (!json) ctx.io.out(`dropped tenant ${slug}: ${keep ? `database ${db} kept` : present === false ? `database ${db} was already absent` : `database ${db}${where} dropped`}${dumped === null ? '' : `, dump in ${dumped.file} (${formatBytes(dumped.bytes)})`}; registry entry and ${removed.result.domains.length} domain(s) removed\n`)
      const waited = await waitAfterWrite(ctx, waitMs, removed.version)
      if (json) ctx.io.out(JSON.stringify({ ...plan, dump: dumped, removed: removed.result, steps: steps.completed, ...(waited === null ? {} : { wait: waited }) }, null, 2) + '\n')
      settleWait(ctx, waited)
      return 0
    } catch (err) {
      if (!(err instanceof StepError)) throw err
      const undone = await steps.undo()
      const dropped = steps.completed.some((s) => s.step.startsWith('drop database'))
      const state = dropped
        ? `Database ${db} is gone but the registry entry remains: remove it with tenant-proxy tenants remove ${slug} --yes`
        : undone.length > 0 ? `Nothing was dropped, but setting the state back failed (${undone.map((u) => u.error).join('; ')}): tenant ${slug} is in maintenance` : 'Nothing was dropped and the registry is as it was'
      throw tpError('TENANT_PROXY_ERR_DROP_FAILED', [slug, stop.signal.aborted ? `${err.step} (interrupted by ${String(stop.signal.reason)})` : err.step, messageOf(err.cause), state], err.cause)
    } finally {
      stop.dispose()
      await admin?.close()
    }
  }
}

/** The default database name of a slug: '-' is not allowed unquoted, and a leading digit neither. */
export function defaultDatabaseName (slug: string): string {
  const name = slug.replaceAll('-', '_')
  return /^[0-9]/.test(name) ? `t_${name}` : name
}

async function mustFindServer (store: RegistryStore, name: string): Promise<ServerRecord> {
  const server = await store.findServer(name)
  if (server === null) throw tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [name])
  return server
}

/** An admin session on a server, its credentials resolved from this process. */
export async function openAdmin (ctx: CommandContext, server: ServerRecord): Promise<ServerAdmin> {
  const { url, warning } = await resolveAdminUrl(server, ctx.env)
  if (warning !== null) ctx.io.err(`tenant-proxy: warning: ${warning}\n`)
  return new ServerAdmin(server.name, url, { connectTimeoutMs: ctx.config().registry.connectTimeoutMs, applicationName: ctx.config().registry.applicationName })
}

/**
 * SIGINT/SIGTERM as an AbortSignal: tools started by a step are stopped, and `check()` between
 * steps throws, so the failure path undoes what was done.
 */
export function stopController (ctx: CommandContext): { signal: AbortSignal, check (): void, dispose (): void } {
  const controller = new AbortController()
  let disposed = false
  void ctx.stopSignal.then((sig) => { if (!disposed) controller.abort(sig) })
  return {
    signal: controller.signal,
    check () {
      if (controller.signal.aborted) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`interrupted by ${String(controller.signal.reason)}`])
    },
    dispose () { disposed = true }
  }
}

function uniqueDomains (raw: readonly string[]): string[] {
  const seen = new Set<string>()
  for (const host of raw) {
    const canonical = requireCanonicalHost(host)
    if (seen.has(canonical)) throw usage(`domain ${canonical} is given twice`)
    seen.add(canonical)
  }
  return [...seen]
}

async function readable (file: string, option: string): Promise<void> {
  try {
    await access(file, constants.R_OK)
    if (!(await stat(file)).isFile()) throw new Error('not a file')
  } catch (err) {
    throw usage(`${option} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
}

async function exists (file: string): Promise<boolean> {
  return await stat(file).then(() => true, () => false)
}

function messageOf (err: unknown): string {
  const m = (err as Error | undefined)?.message ?? String(err)
  return m.replace(/ \(TENANT_PROXY_ERR_[A-Z_]+\)$/, '')
}

function formatBytes (n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  return `${(n / 1024 ** 3).toFixed(2)} GiB`
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
