/**
 * `workers` = 2 over real sockets and a real PostgreSQL registry: the built CLI runs a primary and
 * two workers sharing the traffic port. Which worker served a request is read from the access log
 * (each worker's lines carry its cluster id); node:cluster hands new connections to the workers in
 * turn, so fresh connections reach both.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { es256Pem, testRegistry, type TestRegistry } from './helpers/proxy.js'
import { spawnServe, type ServeProcess } from './helpers/serve-process.js'
import { until } from './helpers/wait.js'

interface Group { proxy: ServeProcess, traffic: string, ops: string, appName: string }

/** An upstream that answers at once, except /slow, which waits for `release`. */
async function upstream (t: Test): Promise<{ origin: string, arrived: Promise<void>, release (): void }> {
  let arrive: () => void = () => {}
  let release: () => void = () => {}
  const arrived = new Promise<void>((resolve) => { arrive = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.url === '/slow') {
      arrive()
      void released.then(() => res.end('finally'))
      return
    }
    res.end('ok')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, arrived, release }
}

async function startGroup (t: Test, registry: TestRegistry, origin: string, env: Record<string, string> = {}): Promise<Group> {
  // A name of this test's own, so pg_stat_activity shows exactly this group's connections.
  const appName = `tpw${process.pid}${Math.floor(Math.random() * 1e6)}`
  const proxy = await spawnServe(t, {
    REGISTRY_DATABASE_URL: registry.url,
    TENANT_PROXY_REGISTRY_APPLICATION_NAME: appName,
    TENANT_PROXY_UPSTREAM_URLS: origin,
    TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
    TENANT_PROXY_WORKERS: '2',
    ...env
  })
  return { proxy, traffic: `http://127.0.0.1:${proxy.trafficPort}`, ops: `http://127.0.0.1:${proxy.opsPort}`, appName }
}

/** A request on a connection of its own (so the primary hands it to the next worker); its status. */
async function fresh (base: string, host: string, path = '/'): Promise<number> {
  const res = await request(`${base}${path}`, { headers: { host, connection: 'close' }, reset: true })
  await res.body.dump()
  return res.statusCode
}

/** The access lines logged so far: worker id, host, status. */
function served (proxy: ServeProcess): Array<{ worker: number, host: string, status: number }> {
  const out: Array<{ worker: number, host: string, status: number }> = []
  for (const line of proxy.logs) {
    const entry = JSON.parse(line) as { msg?: string, worker?: number, host?: string, status?: number }
    if (entry.msg === 'request' && entry.worker !== undefined) out.push({ worker: entry.worker, host: entry.host ?? '', status: entry.status ?? 0 })
  }
  return out
}

/** Worker ids (as their log lines carry them) → pid, from the primary's "worker listening" lines. */
function workerPids (proxy: ServeProcess): Map<number, number> {
  const out = new Map<number, number>()
  for (const line of proxy.logs) {
    const entry = JSON.parse(line) as { msg?: string, worker?: number, pid?: number }
    if (entry.msg === 'worker listening' && entry.worker !== undefined && entry.pid !== undefined) out.set(entry.worker, entry.pid)
  }
  return out
}

async function metricSum (ops: string, name: string): Promise<number> {
  const text = await (await request(`${ops}/metrics`)).body.text()
  return text.split('\n').filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`)).reduce((sum, l) => sum + Number(l.split(' ').pop()), 0)
}

t.test('two workers: both serve, every change reaches both, one feed connection, /metrics sums them', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const app = await upstream(t)
  const group = await startGroup(t, registry, app.origin)
  let sent = 0

  // Both workers answer: bounded in requests and time.
  await until(async () => {
    if (sent >= 200) throw new Error('200 requests never reached both workers')
    t.equal(await fresh(group.traffic, 'acme.example'), 200)
    sent++
    return new Set(served(group.proxy).map((s) => s.worker)).size === 2 ? true : undefined
  }, 'both workers to serve a request', 15_000)
  const workers = [...new Set(served(group.proxy).map((s) => s.worker))]

  // A registry write reaches every worker: each of them routes the new host.
  await registry.store.addTenant({ slug: 'newco', domains: ['new.example'], databaseName: 'newco', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {} })
  await until(async () => {
    if (sent >= 400) throw new Error('400 requests never showed the new tenant on both workers')
    await fresh(group.traffic, 'new.example')
    sent++
    const routedBy = new Set(served(group.proxy).filter((s) => s.host === 'new.example' && s.status === 200).map((s) => s.worker))
    return workers.every((w) => routedBy.has(w)) ? true : undefined
  }, 'the new tenant to be routed by both workers', 15_000)
  const version = (await registry.store.status()).version
  const ready = await (await request(`${group.ops}/ready`)).body.json() as { status: string, workers: { expected: number, up: number, processes: Array<{ version: number, indexHeapBytes: number | null }> } }
  t.equal(ready.status, 'ready')
  t.equal(ready.workers.up, 2)
  t.same(ready.workers.processes.map((p) => p.version), [version, version], 'both workers at the registry version')
  // Measured (a number): with two tenants the difference is within the GC's noise and may be 0;
  // the bench reports it at 100,000 tenants.
  t.ok(ready.workers.processes.every((p) => typeof p.indexHeapBytes === 'number' && p.indexHeapBytes >= 0), 'index memory reported per worker')

  // One registry feed for the whole group (workers open no registry connection at all).
  const admin = new pg.Client({ connectionString: registry.url })
  await admin.connect()
  t.teardown(async () => await admin.end())
  const feeds = await admin.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE $1 || ' feed%'", [group.appName])
  t.equal(Number(feeds.rows[0]?.n), 1, 'one feed connection')
  const all = await admin.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", [group.appName])
  t.ok(Number(all.rows[0]?.n) <= 3, `the group holds the connections of one process (${all.rows[0]?.n ?? '?'})`)

  // Every request sent, whichever worker served it, is in the summed counter.
  t.equal(await until(async () => { const n = await metricSum(group.ops, 'tenant_proxy_requests_total'); return n === sent ? n : undefined }, `/metrics to count all ${sent} requests`), sent)
  t.equal(await metricSum(group.ops, 'tenant_proxy_workers_up'), 2)
  t.equal(await metricSum(group.ops, 'tenant_proxy_registry_tenants'), 2, 'index gauges are not multiplied by the workers')
  t.ok(await metricSum(group.ops, 'tenant_proxy_worker_index_lag_seconds_count') >= 2, 'the change was timed on each worker')
})

t.test('SIGTERM to the primary drains every worker: the in-flight request finishes, exit 0', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const app = await upstream(t)
  const group = await startGroup(t, registry, app.origin, { TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '300', TENANT_PROXY_SHUTDOWN_GRACE_MS: '10000' })
  const slow = request(`${group.traffic}/slow`, { headers: { host: 'acme.example' } })
  await app.arrived
  group.proxy.child.kill('SIGTERM')
  t.equal(await until(async () => { const r = await request(`${group.ops}/up`); await r.body.dump(); return r.statusCode === 503 ? 503 : undefined }, '/up 503 after SIGTERM', 5_000), 503)
  const exited = new Promise<number | null>((resolve) => group.proxy.child.once('exit', (c) => resolve(c)))
  // Both workers log that the primary asked them to drain; only then is the slow request released.
  await until(() => group.proxy.logs.filter((l) => l.includes('the primary asked this worker to drain')).length === 2 ? true : undefined, 'both workers to start draining', 5_000)
  app.release()
  const res = await slow
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'finally', 'the in-flight request completed')
  t.equal(group.proxy.child.exitCode ?? await exited, 0, 'exit code 0')
  t.equal(group.proxy.logs.filter((l) => l.includes('"msg":"worker exited"') && l.includes('"code":0')).length, 2, 'both workers exited 0')
})

t.test('a worker killed outright is replaced, and reported', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const app = await upstream(t)
  const group = await startGroup(t, registry, app.origin)
  const before = workerPids(group.proxy)
  t.equal(before.size, 2)
  const [victimId, victim] = [...before.entries()][0] ?? [0, 0]
  process.kill(victim, 'SIGKILL')
  const replacement = await until(() => {
    const now = workerPids(group.proxy)
    return now.size === 3 ? [...now.entries()].find(([id]) => !before.has(id)) : undefined
  }, 'a replacement worker to listen', 15_000)
  t.not(replacement[1], victim, 'a new process')
  t.ok(group.proxy.logs.some((l) => l.includes('worker exited unexpectedly') && l.includes(`"worker":${victimId}`)), 'the crash is logged')
  await until(async () => await metricSum(group.ops, 'tenant_proxy_workers_up') === 2 ? true : undefined, 'two workers up again')
  t.equal(await metricSum(group.ops, 'tenant_proxy_worker_restarts_total'), 1)
  const ready = await request(`${group.ops}/ready`)
  await ready.body.dump()
  t.equal(ready.statusCode, 200, 'ready again')
  // The replacement got the index: it routes.
  await until(async () => {
    await fresh(group.traffic, 'acme.example')
    return served(group.proxy).some((s) => s.worker === replacement[0] && s.status === 200) ? true : undefined
  }, 'the replacement to serve', 15_000)
})
