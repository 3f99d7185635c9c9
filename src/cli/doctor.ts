/**
 * `tenant-proxy doctor`: checks the whole installation and prints what is wrong, the successor of
 * the diagnose_tenants rake task: configuration, signing keys against the published key set, the
 * registry (reachable, schema version, change feed), every tenant database (exists and accepts a
 * connection on its server, a bounded number at a time), databases on each server that no tenant
 * names, and domains registered in more than one form. Exit code 0 when nothing failed, 1 otherwise
 * (warnings too with --strict).
 */
import { request } from 'undici'
import type { Config } from '../config/load.js'
import { loadKeyring } from '../descriptor/keyring.js'
import { domainFindings } from '../doctor/domains.js'
import { tpError } from '../errors.js'
import { redactUrls } from '../redact.js'
import { describeError, type RegistryConnection } from '../registry/connect.js'
import { LATEST_VERSION } from '../registry/migrations/index.js'
import { quoteIdent } from '../registry/sql.js'
import type { ServerRecord, TenantRecord } from '../registry/store.js'
import { ServerAdmin, type ServerDatabase } from '../servers/admin.js'
import { resolveAdminUrl } from '../servers/credentials.js'
import { serverOfTenant } from '../servers/resolve.js'
import { flag, str, strs, type Command, type CommandContext } from './command.js'
import { ProgressBar } from './progress.js'
import { waitForProxies } from './wait.js'

type Status = 'ok' | 'warn' | 'fail' | 'skip'

/** One line of the report. */
export interface DoctorCheck { readonly area: string, readonly name: string, readonly status: Status, readonly detail: string }

/** How long doctor gives a proxy that is behind to catch up before calling it lagging. */
const FEED_CATCH_UP_MS = 2_000
const JWKS_TIMEOUT_MS = 5_000
const ALWAYS_IGNORED = ['template0', 'template1', 'postgres']

export const doctorCommand: Command = {
  name: 'doctor',
  summary: 'Check configuration, keys, registry, change feed, every tenant database, orphan databases and domains; exit 1 on a failure.',
  usage: 'tenant-proxy doctor [--jwks-url <url>…] [--ignore <pattern>…] [--concurrency <n>] [--skip-databases] [--strict] [--json]',
  help: `Checks, in order:
  configuration  the configuration loads; tenantDatabase.defaultServer is registered; every
                 upstream pool a tenant names is configured
  keys           the signing keys load; with --jwks-url (a running proxy's
                 http://<ops>/.well-known/tenant-proxy/jwks.json, repeatable), the key that signs is
                 published there and every published key is configured
  registry       reachable, schema at this build's version, the proxies listening for changes and
                 the version each applied (one still behind after 2 s fails)
  servers        each database server's admin credentials resolve and it answers
  databases      every tenant's database exists on its server and accepts a connection
                 (--concurrency at a time, default doctor.concurrency)
  orphans        databases on each server that no tenant names, except template0, template1,
                 postgres, the registry's own and those matching doctor.ignoreDatabases or
                 --ignore (* matches any characters)
  domains        domains not in canonical form, www.x and x on different tenants, domains
                 shadowed by pass-through hosts or by the wildcard rule
Orphans and the other "!" lines are warnings: the exit code is 1 for failures only, unless --strict.
--skip-databases leaves out the databases and orphans (no connection to any tenant server).`,
  options: {
    'jwks-url': { type: 'string', multiple: true },
    ignore: { type: 'string', multiple: true },
    concurrency: { type: 'string' },
    'skip-databases': { type: 'boolean' },
    strict: { type: 'boolean' },
    json: { type: 'boolean' }
  },
  positionals: [0, 0],
  async run (ctx, args) {
    const checks: DoctorCheck[] = []
    const add = (area: string, name: string, status: Status, detail: string): void => {
      checks.push({ area, name, status, detail: redactUrls(detail) })
    }
    const concurrencyText = str(args, 'concurrency')
    if (concurrencyText !== undefined && !/^\d{1,3}$/.test(concurrencyText)) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--concurrency must be a number from 1 to 256, got ${JSON.stringify(concurrencyText)}`])
    for (const p of strs(args, 'ignore')) if (!/^[A-Za-z0-9_$*-]{1,63}$/.test(p)) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--ignore ${JSON.stringify(p)}: a database name, * matching any characters`])
    for (const u of strs(args, 'jwks-url')) if (!/^https?:\/\//.test(u)) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--jwks-url ${JSON.stringify(u)}: an http(s):// URL`])

    await runChecks(ctx, args, add, concurrencyText === undefined ? null : Math.min(256, Math.max(1, Number(concurrencyText))))

    const count = (s: Status): number => checks.filter((c) => c.status === s).length
    const summary = { ok: count('ok'), warn: count('warn'), fail: count('fail'), skip: count('skip') }
    const failed = summary.fail > 0 || (flag(args, 'strict') && summary.warn > 0)
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ ok: !failed, summary, checks }, null, 2) + '\n')
    } else {
      ctx.io.out(report(checks))
      ctx.io.out(`\n${summary.ok} ok, ${summary.warn} warning(s), ${summary.fail} failure(s)${summary.skip > 0 ? `, ${summary.skip} skipped` : ''}\n`)
    }
    if (failed) throw tpError('TENANT_PROXY_ERR_DOCTOR_PROBLEMS', [`${summary.fail} failure(s) and ${summary.warn} warning(s)${flag(args, 'strict') ? ' (--strict)' : ''}`])
    return 0
  }
}

async function runChecks (ctx: CommandContext, args: Parameters<Command['run']>[1], add: (area: string, name: string, status: Status, detail: string) => void, concurrencyArg: number | null): Promise<void> {
  // Configuration first: nothing else can be checked without it.
  let config: Config
  try {
    config = ctx.config()
    add('configuration', 'load', 'ok', 'configuration is valid')
  } catch (err) {
    add('configuration', 'load', 'fail', (err as Error).message)
    return
  }
  await checkKeys(config, strs(args, 'jwks-url'), add)

  let registry: RegistryConnection
  try {
    registry = await ctx.registry({ migrated: false })
    add('registry', 'reachable', 'ok', registry.embedded ? 'embedded PostgreSQL answers' : 'registry database answers')
  } catch (err) {
    add('registry', 'reachable', 'fail', (err as Error).message)
    return
  }
  const schemaVersion = await registry.pool.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${quoteIdent(registry.schema)}.schema_migrations`)
    .then((r) => r.rows[0]?.v ?? 0, () => 0)
  if (schemaVersion !== LATEST_VERSION) {
    add('registry', 'schema', 'fail', schemaVersion < LATEST_VERSION ? `schema ${registry.schema} is at version ${schemaVersion}, this build needs ${LATEST_VERSION}: run tenant-proxy migrate` : `schema is at version ${schemaVersion}, newer than this build (${LATEST_VERSION}): upgrade tenant-proxy`)
    return
  }
  add('registry', 'schema', 'ok', `schema ${registry.schema} at version ${schemaVersion}`)
  const { version } = await registry.store.version()
  const feed = await waitForProxies(registry.pool, config.registry.applicationName, version, FEED_CATCH_UP_MS)
  if (feed.proxies.length === 0) {
    add('registry', 'change feed', 'warn', `no proxy is listening for changes (registry version ${version})`)
  } else {
    for (const p of feed.proxies) {
      add('registry', `proxy ${p.proxy}`, p.applied ? 'ok' : 'fail', p.applied ? `applied version ${p.version ?? '?'} (registry at ${version})` : `at version ${p.version ?? 'none reported (still loading?)'}, registry at ${version}, not caught up within ${FEED_CATCH_UP_MS / 1000} s`)
    }
  }

  const tenants = await registry.store.listTenants()
  // A pause left behind (a move killed outright) answers every request of the tenant 503 after its timeout.
  for (const t of tenants) {
    if (t.paused_hold_ms !== null) add('registry', `paused ${t.slug}`, 'warn', `tenant ${t.slug} is paused (since ${t.updated_at} or earlier): proxies hold its requests and answer 503 after ${t.paused_hold_ms} ms; if no move or maintenance is under way, end it with tenant-proxy tenants resume ${t.slug}`)
  }
  const servers = await registry.store.listServers()
  const defaultServer = config.tenantDatabase.defaultServer
  if (defaultServer !== null) {
    add('configuration', 'tenantDatabase.defaultServer', servers.some((s) => s.name === defaultServer) ? 'ok' : 'fail', servers.some((s) => s.name === defaultServer) ? `server ${defaultServer} is registered` : `server ${defaultServer} is not registered (tenant-proxy servers add ${defaultServer} …)`)
  }
  const pools = new Set(Object.keys(config.upstream.pools))
  const unknownPools = tenants.filter((t) => t.upstream !== null && !pools.has(t.upstream))
  add('configuration', 'upstream pools', unknownPools.length === 0 ? 'ok' : 'fail', unknownPools.length === 0
    ? `every pool tenants name is configured (${pools.size} pool(s))`
    : `tenant(s) name pools this configuration lacks (their requests get 502): ${unknownPools.slice(0, 10).map((t) => `${t.slug} → ${t.upstream ?? ''}`).join(', ')}${unknownPools.length > 10 ? ', …' : ''}`)

  if (!flag(args, 'skip-databases')) await checkDatabases(ctx, config, registry, tenants, servers, strs(args, 'ignore'), concurrencyArg ?? config.doctor.concurrency, add)
  else add('databases', 'tenant databases', 'skip', '--skip-databases')

  const findings = domainFindings(tenants.flatMap((t) => t.domains.map((d) => ({ hostname: d.hostname, slug: t.slug }))), config.routing)
  if (findings.length === 0) add('domains', 'forms', 'ok', `${tenants.reduce((n, t) => n + t.domains.length, 0)} domain(s), each in one form`)
  for (const f of findings) add('domains', f.domain, f.status, f.detail)
}

async function checkKeys (config: Config, jwksUrls: readonly string[], add: (area: string, name: string, status: Status, detail: string) => void): Promise<void> {
  if (config.descriptor.keys.length === 0) {
    add('keys', 'signing key', 'fail', 'no descriptor key configured (descriptor.keys): serve refuses to start; create one with tenant-proxy keys generate')
    return
  }
  const ring = loadKeyring(config.descriptor.keys)
  const published = ring.jwks().keys
  add('keys', 'signing key', 'ok', `signs with ${ring.signer.kid} (${ring.signer.alg}); ${ring.verificationKeys.size} key(s) verify, ${published.length} published`)
  for (const url of jwksUrls) {
    let remote: Array<{ kid?: string, x?: string, y?: string }>
    try {
      const res = await request(url, { headersTimeout: JWKS_TIMEOUT_MS, bodyTimeout: JWKS_TIMEOUT_MS })
      const body = await res.body.text()
      if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`)
      remote = (JSON.parse(body) as { keys?: Array<{ kid?: string, x?: string, y?: string }> }).keys ?? []
    } catch (err) {
      add('keys', `published ${url}`, 'fail', `cannot read the key set: ${describeError(err)}`)
      continue
    }
    const mine = new Map(published.map((k) => [k.kid, k]))
    const problems: string[] = []
    let status: Status = 'ok'
    if (ring.signer.alg === 'ES256') {
      const signing = remote.find((k) => k.kid === ring.signer.kid)
      const own = mine.get(ring.signer.kid)
      if (signing === undefined) {
        status = 'fail'
        problems.push(`the signing key ${ring.signer.kid} is not published there: apps reading that key set reject descriptors signed with this configuration`)
      } else if (own !== undefined && (signing.x !== own.x || signing.y !== own.y)) {
        status = 'fail'
        problems.push(`${ring.signer.kid} is published there with different key material`)
      }
    }
    const foreign = remote.filter((k) => k.kid === undefined || !mine.has(k.kid))
    if (foreign.length > 0) {
      if (status === 'ok') status = 'warn'
      problems.push(`published there but not configured here: ${foreign.map((k) => k.kid ?? '(no kid)').join(', ')} (a proxy with another configuration, or a rotation in progress)`)
    }
    add('keys', `published ${url}`, status, problems.length === 0 ? `${remote.length} published key(s) match the configured ones` : problems.join('; '))
  }
}

async function checkDatabases (ctx: CommandContext, config: Config, registry: RegistryConnection, tenants: readonly TenantRecord[], servers: readonly ServerRecord[], ignoreArgs: readonly string[], concurrency: number, add: (area: string, name: string, status: Status, detail: string) => void): Promise<void> {
  // One admin session per server whose credentials resolve and which answers.
  const admins = new Map<string, { admin: ServerAdmin, databases: ServerDatabase[], physical: string }>()
  for (const server of servers) {
    let url: string
    try {
      const resolved = await resolveAdminUrl(server, ctx.env)
      url = resolved.url
      if (resolved.warning !== null) add('servers', server.name, 'warn', resolved.warning)
    } catch (err) {
      add('servers', server.name, server.tenants > 0 ? 'fail' : 'warn', (err as Error).message)
      continue
    }
    const admin = new ServerAdmin(server.name, url, { connectTimeoutMs: config.registry.connectTimeoutMs, applicationName: config.registry.applicationName })
    try {
      const databases = await admin.listDatabases()
      const u = new URL(url)
      admins.set(server.name, { admin, databases, physical: `${u.hostname}:${u.port === '' ? '5432' : u.port}` })
      add('servers', server.name, 'ok', `${server.host}:${server.port} answers (${databases.length} databases, ${server.tenants} tenant(s) name it)`)
    } catch (err) {
      await admin.close()
      add('servers', server.name, 'fail', (err as Error).message)
    }
  }
  try {
    // Which server each tenant's database is on, and the databases named on each physical server.
    const named = new Map<string, Set<string>>()
    const jobs: Array<{ tenant: TenantRecord, server: string }> = []
    for (const t of tenants) {
      const found = serverOfTenant(t, servers, config.tenantDatabase)
      if (!found.ok) {
        add('databases', t.slug, 'warn', `database ${t.database_name} not checked: ${found.reason}`)
        continue
      }
      const a = admins.get(found.server.name)
      if (a === undefined) {
        add('databases', t.slug, 'skip', `database ${t.database_name} not checked: server ${found.server.name} is not reachable with its credentials`)
        continue
      }
      const set = named.get(a.physical) ?? new Set<string>()
      set.add(t.database_name)
      named.set(a.physical, set)
      jobs.push({ tenant: t, server: found.server.name })
    }
    const bar = ctx.io.errIsTerminal === true && jobs.length > 0 ? new ProgressBar(ctx.io, jobs.length) : null
    let ok = 0
    let failed = 0
    const queue = [...jobs]
    const worker = async (): Promise<void> => {
      for (let job = queue.shift(); job !== undefined; job = queue.shift()) {
        const a = admins.get(job.server) as { admin: ServerAdmin, databases: ServerDatabase[] }
        const db = a.databases.find((d) => d.name === job.tenant.database_name)
        let problem: string | null
        if (db === undefined) problem = `database ${job.tenant.database_name} does not exist on server ${job.server}`
        else if (!db.allowConnections) problem = `database ${job.tenant.database_name} on ${job.server} does not allow connections (datallowconn is false)`
        else {
          const error = await a.admin.probeDatabase(job.tenant.database_name)
          problem = error === null ? null : `database ${job.tenant.database_name} on ${job.server} refuses a connection: ${error}`
        }
        if (problem === null) ok++
        else {
          failed++
          add('databases', job.tenant.slug, 'fail', problem)
        }
        bar?.update({ done: ok, failed, running: [] })
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(jobs.length, 1)) }, worker))
    bar?.finish()
    if (jobs.length > 0 && failed === 0) add('databases', 'tenant databases', 'ok', `${ok} tenant database(s) exist and accept connections`)
    else if (jobs.length > 0) add('databases', 'tenant databases', 'fail', `${failed} of ${jobs.length} tenant database(s) missing or refusing connections (listed above)`)

    // Orphans, once per physical server (two registry servers may be names for one PostgreSQL).
    const ignore = [...ALWAYS_IGNORED, ...config.doctor.ignoreDatabases, ...ignoreArgs].map(pattern)
    const registryUrl = new URL(registry.url)
    const registryAt = `${registryUrl.hostname}:${registryUrl.port === '' ? '5432' : registryUrl.port}`
    const registryDb = decodeURIComponent(registryUrl.pathname.slice(1))
    const seen = new Set<string>()
    for (const [name, a] of admins) {
      if (seen.has(a.physical)) continue
      seen.add(a.physical)
      const mine = named.get(a.physical) ?? new Set<string>()
      const orphans = a.databases.filter((d) => !d.isTemplate && !mine.has(d.name) && !ignore.some((re) => re.test(d.name)) && !(a.physical === registryAt && d.name === registryDb))
      if (orphans.length === 0) add('orphans', name, 'ok', 'every database on it is a tenant\'s or ignored')
      for (const d of orphans) add('orphans', `${name}/${d.name}`, 'warn', `no tenant names database ${d.name} (owner ${d.owner})${d.comment === null ? '' : `; comment: ${d.comment}`}`)
    }
  } finally {
    await Promise.all([...admins.values()].map(async (a) => { await a.admin.close() }))
  }
}

function pattern (glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((p) => p.replace(/[.$^+?()[\]{}|\\-]/g, '\\$&')).join('.*')}$`)
}

const MARK: Record<Status, string> = { ok: '✓', warn: '!', fail: '✗', skip: '-' }

/** The readable report: one block per area, failures and warnings first within it. */
function report (checks: readonly DoctorCheck[]): string {
  const areas = [...new Set(checks.map((c) => c.area))]
  const order: Record<Status, number> = { fail: 0, warn: 1, skip: 2, ok: 3 }
  const lines: string[] = []
  for (const area of areas) {
    lines.push(area)
    for (const c of checks.filter((x) => x.area === area).sort((a, b) => order[a.status] - order[b.status])) lines.push(`  ${MARK[c.status]} ${c.name}: ${c.detail}`)
  }
  return lines.join('\n') + '\n'
}
