/**
 * Registry export/import through the CLI (real PostgreSQL), and the change log machinery the
 * live feed relies on: applying deltas gives exactly the index a full snapshot gives, and a
 * pruned log makes the delta say "incomplete" (the proxy then resyncs fully).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type pg from 'pg'
import t from 'tap'
import { applyDelta, buildIndex, primaryHostOf, type RegistryIndex, type Route } from '../src/registry/index.js'
import { parseAnnouncement, type Announcement } from '../src/registry/announcement.js'
import { ANNOUNCE_MAX_CHANGES } from '../src/registry/migrations/005-announce.js'
import { pruneWithPool } from '../src/registry/prune.js'
import type { CompleteDelta } from '../src/registry/store.js'
import { inTransaction } from './helpers/postgres.js'
import { until } from './helpers/wait.js'
import { runCli } from './helpers/cli.js'
import { testRegistry } from './helpers/proxy.js'

const DEFAULTS = { defaultHost: 'db.internal', defaultPort: 5432 }

/** A delta with its rows in one order (the registry aggregates them in no particular order). */
function comparable (delta: CompleteDelta | null): unknown {
  if (delta === null) return null
  return {
    ...delta,
    tenantSlugs: [...delta.tenantSlugs].sort(),
    hostnames: [...delta.hostnames].sort(),
    tenants: [...delta.tenants].sort((x, y) => x.id - y.id),
    domains: [...delta.domains].sort((x, y) => x.hostname.localeCompare(y.hostname))
  }
}

/** The index as plain data: host → slug/state/db, slug → id and primary domain, the slugs in order. */
async function shape (index: RegistryIndex): Promise<unknown> {
  return {
    version: index.version,
    hosts: [...index.byHost].map(([h, r]) => [h, r.slug, r.state, r.db.name, r.db.host, r.db.port, r.epoch, r.upstream]).sort(),
    slugs: [...index.bySlug].map(([s, r]) => [s, r.id, primaryHostOf(index, r)]).sort(),
    order: [...await index.slugOrder.sorted()]
  }
}

t.test('registry export | import round-trips, and import refuses bad input without writing', async (t) => {
  const source = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example', 'www.acme.example'], databaseHost: 'db2.internal', databasePort: 6432, upstream: 'canary', settings: { plan: 'pro' } },
    { slug: 'globex', domains: ['globex.example'], state: 'suspended' }
  ])
  const target = await testRegistry(t)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-transfer-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'registry.jsonl')

  const exported = await runCli(['registry', 'export', '--output', file], { REGISTRY_DATABASE_URL: source.url })
  t.equal(exported.code, 0, exported.stderr)
  const lines = (await readFile(file, 'utf8')).trim().split('\n')
  t.equal(lines.length, 2)
  t.match(JSON.parse(lines[0] ?? '{}'), { slug: 'acme', database_host: 'db2.internal', database_port: 6432, upstream: 'canary', settings: { plan: 'pro' }, domains: [{ hostname: 'acme.example', kind: 'primary' }, { hostname: 'www.acme.example', kind: 'alias' }] })

  const env = { REGISTRY_DATABASE_URL: target.url }
  const dry = await runCli(['registry', 'import', file, '--dry-run'], env)
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, /dry run, nothing written: would have created 2/)
  t.equal((await target.store.listTenants()).length, 0, 'dry run wrote nothing')

  const imported = await runCli(['registry', 'import', file], env)
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.stdout, /created 2, updated 0/)
  const strip = (rows: Awaited<ReturnType<typeof source.store.listTenants>>): unknown => rows.map(({ created_at: _c, updated_at: _u, ...r }) => r)
  t.same(strip(await target.store.listTenants()), strip(await source.store.listTenants()), 'the target holds the same tenants and domains')

  // Importing again without --replace: conflicts listed, nothing written.
  const before = await target.store.status()
  const again = await runCli(['registry', 'import', file], env)
  t.equal(again.code, 2)
  t.match(again.stderr, /tenant acme already exists[\s\S]*tenant globex already exists/)
  t.same(await target.store.status(), before, 'nothing changed')

  // --replace updates in place and replaces the domain set.
  await writeFile(file, JSON.stringify({ slug: 'acme', database_name: 'acme', state: 'maintenance', domains: ['acme.example', 'acme.example.org'] }) + '\n')
  const replaced = await runCli(['registry', 'import', file, '--replace'], env)
  t.equal(replaced.code, 0, replaced.stderr)
  t.match(replaced.stdout, /created 0, updated 1/)
  t.match(await target.store.findTenant('acme'), { state: 'maintenance', database_host: null, domains: [{ hostname: 'acme.example', kind: 'primary' }, { hostname: 'acme.example.org', kind: 'alias' }] })

  // Every problem, with its line number; nothing written.
  const snapshot = await target.store.status()
  await writeFile(file, [
    '{"slug":"ok-one","database_name":"ok_one","domains":["ok.example"]}',
    'not json',
    '{"slug":"Bad Slug","database_name":"x","domains":["x.example"]}',
    '{"slug":"two","database_name":"two","domains":["OK.EXAMPLE"]}',
    '{"slug":"three","database_name":"three","domains":[],"colour":"red"}',
    '{"slug":"four","database_name":"four","database_port":70000,"domains":["10.0.0.1"]}',
    '{"slug":"five","database_name":"five","domains":["globex.example"]}'
  ].join('\n') + '\n')
  const bad = await runCli(['registry', 'import', file], env)
  t.equal(bad.code, 2)
  for (const expected of [/line 2: not JSON/, /line 3: invalid tenant slug "Bad Slug"/, /line 4: domain ok\.example also on line 1/, /line 5: unknown key\(s\) colour/, /line 5: domains must be a non-empty list/, /line 6: invalid database port 70000/, /line 6: domains\[0\]: invalid host "10\.0\.0\.1": IP literal/, /line 7: domain globex\.example already belongs to tenant globex/]) {
    t.match(bad.stderr, expected)
  }
  t.match(bad.stderr, /TENANT_PROXY_ERR_IMPORT_INVALID/)
  t.same(await target.store.status(), snapshot, 'nothing changed')

  // Valid lines that conflict with the registry: a domain owned by a tenant outside the import.
  await writeFile(file, '{"slug":"five","database_name":"five","domains":["globex.example"]}\n')
  const conflict = await runCli(['registry', 'import', file], env)
  t.equal(conflict.code, 2)
  t.match(conflict.stderr, /line 1: domain globex\.example already belongs to tenant globex/)
  t.same(await target.store.status(), snapshot, 'nothing changed')
})

t.test('applying deltas after any sequence of writes equals a full snapshot', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }, { slug: 'b', domains: ['b.example', 'shared.example'] }, { slug: 'p', domains: ['p.example', 'p2.example'] }])
  const { store, pool } = registry
  const live = buildIndex(await store.snapshot(), DEFAULTS)
  // The sorted slugs exist before the writes, so every step patches them (an unbuilt order is built fresh).
  t.same(await live.slugOrder.sorted(), ['a', 'b', 'p'])
  // Every write's announcement (migration 005) must be exactly the delta a proxy would read.
  const listener = await pool.connect()
  t.teardown(() => listener.release())
  const announced = new Map<number, Announcement>()
  listener.on('notification', (n) => {
    if (n.channel !== 'tenant_proxy') return
    const a = parseAnnouncement(n.payload)
    announced.set(a.version, a)
  })
  await listener.query('LISTEN tenant_proxy')
  const step = async (what: string, write: (c: pg.PoolClient) => Promise<unknown>): Promise<void> => {
    await inTransaction(pool, [write])
    const delta = await store.delta(live.version, 10_000)
    if (!delta.complete) throw new Error('delta unexpectedly incomplete')
    const announcement = await until(() => announced.get(delta.version), `the announcement of ${what}`)
    if (delta.changes > ANNOUNCE_MAX_CHANGES) t.equal(announcement.delta, null, `${what}: too many changes to announce, the version alone`)
    else t.same(comparable(announcement.delta), comparable(delta), `${what}: the announcement is the delta`)
    const result = applyDelta(live, delta, DEFAULTS)
    t.ok(result.consistent, `${what}: consistent`)
    t.same(await shape(live), await shape(buildIndex(await store.snapshot(), DEFAULTS)), `${what}: the live index equals a fresh snapshot`)
  }
  const q = (sql: string, values: unknown[] = []) => async (c: pg.PoolClient) => await c.query(sql, values)
  await step('tenant added with domains', async (c) => {
    await c.query("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('c', 'c')")
    await c.query("INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT 'c.example', id, 'primary' FROM tenant_proxy.tenants WHERE slug = 'c'")
  })
  await step('state change', q("UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE slug = 'a'"))
  await step('database moved (epoch bump)', q("UPDATE tenant_proxy.tenants SET database_host = 'db9.internal' WHERE slug = 'b'"))
  const routeA = live.bySlug.get('a')
  await step('domain moved between tenants', q("UPDATE tenant_proxy.domains SET tenant_id = (SELECT id FROM tenant_proxy.tenants WHERE slug = 'a') WHERE hostname = 'shared.example'"))
  t.equal(live.bySlug.get('a'), routeA, 'a tenant touched only through its domains keeps its route object')
  await step('domain renamed', q("UPDATE tenant_proxy.domains SET hostname = 'renamed.example' WHERE hostname = 'shared.example'"))
  await step('slugs swapped in one transaction', async (c) => {
    await c.query("UPDATE tenant_proxy.tenants SET slug = 'tmp' WHERE slug = 'a'")
    await c.query("UPDATE tenant_proxy.tenants SET slug = 'a' WHERE slug = 'b'")
    await c.query("UPDATE tenant_proxy.tenants SET slug = 'b' WHERE slug = 'tmp'")
  })
  await step('tenant removed (domains cascade)', q("DELETE FROM tenant_proxy.tenants WHERE slug = 'c'"))
  await step('several writes in one transaction', async (c) => {
    await c.query("INSERT INTO tenant_proxy.tenants (slug, database_name, state) VALUES ('d', 'd', 'suspended')")
    await c.query("INSERT INTO tenant_proxy.domains (hostname, tenant_id) SELECT 'd.example', id FROM tenant_proxy.tenants WHERE slug = 'd'")
    await c.query("DELETE FROM tenant_proxy.domains WHERE hostname = 'renamed.example'")
    await c.query("UPDATE tenant_proxy.tenants SET upstream = 'canary' WHERE slug = 'a'")
  })
  await step('primary domain switched', async (c) => {
    await c.query("UPDATE tenant_proxy.domains SET kind = 'alias' WHERE hostname = 'p.example'")
    await c.query("UPDATE tenant_proxy.domains SET kind = 'primary' WHERE hostname = 'p2.example'")
  })
  t.equal(primaryHostOf(live, live.bySlug.get('p') as Route), 'p2.example', 'the new primary')
  // Moved by a writer other than the CLI: the change log names only the new tenant (a), so p's
  // route still names the domain, which no longer routes to p: p has no primary domain now.
  await step('primary domain moved to another tenant as an alias', q("UPDATE tenant_proxy.domains SET tenant_id = (SELECT id FROM tenant_proxy.tenants WHERE slug = 'a'), kind = 'alias' WHERE hostname = 'p2.example'"))
  t.equal(primaryHostOf(live, live.bySlug.get('p') as Route), null, 'p has no primary domain')
  await step('many tenants in one transaction (merged into the sorted slugs in one pass, not spliced one by one)', q("INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 'bulk-' || i, 'bulk_' || i FROM generate_series(1, 100) AS i"))
  await step('a tenant added after that', q("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('0first', 'zero_first')"))
  const unchanged = live.bySlug.get('b')
  await step('no-op update', q("UPDATE tenant_proxy.tenants SET settings = '{\"x\":1}' WHERE slug = 'b'"))
  t.equal(live.bySlug.get('b'), unchanged, 'a change the data path does not read keeps the route object (cached descriptors stay valid)')
})

t.test('a pruned change log makes the delta incomplete, so the proxy resyncs', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }])
  const { store, pool } = registry
  const old = await store.snapshot()
  await store.updateTenant('a', { state: 'suspended' })
  await store.updateTenant('a', { state: 'active' })
  // Age every change row, then prune with a one-second retention: all but the newest version go.
  await pool.query("UPDATE tenant_proxy.changes SET changed_at = now() - interval '1 hour'")
  t.match(await pruneWithPool(pool, 'tenant_proxy', 1), { outcome: 'pruned', deleted: Number }, 'rows pruned')
  const delta = await store.delta(old.version, 10_000)
  t.match(delta, { complete: false, reason: 'gap' })
  const current = await store.snapshot()
  t.match(await store.delta(current.version - 1, 10_000), { complete: true }, 'a proxy at the newest version minus one still applies incrementally')
  t.match(await store.delta(old.version, 1), { complete: false }, 'a backlog over the limit is incomplete too')
})

t.test('a delta is one statement on the given connection (one round trip per change and proxy), paused tenants included on request', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }, { slug: 'b', domains: ['b.example'] }])
  const { store, pool } = registry
  const before = await store.snapshot()
  await store.setPause('b', 5_000)
  await store.updateTenant('a', { state: 'maintenance' })
  const c = await pool.connect()
  t.teardown(() => c.release())
  const sent: string[] = []
  const query = c.query.bind(c)
  // Counts what reaches the connection: the feed runs the delta on its one connection.
  const counting = new Proxy(c, { get: (target, key) => key === 'query' ? (q: { text: string }, ...rest: unknown[]) => { sent.push(q.text); return (query as (...a: unknown[]) => unknown)(q, ...rest) } : Reflect.get(target, key) as unknown })
  const delta = await store.delta(before.version, 10_000, { client: counting })
  t.equal(sent.length, 1, 'one statement, no transaction around it')
  t.match(delta, { complete: true, changes: 2, tenantSlugs: ['a', 'b'], hostnames: [] })
  t.same(delta.complete && delta.tenants.map((x) => [x.slug, x.state, x.holdMs, x.primaryHost]).sort(), [['a', 'maintenance', null, 'a.example'], ['b', 'active', 5_000, 'b.example']])
  t.same(delta.complete && delta.domains.map((d) => [d.hostname, d.slug]).sort(), [['a.example', 'a'], ['b.example', 'b']])

  // Nothing changed after the newest version: only paused tenants, and only when asked.
  const head = await store.snapshot()
  t.match(await store.delta(head.version, 10_000), { complete: true, changes: 0, tenantSlugs: [], tenants: [], domains: [] })
  const withPaused = await store.delta(head.version, 10_000, { paused: true })
  t.same(withPaused.complete && [withPaused.tenantSlugs, withPaused.tenants.map((x) => x.slug), withPaused.domains.map((d) => d.hostname)], [['b'], ['b'], ['b.example']])
  // A backlog names no rows (the registry counted them and sent none).
  t.match(await store.delta(before.version, 1, { paused: true }), { complete: false, reason: 'backlog', version: head.version })
})

t.test('a writer with constraints immediate from the start keeps one version and announces it bare', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }, { slug: 'b', domains: ['b.example'] }])
  const { store, pool } = registry
  const listener = await pool.connect()
  t.teardown(() => listener.release())
  const payloads: string[] = []
  listener.on('notification', (n) => { if (n.channel === 'tenant_proxy') payloads.push(n.payload ?? '') })
  await listener.query('LISTEN tenant_proxy')
  const before = (await store.head()).version
  await inTransaction(pool, [
    'SET CONSTRAINTS ALL IMMEDIATE',
    "UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE slug = 'a'",
    "UPDATE tenant_proxy.tenants SET state = 'suspended' WHERE slug = 'b'"
  ])
  t.equal((await store.head()).version, before + 1, 'one version for the transaction')
  await until(() => payloads.length > 0 ? true : undefined, 'the notification')
  t.same(payloads.map(parseAnnouncement), [{ version: before + 1, delta: null }], 'the version alone: a proxy reads the whole transaction from the log')
  t.match(await store.delta(before, 10_000), { complete: true, changes: 2, tenantSlugs: ['a', 'b'] })
})
