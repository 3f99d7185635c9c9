/**
 * Database servers as registry objects (issue 13, item 1), through the real CLI, a real registry
 * and a real proxy: a tenant naming a server carries its host and port in the descriptor; moving
 * the server re-points every tenant on it in one registry version with each epoch bumped, seen by
 * the proxy's change feed; credentials stay references; a server in use cannot be removed.
 */
import pg from 'pg'
import t from 'tap'
import { request } from 'undici'
import { decodeDescriptor } from '../src/descriptor/verify.js'
import { buildIndex, applyDelta, type Route } from '../src/registry/index.js'
import { runCli } from './helpers/cli.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

interface DbClaim { name: string, host: string, port: number }

async function descriptorOf (proxyUrl: string, host: string): Promise<{ db: DbClaim, epoch: number }> {
  const res = await request(proxyUrl, { headers: { host } })
  const seen = await res.body.json() as { headers: Record<string, string> }
  const token = seen.headers['x-tenant-descriptor'] ?? ''
  const claims = decodeDescriptor(token).claims as unknown as { db: DbClaim, epoch: number }
  return { db: claims.db, epoch: claims.epoch }
}

t.test('servers: a server move re-points every tenant on it, in one version, epochs bumped, live in the proxy', async (t) => {
  const registry = await testRegistry(t)
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))

  let r = await runCli(['servers', 'add', 'pg-a', '--host', 'db-a.internal', '--port', '6432', '--admin-url-env', 'PG_A_ADMIN_URL', '--owner', 'app'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'added database server pg-a at db-a.internal:6432 (admin credentials: $PG_A_ADMIN_URL)')
  for (const slug of ['one', 'two']) {
    r = await runCli(['tenants', 'add', slug, '--domain', `${slug}.example`, '--database', `${slug}_db`, '--server', 'pg-a', '--wait'], env)
    t.equal(r.code, 0, r.stderr)
  }
  r = await runCli(['tenants', 'add', 'other', '--domain', 'other.example', '--database', 'other_db', '--db-host', 'db-b.internal', '--db-port', '5432'], env)
  t.equal(r.code, 0, r.stderr)

  const shown = JSON.parse((await runCli(['tenants', 'show', 'one', '--json'], env)).stdout) as Record<string, unknown>
  t.match(shown, { database_server: 'pg-a', database_host: 'db-a.internal', database_port: 6432, epoch: 1 }, 'tenants show carries the server and its host and port')
  t.match((await runCli(['tenants', 'show', 'one'], env)).stdout, 'database:  one_db on db-a.internal:6432 (server pg-a)')
  t.same((await descriptorOf(proxy.url, 'one.example')).db, { name: 'one_db', host: 'db-a.internal', port: 6432 }, 'the descriptor carries the server\'s host and port')

  const listed = JSON.parse((await runCli(['servers', 'list', '--json'], env)).stdout) as Array<Record<string, unknown>>
  t.match(listed, [{ name: 'pg-a', host: 'db-a.internal', port: 6432, admin_url_env: 'PG_A_ADMIN_URL', admin_url_file: null, owner: 'app', tenants: 2 }])

  const before = (await registry.store.status()).version
  const beforeIndex = buildIndex(await registry.store.snapshot(), { defaultHost: 'localhost', defaultPort: 5432 })
  r = await runCli(['servers', 'update', 'pg-a', '--host', 'db-a2.internal', '--port', '5433', '--wait'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, '2 tenant(s) now point at db-a2.internal:5433 (epochs bumped)')
  t.match(r.stderr, 'applied by the one proxy', '--wait saw the proxy apply it')
  const after = (await registry.store.status()).version
  t.equal(after, before + 1, 'one registry version for the whole server move')
  const changes = await registry.pool.query<{ key: string }>('SELECT key FROM tenant_proxy.changes WHERE version = $1 ORDER BY key', [after])
  t.same(changes.rows.map((c) => c.key), ['one', 'two'], 'every tenant on the server is logged as changed, no other')

  // The proxy's feed applied it: both tenants' descriptors point at the new address, epoch 2.
  for (const host of ['one.example', 'two.example']) {
    t.same(await descriptorOf(proxy.url, host), { db: { name: host.split('.')[0] + '_db', host: 'db-a2.internal', port: 5433 }, epoch: 2 }, `${host}: new server address, epoch bumped`)
  }
  t.same(await descriptorOf(proxy.url, 'other.example'), { db: { name: 'other_db', host: 'db-b.internal', port: 5432 }, epoch: 1 }, 'a tenant on another server is untouched')

  // The delta the feed applies gives the same index as a fresh snapshot.
  const delta = await registry.store.delta(before, 1000)
  if (!delta.complete) throw new Error('delta incomplete')
  applyDelta(beforeIndex, delta, { defaultHost: 'localhost', defaultPort: 5432 })
  const fresh = buildIndex(await registry.store.snapshot(), { defaultHost: 'localhost', defaultPort: 5432 })
  const facts = (x: Route): unknown[] => [x.id, x.slug, x.state, x.upstream, x.epoch, x.dbName, x.dbHost, x.dbPort, x.primaryHost, x.holdMs]
  // By id: iteration order is the index's row order, not a contract.
  const byId = (a: unknown[], b: unknown[]): number => (a[0] as number) - (b[0] as number)
  t.same([...beforeIndex.bySlug.values()].map(facts).sort(byId), [...fresh.bySlug.values()].map(facts).sort(byId))

  // A tenant's own host or port replaces its server's; --server brings it back.
  r = await runCli(['tenants', 'update', 'two', '--db-port', '7000', '--json'], env)
  t.match(JSON.parse(r.stdout), { database_server: null, database_host: 'db-a2.internal', database_port: 7000, epoch: 3 })
  r = await runCli(['tenants', 'update', 'two', '--server', 'pg-a', '--json'], env)
  t.match(JSON.parse(r.stdout), { database_server: 'pg-a', database_host: 'db-a2.internal', database_port: 5433, epoch: 4 }, 'back on the server: its address, the epoch bumped again')
  r = await runCli(['tenants', 'update', 'two', '--server', 'nope'], env)
  t.equal(r.code, 1)
  t.match(r.stderr, 'no database server nope (servers list shows them) (TENANT_PROXY_ERR_SERVER_NOT_FOUND)')

  // A server that tenants use cannot be removed; the message names them.
  r = await runCli(['servers', 'remove', 'pg-a', '--yes'], env)
  t.equal(r.code, 1)
  t.match(r.stderr, 'database server pg-a is used by 2 tenant(s): one, two (TENANT_PROXY_ERR_SERVER_IN_USE)')
  r = await runCli(['servers', 'remove', 'pg-a'], env)
  t.equal(r.code, 2, 'destructive: --yes required')
  t.match(r.stderr, 'TENANT_PROXY_ERR_CLI_CONFIRM')
  for (const slug of ['one', 'two']) t.equal((await runCli(['tenants', 'update', slug, '--db-host', 'elsewhere.internal'], env)).code, 0)
  r = await runCli(['servers', 'remove', 'pg-a', '--dry-run'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'dry run, nothing changed')
  t.equal((await registry.store.listServers()).length, 1, 'the dry run removed nothing')
  r = await runCli(['servers', 'remove', 'pg-a', '--yes', '--wait'], env)
  t.equal(r.code, 0, r.stderr)
  t.same(await registry.store.listServers(), [])
})

t.test('servers: credentials are references, never values', async (t) => {
  const registry = await testRegistry(t)
  const env = { REGISTRY_DATABASE_URL: registry.url }
  let r = await runCli(['servers', 'add', 'x', '--host', 'db', '--admin-url-env', 'postgres://admin:s3cret@db/postgres'], env)
  t.equal(r.code, 2)
  t.match(r.stderr, 'takes the NAME of an environment variable')
  t.notMatch(r.stderr, 's3cret')
  r = await runCli(['servers', 'add', 'x', '--host', 'db', '--admin-url-file', 'postgres://admin:s3cret@db/postgres'], env)
  t.equal(r.code, 2)
  t.notMatch(r.stderr, 's3cret')
  // Another writer cannot store a URL either: the registry's CHECK refuses it.
  await t.rejects(registry.pool.query("INSERT INTO tenant_proxy.database_servers (name, host, port, admin_url_file) VALUES ('y', 'db', 5432, 'postgres://a:b@db/x')"), /database_servers_admin_url_file_format/)
  r = await runCli(['servers', 'add', 'x', '--host', 'db', '--admin-url-file', 'secrets/admin-url'], env)
  t.equal(r.code, 0, r.stderr)
  const row = await registry.pool.query<{ admin_url_file: string }>("SELECT admin_url_file FROM tenant_proxy.database_servers WHERE name = 'x'")
  t.ok(row.rows[0]?.admin_url_file.startsWith('/') && row.rows[0].admin_url_file.endsWith('/secrets/admin-url'), 'a relative path is stored absolute')
  r = await runCli(['servers', 'add', 'x', '--host', 'db'], env)
  t.equal(r.code, 1)
  t.match(r.stderr, 'database server x already exists (TENANT_PROXY_ERR_SERVER_EXISTS)')
  r = await runCli(['servers', 'update', 'x', '--admin-url-env', 'X_URL', '--json'], env)
  t.match(JSON.parse(r.stdout), { admin_url_env: 'X_URL', admin_url_file: null }, 'a new reference replaces the old one')
})

t.test('servers: tenantDatabase.defaultServer names the server of tenants added without one', async (t) => {
  const registry = await testRegistry(t)
  const env = { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_TENANT_DATABASE_DEFAULT_SERVER: 'main' }
  t.equal((await runCli(['servers', 'add', 'main', '--host', 'db-main', '--port', '5432'], env)).code, 0)
  const r = await runCli(['tenants', 'add', 'acme', '--domain', 'acme.example', '--database', 'acme', '--json'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(JSON.parse(r.stdout), { database_server: 'main', database_host: 'db-main', database_port: 5432 })
  const direct = await runCli(['tenants', 'add', 'b', '--domain', 'b.example', '--database', 'b', '--db-host', 'elsewhere', '--json'], env)
  t.match(JSON.parse(direct.stdout), { database_server: null, database_host: 'elsewhere' }, 'a host given directly wins over the default server')
  const c = new pg.Client({ connectionString: registry.url })
  await c.connect()
  t.teardown(async () => await c.end())
  // The trigger keeps a tenant on its server whatever another writer sets.
  await c.query("UPDATE tenant_proxy.tenants SET database_host = 'sneaky' WHERE slug = 'acme'")
  t.equal((await c.query<{ h: string }>("SELECT database_host AS h FROM tenant_proxy.tenants WHERE slug = 'acme'")).rows[0]?.h, 'db-main')
})
