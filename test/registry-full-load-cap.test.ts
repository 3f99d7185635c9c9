/**
 * Issue 12 item 3: the registry-wide cap on concurrent full loads. Several proxies on one
 * registry are made to load fully at once (a transaction that logs more changes than a delta
 * reads); while every slot is taken they wait instead of loading or failing, keep routing from the
 * index they have, and say so (`tenant_proxy_registry_full_load_waiting`); once a slot frees they
 * load (the lock lets one in at a time). The slots are session advisory locks the test can hold itself, so "all
 * slots taken" is a state the test sets, not a race it hopes to win. Real PostgreSQL, real sockets.
 *
 * Guards: src/registry/sync.ts (#withSlot).
 */
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

/** More changes than a proxy's delta reads (DELTA_LIMIT in sync.ts): every proxy must load fully. */
const BACKLOG = 10_001

async function metric (opsUrl: string, series: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return Number(line?.split(' ').pop() ?? NaN)
}

async function status (url: string, host: string): Promise<number> {
  const res = await request(url, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

async function client (t: Test, url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  t.teardown(async () => await c.end())
  return c
}

/** A registry of `n` tenants (one domain each) and proxies on it with the cap at `cap`. */
async function fleet (t: Test, proxies: number, cap: number): Promise<{ registry: Awaited<ReturnType<typeof testRegistry>>, proxies: Array<Awaited<ReturnType<typeof startTestProxy>>> }> {
  const registry = await testRegistry(t)
  await registry.pool.query(`INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 't' || i, 'db_' || i FROM generate_series(1, 2000) AS i`)
  await registry.pool.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.example', id, 'primary' FROM tenant_proxy.tenants`)
  const upstream = await startUpstream(t)
  const started = []
  for (let i = 0; i < proxies; i++) {
    started.push(await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_REGISTRY_MAX_CONCURRENT_FULL_LOADS: String(cap) })))
  }
  for (const p of started) await until(() => p.state.synced ? true : undefined, 'every proxy synced')
  return { registry, proxies: started }
}

/** One transaction logging BACKLOG changes that leaves every tenant as it was. */
async function backlog (pool: pg.Pool): Promise<void> {
  const c = await pool.connect()
  try {
    await c.query('BEGIN')
    for (let done = 0; done < BACKLOG; done += 2 * 2000) {
      await c.query(`UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE state = 'active'`)
      await c.query(`UPDATE tenant_proxy.tenants SET state = 'active' WHERE state = 'maintenance'`)
    }
    await c.query('COMMIT')
  } finally {
    c.release()
  }
}

t.test('every slot taken: three proxies wait, keep routing and say so; once it is free, each loads', async (t) => {
  const { registry, proxies } = await fleet(t, 3, 1)
  const holder = await client(t, registry.url)
  // The only slot (cap 1), held as a proxy would hold it.
  await holder.query("SELECT pg_advisory_lock(hashtext('tenant_proxy full load'), 0)")
  await backlog(registry.pool)
  for (const p of proxies) {
    await until(async () => await metric(p.opsUrl, 'tenant_proxy_registry_full_load_waiting') === 1 ? true : undefined, 'each proxy waiting for a slot')
  }
  for (const p of proxies) {
    t.equal(await metric(p.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="backlog"}'), 0, 'no proxy loaded without a slot')
    t.equal(await status(p.url, 't1.example'), 200, 'known hosts keep routing while waiting')
  }
  await holder.query("SELECT pg_advisory_unlock(hashtext('tenant_proxy full load'), 0)")
  for (const p of proxies) {
    await until(async () => await metric(p.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="backlog"}') === 1 ? true : undefined, 'each proxy loaded once a slot was free', 60_000)
    t.equal(await metric(p.opsUrl, 'tenant_proxy_registry_full_load_waiting'), 0, 'no longer waiting')
    await until(() => p.state.synced ? true : undefined, 'synced again')
    t.equal(await status(p.url, 't2000.example'), 200)
  }
  // Every slot was given back: the test can take the only one again at once.
  t.equal((await holder.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext('tenant_proxy full load'), 0) AS ok")).rows[0]?.ok, true, 'the slot is free after the loads')
})

t.test('a cap of 0 waits for nothing, whatever holds the slots', async (t) => {
  const { registry, proxies } = await fleet(t, 1, 0)
  const holder = await client(t, registry.url)
  await holder.query("SELECT pg_advisory_lock(hashtext('tenant_proxy full load'), 0)")
  await backlog(registry.pool)
  const [p] = proxies
  if (p === undefined) return
  await until(async () => await metric(p.opsUrl, 'tenant_proxy_registry_full_loads_total{reason="backlog"}') === 1 ? true : undefined, 'the full load, without a slot', 60_000)
  t.equal(await metric(p.opsUrl, 'tenant_proxy_registry_full_load_waiting'), 0, 'never waited')
})
