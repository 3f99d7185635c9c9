/**
 * The registry role docs/operations.md ("Least privilege") recommends is enough, and no more is
 * needed: the SQL block there is run as written (only the role's name made unique per run: roles
 * are cluster-wide), a real `tenant-proxy serve` runs with that role, and it starts (no DDL on a
 * current schema), routes, follows live changes, hears its feed heartbeat (NOTIFY needs no
 * privilege), and is denied pruning without losing its feed. Pruning then works from the CLI with
 * the owner's role, and not with the proxy's.
 */
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t from 'tap'
import { request } from 'undici'
import { runCli } from './helpers/cli.js'
import { testServerUrl } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const CHECK_MS = 200

/** The statements of the SQL block in operations.md's "Least privilege" section. */
async function documentedGrants (): Promise<string[]> {
  const doc = await readFile(path.join(ROOT, 'docs/operations.md'), 'utf8')
  const section = /\n### Least privilege\n([\s\S]*?)\n##/.exec(doc)?.[1] ?? ''
  const block = /```sql\n([\s\S]*?)```/.exec(section)?.[1] ?? ''
  return block.split(';').map((s) => s.trim()).filter((s) => s !== '' && !s.startsWith('--'))
}

async function metric (opsUrl: string, name: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return Number(line?.split(' ')[1])
}

async function routedTenant (trafficUrl: string, host: string): Promise<string | null> {
  const res = await request(trafficUrl, { headers: { host } })
  const body = await res.body.json() as { headers?: Record<string, string> }
  const token = body.headers?.['x-tenant-descriptor']
  if (res.statusCode !== 200 || token === undefined) return null
  return (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { sub: string }).sub
}

t.test('a proxy with exactly the documented grants starts, routes, follows changes and carries on when denied pruning', async (t) => {
  const statements = await documentedGrants()
  t.ok(statements.some((s) => /^GRANT SELECT ON ALL TABLES/i.test(s)), 'the documented block was found')
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const role = `tp_ro_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: registry.url })
  await admin.connect()
  t.teardown(async () => {
    // Roles are cluster-wide: drop it whatever happened (its grants live in the throwaway database).
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role]).catch(() => undefined)
    await admin.query(`DROP OWNED BY ${role}`).catch(() => undefined)
    await admin.end().catch(() => undefined)
    const server = new pg.Client({ connectionString: await testServerUrl() })
    await server.connect()
    await server.query(`DROP ROLE IF EXISTS ${role}`)
    await server.end()
  })
  // As the schema's owner (the test's superuser ran migrate), as the doc says; only the name changes.
  for (const sql of statements) await admin.query(sql.replace(/\bproxy\b/g, role))

  const writable = await admin.query<{ relname: string }>(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'tenant_proxy' AND c.relkind IN ('r', 'p')
       AND (has_table_privilege($1, c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE') OR NOT has_table_privilege($1, c.oid, 'SELECT'))`, [role])
  t.same(writable.rows, [], 'the role reads every registry table and writes none')
  const creates = await admin.query<{ db: boolean, schema: boolean }>(
    "SELECT has_database_privilege($1, current_database(), 'CREATE') AS db, has_schema_privilege($1, 'tenant_proxy', 'CREATE') AS schema", [role])
  t.same(creates.rows[0], { db: false, schema: false }, 'the role can create nothing')

  // The docs also keep CONNECT on the registry database to the proxy's role (changes are announced
  // with their rows to whoever LISTENs): as documented, with the database's name.
  const database = new URL(registry.url).pathname.slice(1)
  await admin.query(`REVOKE CONNECT ON DATABASE "${database}" FROM PUBLIC`)
  await admin.query(`GRANT CONNECT ON DATABASE "${database}" TO ${role}`)

  const roleUrl = new URL(registry.url)
  roleUrl.username = role
  roleUrl.password = ''
  const upstream = await startUpstream(t)
  const proxy = await spawnServe(t, {
    REGISTRY_DATABASE_URL: roleUrl.toString(),
    TENANT_PROXY_UPSTREAM_URLS: upstream.origin,
    TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
    TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: String(CHECK_MS)
  })
  const trafficUrl = `http://127.0.0.1:${proxy.trafficPort}`
  const opsUrl = `http://127.0.0.1:${proxy.opsPort}`
  t.equal(await routedTenant(trafficUrl, 'acme.example'), 'acme', 'routes a tenant')

  // The first check prunes: denied. One warning, and the feed is not touched.
  const deniedLine = /may not prune the registry change log/
  await until(() => proxy.logs.some((l) => deniedLine.test(l)) ? true : undefined, 'the denied prune warning', 30_000)
  const prunesDenied = async (): Promise<number> => {
    const text = await (await request(`${opsUrl}/metrics`)).body.text()
    return Number(/^tenant_proxy_registry_prunes_total\{result="denied"\} (\d+)/m.exec(text)?.[1])
  }
  t.equal(await prunesDenied(), 1, 'counted as denied')
  const syncedAt = await metric(opsUrl, 'tenant_proxy_registry_last_sync_timestamp_seconds')
  // Five more checks: enough for a second warning, a missed heartbeat to make the feed deaf, or a reconnect.
  await until(async () => await metric(opsUrl, 'tenant_proxy_registry_last_sync_timestamp_seconds') >= syncedAt + 5 * CHECK_MS / 1000 ? true : undefined, 'five more version checks', 30_000)

  // A live change arrives over the same feed.
  await registry.store.addTenant({ slug: 'newco', domains: ['new.example'], databaseName: 'newco', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {} })
  t.equal(await until(async () => await routedTenant(trafficUrl, 'new.example') ?? undefined, 'the new tenant through the proxy', 30_000), 'newco', 'follows a live change')

  t.equal(proxy.logs.filter((l) => deniedLine.test(l)).length, 1, 'one warning about pruning, however many checks')
  t.equal(await prunesDenied(), 1, 'not retried at every check')
  t.equal(await metric(opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), 0, `the denied prune did not reset the feed ${proxy.logs.filter((l) => /"level":[4-6]0/.test(l)).join('\n')}`)
  t.equal(await metric(opsUrl, 'tenant_proxy_registry_feed_connected'), 1)
  t.equal(await metric(opsUrl, 'tenant_proxy_registry_feed_deaf'), 0, 'the heartbeat (NOTIFY) works with the read-only role')
  const ready = await (await request(`${opsUrl}/ready`)).body.json() as { registry: { synced: boolean, feedDeaf: boolean, notSyncedReason: string | null } }
  t.match(ready.registry, { synced: true, feedDeaf: false, notSyncedReason: null })
  t.same(proxy.logs.filter((l) => /"level":(50|60)/.test(l)), [], 'no error logged')

  // A table a later migration adds (created by the owner) is readable without another grant.
  await admin.query('CREATE TABLE tenant_proxy.later_migration (x integer)')
  const later = await admin.query<{ ok: boolean }>("SELECT has_table_privilege($1, 'tenant_proxy.later_migration', 'SELECT') AS ok", [role])
  t.equal(later.rows[0]?.ok, true, 'default privileges cover tables of later migrations')
  await admin.query('DROP TABLE tenant_proxy.later_migration')

  // The CLI prunes with the owner's role, and says why not with the proxy's.
  const asProxy = await runCli(['registry', 'prune', '--retention', '1s'], { REGISTRY_DATABASE_URL: roleUrl.toString() })
  t.equal(asProxy.code, 1)
  t.match(asProxy.stderr, /TENANT_PROXY_ERR_REGISTRY_PRUNE_DENIED/)
  await admin.query("UPDATE tenant_proxy.changes SET changed_at = now() - interval '1 hour'")
  const asOwner = await runCli(['registry', 'prune', '--retention', '1s', '--json'], { REGISTRY_DATABASE_URL: registry.url })
  t.equal(asOwner.code, 0, asOwner.stderr)
  t.match(JSON.parse(asOwner.stdout), { outcome: 'pruned', deleted: Number, dryRun: false })

  t.equal(await proxy.stop(), 0, 'stops cleanly')
})

t.test('the documented block names only the proxy role and the registry schema', async (t) => {
  const statements = await documentedGrants()
  t.equal(statements.length, 4)
  for (const s of statements) t.match(s, /\bproxy\b/, s)
  t.same(statements.filter((s) => /ALTER DEFAULT PRIVILEGES/i.test(s)).length, 1, 'default privileges for later migrations')
})
