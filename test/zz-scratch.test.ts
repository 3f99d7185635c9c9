/**
 * Issue 12 item 3: a full load read in keyset pages gives the same index as one snapshot
 * transaction, also when the registry changes between pages (the change log read afterwards
 * repairs what the pages saw at different instants), and never blocks the event loop for long.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildIndex, type RegistryIndex } from '../src/registry/index.js'
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
  const route = (r: object): string => JSON.stringify(r)
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
  console.error('A', Date.now()); const pp = plain(paged); console.error('B', Date.now()); const one = await oneTransaction(registry.store); console.error('C', Date.now()); const po = plain(one); console.error('D', Date.now()); t.same(pp, po); console.error('E', Date.now())
})

