/**
 * `--wait` on CLI writes, with real `serve` processes, real PostgreSQL and real sockets: the CLI
 * returns only once every connected proxy routes by the change; a stalled proxy makes it time out
 * naming that proxy (the change committed); with no proxy it returns at once; `registry status`
 * shows each proxy's applied version; and all of it works for a proxy on the read-only role.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os, { hostname } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { feedApplicationName, parseFeedApplicationName } from '../src/registry/feed-name.js'
import { runCli } from './helpers/cli.js'
import { es256Pem, testRegistry, type TestRegistry } from './helpers/proxy.js'
import { spawnServe, type ServeProcess } from './helpers/serve-process.js'
import { startTcpRelay } from './helpers/tcp-relay.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

async function statusOf (proxy: ServeProcess, host: string): Promise<number> {
  const res = await request(`http://127.0.0.1:${proxy.trafficPort}/`, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

/** The registry version a proxy's index is at, from its own /ready. */
async function appliedVersion (proxy: ServeProcess): Promise<number> {
  const res = await request(`http://127.0.0.1:${proxy.opsPort}/ready`)
  return (await res.body.json() as { registry: { version: number } }).registry.version
}

/** The name a proxy process goes by in pg_stat_activity, `registry status` and wait errors. */
function proxyLabel (proxy: ServeProcess): string {
  return parseFeedApplicationName('tenant-proxy', feedApplicationName('tenant-proxy', 0, hostname(), proxy.child.pid ?? 0))?.proxy ?? ''
}

interface StatusJson { version: number, feeds: Array<{ proxy: string, version: number | null, lag: number | null }> }

async function registryStatus (url: string): Promise<StatusJson> {
  const r = await runCli(['registry', 'status', '--json'], { REGISTRY_DATABASE_URL: url })
  if (r.code !== 0) throw new Error(`registry status failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as StatusJson
}

/** Waits until `registry status` lists `count` proxies that have reported a version. */
async function proxiesReported (registry: TestRegistry, count: number): Promise<StatusJson> {
  return await until(async () => {
    const s = await registryStatus(registry.url)
    return s.feeds.filter((f) => f.version !== null).length === count ? s : undefined
  }, `${count} proxies reporting their applied version`)
}

async function serve (t: Parameters<typeof spawnServe>[0], registryUrl: string, upstreamOrigin: string): Promise<ServeProcess> {
  return await spawnServe(t, { REGISTRY_DATABASE_URL: registryUrl, TENANT_PROXY_UPSTREAM_URLS: upstreamOrigin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(), TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: '0' })
}

t.test('--wait returns once every proxy routes by the change: a request right after it never sees the old state', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const pgAddress = new URL(registry.url)
  // The second proxy reaches the registry over a slow link: it applies each change about a second late.
  const relay = await startTcpRelay(t, { host: pgAddress.hostname, port: Number(pgAddress.port === '' ? 5432 : pgAddress.port) })
  const near = await serve(t, registry.url, upstream.origin)
  const far = await serve(t, relay.url(registry.url), upstream.origin)
  await proxiesReported(registry, 2)
  relay.delayMs = 150
  const env = { REGISTRY_DATABASE_URL: registry.url }

  // Without --wait the CLI returns at commit, and the far proxy still routes the tenant: the race.
  t.equal((await runCli(['tenants', 'state', 'acme', 'suspended'], env)).code, 0)
  t.equal(await statusOf(far, 'acme.example'), 200, 'without --wait, a request right after the CLI returns still reaches the app')
  await until(async () => await statusOf(far, 'acme.example') === 403 ? true : undefined, 'the far proxy to apply the suspension')

  // With --wait, every answer right after the CLI returns is the new state, through both proxies.
  // Each round starts with both proxies current, so a proxy still applying an earlier change
  // cannot pass by showing the state this round expects.
  for (let i = 0; i < 4; i++) {
    const version = (await registry.store.status()).version
    await until(async () => await appliedVersion(near) === version && await appliedVersion(far) === version ? true : undefined, 'both proxies at the registry version')
    const state = i % 2 === 0 ? 'active' : 'suspended'
    const expected = state === 'active' ? 200 : 403
    const r = await runCli(['tenants', 'state', 'acme', state, '--wait'], env)
    t.equal(r.code, 0, r.stderr)
    t.equal(await statusOf(far, 'acme.example'), expected, `far proxy answers ${expected} as soon as "tenants state acme ${state} --wait" returns`)
    t.equal(await statusOf(near, 'acme.example'), expected, `near proxy answers ${expected} as soon as "tenants state acme ${state} --wait" returns`)
    t.match(r.stderr, /applied by all 2 proxies connected to the registry \(registry version \d+, \d+ ms\)/)
  }

  // The other writes wait the same way (--json carries the wait result).
  const added = await runCli(['domains', 'add', 'acme', 'www.acme.example', '--wait', '--json'], env)
  t.equal(added.code, 0, added.stderr)
  const wait = (JSON.parse(added.stdout) as { slug: string, wait: { applied: boolean, version: number, proxies: Array<{ proxy: string, version: number, applied: boolean }> } })
  t.equal(wait.slug, 'acme', 'the tenant keys stay as they were')
  t.match(wait.wait, { applied: true, proxies: [{ applied: true }, { applied: true }] })
  t.same(wait.wait.proxies.map((p) => p.proxy).sort(), [proxyLabel(near), proxyLabel(far)].sort())
  t.equal(await statusOf(far, 'www.acme.example'), 403, 'the new domain routes (to the suspended tenant) right after domains add --wait')
  const importFile = `${JSON.stringify({ slug: 'globex', state: 'active', database_name: 'globex', domains: [{ hostname: 'globex.example', kind: 'primary' }] })}\n`
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-wait-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await writeFile(path.join(dir, 'import.jsonl'), importFile)
  const imported = await runCli(['registry', 'import', path.join(dir, 'import.jsonl'), '--wait'], env)
  t.equal(imported.code, 0, imported.stderr)
  t.equal(await statusOf(far, 'globex.example'), 200, 'an imported tenant routes right after registry import --wait')
})

t.test('a stalled proxy makes --wait time out naming it; the change is committed; registry status shows who lags', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const healthy = await serve(t, registry.url, upstream.origin)
  const stalled = await serve(t, registry.url, upstream.origin)
  const before = await proxiesReported(registry, 2)
  t.same(before.feeds.map((f) => f.lag), [0, 0], 'both proxies are current')

  stalled.child.kill('SIGSTOP')
  t.teardown(() => { stalled.child.kill('SIGCONT') })
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const r = await runCli(['tenants', 'state', 'acme', 'suspended', '--wait', '--wait-timeout', '1', '--json'], env)
  t.equal(r.code, 75, 'exit code 75: committed, not confirmed')
  t.match(r.stderr, `but after 1 s 1 of 2 connected proxies had not applied it: ${proxyLabel(stalled)} (at version ${before.version})`)
  t.match(r.stderr, 'TENANT_PROXY_ERR_WAIT_TIMEOUT')
  t.notMatch(r.stderr, proxyLabel(healthy), 'the proxy that applied it is not named')
  t.match(JSON.parse(r.stdout), { state: 'suspended', wait: { version: before.version + 1, applied: false, timeout_s: 1 } })
  t.equal((await registry.store.findTenant('acme'))?.state, 'suspended', 'the change is committed')
  t.equal(await statusOf(healthy, 'acme.example'), 403)

  const lagging = await registryStatus(registry.url)
  t.equal(lagging.version, before.version + 1)
  t.same(lagging.feeds.map((f) => [f.proxy, f.version, f.lag]).sort(), [
    [proxyLabel(healthy), before.version + 1, 0],
    [proxyLabel(stalled), before.version, 1]
  ].sort(), 'registry status --json: each proxy with its applied version and lag')
  const text = await runCli(['registry', 'status'], env)
  t.match(text.stdout, `${proxyLabel(healthy)}  applied: v${before.version + 1} (current)`)
  t.match(text.stdout, `${proxyLabel(stalled)}  applied: v${before.version} (1 behind)`)

  stalled.child.kill('SIGCONT')
  await until(async () => (await registryStatus(registry.url)).feeds.every((f) => f.lag === 0) ? true : undefined, 'the resumed proxy to catch up')
  t.equal(await statusOf(stalled, 'acme.example'), 403)
  const again = await runCli(['tenants', 'state', 'acme', 'active', '--wait-timeout', '5'], env)
  t.equal(again.code, 0, '--wait-timeout alone waits, and succeeds once every proxy is current')
  t.match(again.stderr, /applied by all 2 proxies/)
})

t.test('--wait with no proxy connected returns at once; a bad --wait-timeout changes nothing', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const r = await runCli(['tenants', 'state', 'acme', 'suspended', '--wait', '--json'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, 'no proxy connected to the registry; nothing to wait for')
  const out = JSON.parse(r.stdout) as { wait: { applied: boolean, proxies: unknown[], waited_ms: number } }
  t.match(out.wait, { applied: true, proxies: [] })
  t.ok(out.wait.waited_ms < 1_000, `returned after ${out.wait.waited_ms} ms, without polling out the 30 s default`)
  const plain = await runCli(['tenants', 'state', 'acme', 'suspended'], env)
  t.equal(plain.stderr, '', 'without --wait, nothing about proxies is said')

  const versionBefore = (await registry.store.status()).version
  for (const bad of ['0', '-1', 'soon', '3601']) {
    const refused = await runCli(['tenants', 'state', 'acme', 'active', '--wait-timeout', bad], env)
    t.equal(refused.code, 2, `--wait-timeout ${bad} is a usage error`)
    t.match(refused.stderr, 'TENANT_PROXY_ERR_CLI_USAGE')
  }
  t.equal((await registry.store.status()).version, versionBefore, 'nothing was written')
  t.equal((await registry.store.findTenant('acme'))?.state, 'suspended')
})

t.test('a proxy on the read-only registry role reports its version, and that role sees every proxy', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  // Exactly the grants docs/operations.md recommends for proxies.
  const role = `tp_ro_${process.pid}_${Math.floor(Math.random() * 1e9)}`
  await registry.pool.query(`CREATE ROLE ${role} LOGIN`)
  t.teardown(async () => {
    await registry.pool.query(`DROP OWNED BY ${role}`)
    await registry.pool.query(`DROP ROLE ${role}`)
  })
  await registry.pool.query(`GRANT USAGE ON SCHEMA tenant_proxy TO ${role}; GRANT SELECT ON ALL TABLES IN SCHEMA tenant_proxy TO ${role};`)
  const readOnly = new URL(registry.url)
  readOnly.username = role
  readOnly.password = ''
  const superuser = (await registry.pool.query<{ rolsuper: boolean }>('SELECT rolsuper FROM pg_roles WHERE rolname = $1', [role])).rows[0]
  t.equal(superuser?.rolsuper, false, 'the role is not a superuser')

  const limited = await serve(t, readOnly.toString(), upstream.origin)
  const full = await serve(t, registry.url, upstream.origin)
  await proxiesReported(registry, 2)
  const r = await runCli(['tenants', 'state', 'acme', 'suspended', '--wait'], { REGISTRY_DATABASE_URL: registry.url })
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, /applied by all 2 proxies/)
  t.equal(await statusOf(limited, 'acme.example'), 403, 'the read-only proxy applied the change before --wait returned')

  // The read-only role sees the other role's session names too (pg_stat_activity hides only other columns).
  const seen = await registryStatus(readOnly.toString())
  t.same(seen.feeds.map((f) => [f.proxy, f.lag]).sort(), [[proxyLabel(limited), 0], [proxyLabel(full), 0]].sort(), 'registry status as the read-only role lists both proxies, current')
})
