import { execFile } from 'node:child_process'
import { mkdtemp, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

async function get (url: string, host = 'anything.invalid'): Promise<{ status: number, text: string }> {
  const res = await request(url, { headers: { host } })
  return { status: res.statusCode, text: await res.body.text() }
}

t.test('/up answers 200 for any Host with zero tenants', async (t) => {
  const registry = await testRegistry(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  for (const host of ['anything.invalid', 'localhost', '10.0.0.1', 'a..b']) {
    const r = await get(`${proxy.url}/up`, host)
    t.equal(r.status, 200, host)
    t.same(JSON.parse(r.text), { status: 'ok' })
  }
  t.equal(upstream.seen.length, 0, 'health never reaches the app')
})

t.test('/up stays 200 with every tenant suspended or in maintenance, and with a missing tenant database', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'a', domains: ['a.example'], state: 'suspended' },
    { slug: 'b', domains: ['b.example'], state: 'maintenance' },
    { slug: 'c', domains: ['c.example'], databaseName: 'no_such_database_anywhere', databaseHost: 'db.invalid' }
  ])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_HEALTH_PATH: '/healthz' }))
  for (const host of ['a.example', 'b.example', 'c.example', 'unknown.example']) t.equal((await get(`${proxy.url}/healthz`, host)).status, 200, host)
  t.equal((await get(`${proxy.url}/up`, 'a.example')).status, 403, 'the old path is tenant traffic once the health path moves')
})

t.test('/up turns 503 while draining', async (t) => {
  const registry = await testRegistry(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '1500' }))
  t.equal((await get(`${proxy.url}/up`)).status, 200)
  const stopped = proxy.stop()
  const r = await get(`${proxy.url}/up`)
  t.equal(r.status, 503)
  t.same(JSON.parse(r.text), { status: 'draining' })
  const ready = await request(`${proxy.opsUrl}/ready`)
  t.equal(ready.statusCode, 503)
  t.match(await ready.body.json(), { status: 'draining', draining: true })
  await stopped
})

t.test('/ready reports snapshot, counts and upstream reachability', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example', 'www.a.example'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const ok = await request(`${proxy.opsUrl}/ready`)
  t.equal(ok.statusCode, 200)
  t.match(await ok.body.json(), { status: 'ready', draining: false, registry: { loaded: true, version: 1, tenants: 1, domains: 2 }, upstreams: [{ origin: upstream.origin, reachable: true }] })
  await upstream.close()
  const down = await request(`${proxy.opsUrl}/ready`)
  t.equal(down.statusCode, 503)
  t.match(await down.body.json(), { status: 'upstream_unreachable', upstreams: [{ reachable: false, error: 'ECONNREFUSED' }] })
  t.equal((await get(`${proxy.url}/up`)).status, 200, '/up does not depend on the upstream')
})

t.test('metrics: outcomes, registry gauges, no per-host labels; ops endpoints not on tenant hosts', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com'] },
    { slug: 'sleepy', domains: ['sleepy.example.com'], state: 'suspended' }
  ])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  await get(`${proxy.url}/`, 'acme.example.com')
  await get(`${proxy.url}/`, 'acme.example.com')
  await get(`${proxy.url}/`, 'sleepy.example.com')
  await get(`${proxy.url}/`, 'nobody.example.com')
  await get(`${proxy.url}/up`, 'nobody.example.com')
  const viaTenant = await get(`${proxy.url}/metrics`, 'acme.example.com')
  t.notMatch(viaTenant.text, /tenant_proxy_requests_total/, '/metrics on a tenant host is the app\'s, not ours')
  t.equal((await get(`${proxy.url}/.well-known/tenant-proxy/jwks.json`, 'nobody.example.com')).status, 404, 'key set not served on the traffic port')

  const res = await request(`${proxy.opsUrl}/metrics`)
  t.match(res.headers['content-type'], /text\/plain/)
  const text = await res.body.text()
  t.match(text, /tenant_proxy_requests_total\{outcome="routed",status_class="2xx"\} 3/)
  t.match(text, /tenant_proxy_requests_total\{outcome="suspended",status_class="4xx"\} 1/)
  t.match(text, /tenant_proxy_requests_total\{outcome="unknown_host",status_class="4xx"\} 2/, 'nobody.example.com and the key-set path on it')
  t.match(text, /nodejs_active_handles /)
  t.match(text, /tenant_proxy_requests_total\{outcome="health",status_class="2xx"\} 1/)
  t.match(text, /tenant_proxy_request_duration_seconds_bucket\{le="0.1",outcome="routed"\}/)
  t.match(text, /tenant_proxy_upstream_duration_seconds_count 3/)
  t.match(text, /tenant_proxy_requests_in_flight 0/)
  t.match(text, /tenant_proxy_registry_tenants 2/)
  t.match(text, /tenant_proxy_registry_domains 2/)
  t.match(text, /tenant_proxy_registry_last_load_timestamp_seconds \d+/)
  t.match(text, /tenant_proxy_descriptor_signatures_total 1/)
  t.match(text, /process_cpu_seconds_total/)
  t.notMatch(text, /host="|tenant="/, 'no per-host or per-tenant labels')

  const promtool = await new Promise<boolean>((resolve) => execFile('promtool', ['--version'], (err) => resolve(err === null)))
  t.test('promtool check metrics accepts the output', { skip: promtool ? false : 'promtool not installed (Debian package prometheus; .ci/run installs it)' }, async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-metrics-'))
    const file = path.join(dir, 'metrics.txt')
    await writeFile(file, text)
    const result = await new Promise<{ code: number, out: string }>((resolve) => {
      execFile('sh', ['-c', `promtool check metrics < ${file}`], (err, stdout, stderr) => resolve({ code: err === null ? 0 : 1, out: stdout + stderr }))
    })
    t.equal(result.code, 0, `promtool check metrics: ${result.out}`)
    t.equal(result.out.trim(), '', 'no lint findings')
  })
})
