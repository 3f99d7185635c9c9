/**
 * Issue 12 items 1 and 2 over real sockets, against a private PostgreSQL the test stops and
 * starts: a registry restart with nothing changed resumes from the change log (no full load,
 * visible in metrics); a gap beyond the log's retention makes a full load; a delta the registry
 * refuses on a live connection is retried on its own and never resets the feed; the proxy holds
 * one registry connection in steady state.
 */
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { migrate } from '../src/registry/migrate.js'
import { pruneWithPool } from '../src/registry/prune.js'
import { ANNOUNCE_MAX_CHANGES } from '../src/registry/migrations/005-announce.js'
import { RegistryStore } from '../src/registry/store.js'
import { startPgCluster, type PgCluster } from './helpers/pg-cluster.js'
import { databaseUrl, inTransaction } from './helpers/postgres.js'
import { startTestProxy, testConfig } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

/** One series of the proxy's /metrics, e.g. `tenant_proxy_registry_full_loads_total{reason="start"}`. */
async function metric (opsUrl: string, series: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  if (line === undefined) throw new Error(`no series ${series}`)
  return Number(line.split(' ')[1])
}

async function status (url: string, host: string): Promise<number> {
  const res = await request(url, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

/** A private server with a migrated registry, a non-superuser role for the proxy (read-only grants) and a store to write with. */
async function setup (t: Test): Promise<{ cluster: PgCluster, store: RegistryStore, admin: pg.Pool, proxyUrl: string, role: string }> {
  const cluster = await startPgCluster(t)
  const adminUrl = databaseUrl(cluster.url, 'postgres')
  const admin = new pg.Pool({ connectionString: adminUrl, max: 2 })
  admin.on('error', () => {})
  t.teardown(async () => await admin.end())
  await migrate(admin, 'tenant_proxy')
  const store = new RegistryStore(admin, 'tenant_proxy')
  for (const slug of ['acme', 'globex']) {
    await store.addTenant({ slug, databaseName: slug, databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: [`${slug}.example`] })
  }
  const role = 'tp_proxy'
  await admin.query(`CREATE ROLE ${role} LOGIN`)
  await admin.query(`GRANT USAGE ON SCHEMA tenant_proxy TO ${role}`)
  await admin.query(`GRANT SELECT ON ALL TABLES IN SCHEMA tenant_proxy TO ${role}`)
  const u = new URL(adminUrl)
  u.username = role
  return { cluster, store, admin, proxyUrl: u.toString(), role }
}

const FAST = {
  TENANT_PROXY_REGISTRY_RECONNECT_MIN_MS: '50',
  TENANT_PROXY_REGISTRY_RECONNECT_MAX_MS: '400',
  TENANT_PROXY_REGISTRY_CHANGE_RETENTION_S: '0'
}

t.test('a registry restart with nothing changed resumes from the change log: no full load', async (t) => {
  const { cluster, store, proxyUrl } = await setup(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(proxyUrl, upstream.origin, FAST))
  t.equal(await status(proxy.url, 'acme.example'), 200)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="start"}'), 1)
  const version = proxy.state.index?.version

  await cluster.stop()
  await until(() => proxy.state.synced ? undefined : true, 'the proxy to notice the registry is gone')
  t.equal(await status(proxy.url, 'acme.example'), 200, 'known hosts route from memory meanwhile')
  const restarted = performance.now()
  await cluster.start()
  await until(() => proxy.state.synced ? true : undefined, 'the proxy to resync', 20_000)
  const resyncMs = performance.now() - restarted
  t.comment(`resynced ${Math.round(resyncMs)} ms after the registry accepted connections again`)

  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_resumes_total{from="reconnect"}'), 1, 'resumed from the log')
  for (const reason of ['start', 'reload', 'gap', 'registry_changed', 'backlog', 'inconsistent']) {
    t.equal(await metric(proxy.opsUrl, `tenant_proxy_registry_full_loads_total{reason="${reason}"}`), reason === 'start' ? 1 : 0, `full loads (${reason})`)
  }
  t.equal(proxy.state.index?.version, version)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), 1)

  // The feed still works after the resume, and it is the proxy's only registry connection.
  await store.addTenant({ slug: 'initech', databaseName: 'initech', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: ['initech.example'] })
  await until(async () => await status(proxy.url, 'initech.example') === 200 ? true : undefined, 'the new tenant through the proxy')
  const admin = new pg.Client({ connectionString: cluster.url })
  await admin.connect()
  t.teardown(async () => await admin.end())
  // The pool's migration check at connect closes once idle (10 s); the feed is the one that stays.
  await until(async () => (await admin.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'tp_proxy'")).rows[0]?.n === 1 ? true : undefined, 'one registry connection per proxy', 20_000)
  t.pass('one registry connection')
})

t.test('a gap beyond the change log\'s retention makes a full load', async (t) => {
  const { store, admin, proxyUrl, role } = await setup(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(proxyUrl, upstream.origin, FAST))
  t.equal(await status(proxy.url, 'acme.example'), 200)
  // Keep the proxy out while the registry changes and prunes what it would need.
  await admin.query(`ALTER ROLE ${role} NOLOGIN`)
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role])
  await until(() => proxy.state.synced ? undefined : true, 'the proxy to lose its feed')
  await store.addTenant({ slug: 'initech', databaseName: 'initech', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: ['initech.example'] })
  await store.updateTenant('globex', { state: 'suspended' })
  await admin.query("UPDATE tenant_proxy.changes SET changed_at = now() - interval '1 hour'")
  t.match(await pruneWithPool(admin, 'tenant_proxy', 1), { outcome: 'pruned', deleted: Number }, 'pruned past the proxy\'s version')
  await admin.query(`ALTER ROLE ${role} LOGIN`)
  await until(() => proxy.state.synced ? true : undefined, 'the proxy to resync', 20_000)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="gap"}'), 1, 'a full load, because of the gap')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_resumes_total{from="reconnect"}'), 0)
  t.equal(await status(proxy.url, 'initech.example'), 200)
  t.equal(await status(proxy.url, 'globex.example'), 403, 'suspended')
})

t.test('a delta the registry refuses is retried on its own and does not reset the feed', async (t) => {
  const { admin, proxyUrl, role } = await setup(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(proxyUrl, upstream.origin, FAST))
  t.equal(await status(proxy.url, 'acme.example'), 200)
  await admin.query(`REVOKE SELECT ON tenant_proxy.changes FROM ${role}`)
  // More changes than an announcement carries (migration 005): the proxy must read the change log.
  const n = ANNOUNCE_MAX_CHANGES
  await admin.query(`BEGIN;
    INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 'bulk-' || i, 'bulk_' || i FROM generate_series(1, ${n}) AS i;
    INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('initech', 'initech');
    INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT 'initech.example', id, 'primary' FROM tenant_proxy.tenants WHERE slug = 'initech';
    COMMIT`)
  await until(async () => await metric(proxy.opsUrl, 'tenant_proxy_registry_query_failures_total{query="delta"}') >= 2 ? true : undefined, 'the refused delta to be retried')
  t.equal(proxy.state.synced, true, 'the feed stays up')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), 0, 'never reconnected')
  await admin.query(`GRANT SELECT ON tenant_proxy.changes TO ${role}`)
  await until(async () => await status(proxy.url, 'initech.example') === 200 ? true : undefined, 'the change to arrive once the delta is allowed again', 20_000)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), 0, 'still never reconnected')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="start"}'), 1, 'no full load but the first')
  const fullLoads = await Promise.all(['reload', 'gap', 'registry_changed', 'backlog', 'inconsistent'].map(async (r) => await metric(proxy.opsUrl, `tenant_proxy_registry_full_loads_total{reason="${r}"}`)))
  t.same(fullLoads, [0, 0, 0, 0, 0])
})

t.test('a small change arrives with its notification and is applied without a query; a version announced early by SET CONSTRAINTS is followed by a new one', async (t) => {
  const { store, admin, proxyUrl, role } = await setup(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(proxyUrl, upstream.origin, FAST))
  t.equal(await status(proxy.url, 'acme.example'), 200)
  // Without SELECT on the change log a delta query fails: whatever arrives now came announced.
  await admin.query(`REVOKE SELECT ON tenant_proxy.changes FROM ${role}`)
  await store.addTenant({ slug: 'initech', databaseName: 'initech', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: ['initech.example', 'www.initech.example'] })
  await until(async () => await status(proxy.url, 'www.initech.example') === 200 ? true : undefined, 'the new tenant to route')
  await store.updateTenant('acme', { state: 'maintenance' })
  await until(async () => await status(proxy.url, 'acme.example') === 503 ? true : undefined, 'the state change to apply')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_changes_applied_total{source="announcement"}'), 2, 'both announced')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_changes_applied_total{source="query"}'), 0)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_query_failures_total{query="delta"}'), 0, 'no delta query was tried')

  // A writer that fires the deferred announcement early and writes on: the first part is announced
  // as version v, the rest is version v + 1, whose announcement (immediate now, fired inside the
  // write's trigger) carries the version alone, so the proxy reads it from the change log; it ends
  // with the whole transaction.
  await admin.query(`GRANT SELECT ON tenant_proxy.changes TO ${role}`)
  const before = (await store.head()).version
  await inTransaction(admin, [
    "UPDATE tenant_proxy.tenants SET state = 'suspended' WHERE slug = 'globex'",
    'SET CONSTRAINTS ALL IMMEDIATE',
    "UPDATE tenant_proxy.domains SET tenant_id = (SELECT id FROM tenant_proxy.tenants WHERE slug = 'globex') WHERE hostname = 'www.initech.example'"
  ])
  t.equal((await store.head()).version, before + 2, 'the writes after the announcement took a version of their own')
  await until(async () => proxy.state.index?.version === before + 2 ? true : undefined, 'both versions to apply')
  t.equal(await status(proxy.url, 'globex.example'), 403, 'the first part (suspended)')
  t.equal(await status(proxy.url, 'www.initech.example'), 403, 'the second part (the domain moved to the suspended tenant)')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_changes_applied_total{source="announcement"}'), 3, 'v announced with its rows')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_changes_applied_total{source="query"}'), 1, 'v + 1 read from the change log')

  // Too many changes for an announcement: the version alone, and the proxy reads the change log.
  await admin.query(`INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 'bulk-' || i, 'bulk_' || i FROM generate_series(1, ${ANNOUNCE_MAX_CHANGES + 1}) AS i`)
  const head = (await store.head()).version
  await until(async () => proxy.state.index?.version === head ? true : undefined, 'the bulk insert to apply')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_changes_applied_total{source="query"}'), 2, 'read from the change log')
  t.equal(proxy.state.index?.bySlug.has(`bulk-${ANNOUNCE_MAX_CHANGES + 1}`), true)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="start"}'), 1, 'no full load but the first')
})
