/**
 * Issue 12 item 3: a full load read in keyset pages gives the same index as one snapshot
 * transaction, also when the registry changes between pages (the change log read afterwards
 * repairs what the pages saw at different instants), and never blocks the event loop for long.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildIndex, type RegistryIndex, type Route } from '../src/registry/index.js'
import { indexFromRegistry, type RunQuery } from '../src/registry/load-index.js'
import type { RegistryStore } from '../src/registry/store.js'
import { testRegistry } from './helpers/proxy.js'

const PAGE = Number(process.env.PAGED_LOAD_PAGE_SIZE ?? 2_000)
const DEFAULTS = { defaultHost: 'db.default', defaultPort: 5432 }

/** `n` tenants, a primary domain each and an alias for every other one, a few on other servers or suspended. */
async function seed (pool: pg.Pool, n: number): Promise<void> {
  await pool.query(`INSERT INTO tenant_proxy.tenants (slug, database_name, database_host, database_port, state)
    SELECT 'tenant-' || i, 'db_' || i, CASE WHEN i % 3 = 0 THEN 'db' || (i % 5) || '.internal' END, CASE WHEN i % 3 = 0 THEN 6432 END,
      CASE WHEN i % 50 = 0 THEN 'suspended' ELSE 'active' END FROM generate_series(1, $1::int) AS i`, [n])
  await pool.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind)
    SELECT 't' || substr(slug, 8) || '.example', id, 'primary' FROM tenant_proxy.tenants
    UNION ALL SELECT 'alias-' || substr(slug, 8) || '.example', id, 'alias' FROM tenant_proxy.tenants WHERE id % 2 = 0`)
}

/** An index as comparable plain data: version, and every host and slug with its route's fields. */
function plain (index: RegistryIndex): unknown {
  // The route's facts, not its generation: two builds number their routes independently.
  const route = (r: Route): string => JSON.stringify([r.id, r.slug, r.state, r.upstream, r.epoch, r.dbName, r.dbHost, r.dbPort, r.primaryHost, r.holdMs])
  return {
    version: index.version,
    registryId: index.registryId,
    hosts: [...index.byHost].map(([h, r]) => [h, route(r)]).sort(),
    slugs: [...index.bySlug].map(([s, r]) => [s, route(r)]).sort()
  }
}

async function client (t: Test, url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  t.teardown(async () => await c.end())
  return c
}

async function oneTransaction (store: RegistryStore): Promise<RegistryIndex> {
  return buildIndex(await store.snapshot(), DEFAULTS)
}

t.test('20,000 tenants in pages of 700 give the index of one snapshot transaction', async (t) => {
  const registry = await testRegistry(t)
  await seed(registry.pool, 20_000)
  const c = await client(t, registry.url)
  let pages = 0
  const run: RunQuery = async (fn) => { pages++; return await fn(c) }
  const paged = await indexFromRegistry(registry.store, run, DEFAULTS, null, { pageSize: 700, deltaLimit: 10_000 })
  t.ok(pages > 40, `read in ${pages} queries`)
  t.equal(paged.bySlug.size, 20_000)
  t.equal(paged.byHost.size, 30_000)
  t.same(plain(paged), plain(await oneTransaction(registry.store)))
})

t.test('writes committed between pages are repaired by the change log read after the last page', async (t) => {
  const registry = await testRegistry(t)
  await seed(registry.pool, 3_000)
  const { store } = registry
  const c = await client(t, registry.url)
  // Between pages, the registry changes in every way a page can miss or see half of.
  const writes: Array<() => Promise<unknown>> = [
    async () => await store.addTenant({ slug: 'zz-new', databaseName: 'zz_new', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: ['zz-new.example', 'zz-alias.example'] }),
    async () => await store.removeTenant('tenant-2'),
    async () => await store.updateTenant('tenant-2999', { state: 'maintenance', databaseHost: 'moved.internal' }),
    // A domain moved between tenants by another writer (an UPDATE of tenant_id).
    async () => await registry.pool.query("UPDATE tenant_proxy.domains SET tenant_id = (SELECT id FROM tenant_proxy.tenants WHERE slug = 'tenant-1') WHERE hostname = 'alias-2998.example'"),
    async () => await store.addDomain('tenant-5', 'a-late.example', 'primary'),
    async () => await store.removeDomain('alias-4.example')
  ]
  let calls = 0
  const run: RunQuery = async (fn) => {
    calls++
    const write = calls % 2 === 0 ? writes.shift() : undefined
    if (write !== undefined) await write()
    return await fn(c)
  }
  const paged = await indexFromRegistry(store, run, DEFAULTS, null, { pageSize: 400, deltaLimit: 10_000 })
  t.equal(writes.length, 0, 'every write landed during the load')
  t.same(plain(paged), plain(await oneTransaction(store)), 'the same index as a snapshot read after the last write')
})

t.test('a page of tenants reads only its own rows of the domain index, wherever it starts', async (t) => {
  const registry = await testRegistry(t)
  await seed(registry.pool, 20_000)
  await registry.pool.query('ANALYZE tenant_proxy.tenants, tenant_proxy.domains')
  const c = await client(t, registry.url)
  // The statement tenantPage sends, captured from the client, then explained with its values.
  let sent: { text: string, values: unknown[] } | null = null
  const recording = { query: async (q: { text: string, values: unknown[] }) => { sent = q; return await c.query(q) } } as unknown as pg.ClientBase
  const page = await registry.store.tenantPage(15_000, 500, recording)
  t.equal(page.length, 500)
  const { text, values } = sent as unknown as { text: string, values: unknown[] }
  const plan = (await c.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, values)).rows[0]?.['QUERY PLAN'][0]?.Plan
  interface PlanNode { 'Node Type': string, 'Relation Name'?: string, 'Actual Rows': number, 'Actual Loops': number, Plans?: PlanNode[] }
  const nodes = (n: PlanNode | undefined): PlanNode[] => n === undefined ? [] : [n, ...(n.Plans ?? []).flatMap(nodes)]
  const domainRows = nodes(plan).filter((n) => n['Relation Name'] === 'domains').reduce((sum, n) => sum + n['Actual Rows'] * n['Actual Loops'], 0)
  // Unbounded, a merge join reads the index from the first tenant on: 15,500 rows here, 500,000 in
  // the middle of a million-tenant load.
  t.ok(domainRows <= 1_000, `domain rows read for a page of 500 after 15,000 tenants: ${domainRows}`)
})

t.test('a 100,000-tenant paged load blocks the event loop only briefly', async (t) => {
  const registry = await testRegistry(t)
  await seed(registry.pool, 100_000)
  const c = await client(t, registry.url)
  const run: RunQuery = async (fn) => await fn(c)
  const previous = await indexFromRegistry(registry.store, run, DEFAULTS, null, { pageSize: 10_000, deltaLimit: 10_000 })
  // The longest time between two turns of a 1 ms timer, during the load (a second load, beside a
  // served index, as after a gap).
  const histogram = monitorEventLoopDelay({ resolution: 1 })
  // On a machine shared with other work, a gap may be time the process was not scheduled at all:
  // the CPU time the process used within the gap tells its own blocking apart.
  let longest = 0
  let longestCpu = 0
  let last = performance.now()
  let lastCpu = process.cpuUsage()
  const tick = setInterval(() => {
    const now = performance.now()
    const cpu = process.cpuUsage(lastCpu)
    const gap = now - last
    const cpuMs = (cpu.user + cpu.system) / 1000
    if (gap > longest) longest = gap
    // CPU time counts every thread (GC helpers too): bounded by the gap, it is this thread's at most.
    longestCpu = Math.max(longestCpu, Math.min(gap, cpuMs))
    last = now
    lastCpu = process.cpuUsage()
  }, 1)
  histogram.enable()
  const started = performance.now()
  const index = await indexFromRegistry(registry.store, run, DEFAULTS, previous, { pageSize: PAGE, deltaLimit: 10_000 })
  const ms = performance.now() - started
  histogram.disable()
  clearInterval(tick)
  t.equal(index.bySlug.size, 100_000)
  const maxDelay = histogram.max / 1e6
  t.comment(`100,000 tenants, 150,000 domains in pages of ${PAGE}: load ${Math.round(ms)} ms; longest timer gap ${longest.toFixed(1)} ms (event-loop delay max ${maxDelay.toFixed(1)} ms, p99 ${(histogram.percentile(99) / 1e6).toFixed(1)} ms); most CPU used within one gap ${longestCpu.toFixed(1)} ms`)
  // The target is ~20 ms on an idle machine; the bound leaves room for a machine shared with others.
  t.ok(longestCpu < 150, `longest block by CPU time ${longestCpu.toFixed(1)} ms`)
})
