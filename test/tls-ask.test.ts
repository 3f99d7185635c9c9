/**
 * The on-demand TLS ask (src/proxy/tls-ask.ts): the decision as one table over a real index, then
 * a running proxy on real sockets: the ops listener in Caddy's form (`?domain=`) and kamal-proxy's
 * (`?host=`), the traffic listener at traffic.tlsAskPath with an arbitrary Host (kamal-proxy's
 * path form), the metric, and no registry traffic per ask (the registry connections go through a
 * relay that counts bytes, then the relay cuts them and asks still answer from memory).
 */
import t from 'tap'
import { request } from 'undici'
import { loadConfig } from '../src/config/load.js'
import type { RegistryView } from '../src/proxy/decide.js'
import { answerTlsAsk, tlsAskOptions, TLS_ASK_PATH, type TlsAskAnswer } from '../src/proxy/tls-ask.js'
import { buildIndex } from '../src/registry/index.js'
import type { TenantRow } from '../src/registry/store.js'
import { startTcpRelay } from './helpers/tcp-relay.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const row = (id: number, slug: string, extra: Partial<TenantRow> = {}): TenantRow =>
  ({ id, slug, databaseName: `${slug}_db`, databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: null, ...extra })

const index = buildIndex({
  version: 3,
  registryId: 'r',
  tenants: [row(1, 'acme'), row(2, 'sleepy', { state: 'suspended' }), row(3, 'fixing', { state: 'maintenance' }), row(4, 'lost', { upstream: 'nowhere' }), row(5, 'wild'), row(6, 'moving', { holdMs: 30_000 })],
  domains: [
    { hostname: 'acme.example.com', tenantId: 1 },
    { hostname: 'shop.acme-corp.com', tenantId: 1 },
    { hostname: 'sleepy.example.com', tenantId: 2 },
    { hostname: 'fixing.example.com', tenantId: 3 },
    { hostname: 'lost.example.com', tenantId: 4 },
    { hostname: 'moving.example.com', tenantId: 6 }
  ]
}, { defaultHost: 'db.internal', defaultPort: 5432 })

const ROUTING = { wwwFallback: true, wildcardDomains: ['apps.example.net'], reservedLabels: ['www', 'admin'], passthroughHosts: ['signup.example.com'] }
const OPTIONS = tlsAskOptions(ROUTING, 5)
const SYNCED: RegistryView = { index, synced: true }
const UNSYNCED: RegistryView = { index, synced: false }

type Expect = Pick<TlsAskAnswer, 'result' | 'status'> & Partial<Pick<TlsAskAnswer, 'domain' | 'code' | 'retryAfterS'>> & { detail?: RegExp }

const CASES: Array<[string, string, RegistryView, Expect]> = [
  ['a custom domain of an active tenant (Caddy)', '/ask?domain=shop.acme-corp.com', SYNCED, { result: 'allowed', status: 200, domain: 'shop.acme-corp.com', code: null }],
  ['the same in kamal-proxy\'s form', '/ask?host=shop.acme-corp.com', SYNCED, { result: 'allowed', status: 200, domain: 'shop.acme-corp.com' }],
  ['canonicalized like Host: case, port, trailing dot', '/ask?domain=SHOP.Acme-Corp.com.%3A443', SYNCED, { result: 'allowed', status: 200, domain: 'shop.acme-corp.com' }],
  ['www. of a tenant domain', '/ask?domain=www.shop.acme-corp.com', SYNCED, { result: 'allowed', status: 200, domain: 'www.shop.acme-corp.com' }],
  ['wildcard: the first label is an active tenant\'s slug', '/ask?domain=wild.apps.example.net', SYNCED, { result: 'allowed', status: 200 }],
  ['a pass-through host', '/ask?domain=signup.example.com', SYNCED, { result: 'allowed', status: 200 }],
  ['a tenant naming a pool this proxy lacks: still its domain', '/ask?domain=lost.example.com', SYNCED, { result: 'allowed', status: 200 }],
  ['kamal-proxy keeps the configured query and sets host', '/ask?token=x&host=acme.example.com', SYNCED, { result: 'allowed', status: 200 }],
  ['a paused tenant (tenants pause, a move\'s cut-over): still its domain', '/ask?domain=moving.example.com', SYNCED, { result: 'allowed', status: 200, domain: 'moving.example.com' }],
  ['an unknown domain', '/ask?domain=evil.example.org', SYNCED, { result: 'denied', status: 404, code: 'TENANT_PROXY_ERR_UNKNOWN_HOST', domain: 'evil.example.org' }],
  ['wildcard: an unknown slug', '/ask?domain=nobody.apps.example.net', SYNCED, { result: 'denied', status: 404 }],
  ['wildcard: a reserved label', '/ask?domain=admin.apps.example.net', SYNCED, { result: 'denied', status: 404 }],
  ['wildcard: two labels deep', '/ask?domain=a.wild.apps.example.net', SYNCED, { result: 'denied', status: 404 }],
  ['the wildcard base domain itself', '/ask?domain=apps.example.net', SYNCED, { result: 'denied', status: 404 }],
  ['www. fallback does not recurse', '/ask?domain=www.www.shop.acme-corp.com', SYNCED, { result: 'denied', status: 404 }],
  ['a suspended tenant', '/ask?domain=sleepy.example.com', SYNCED, { result: 'denied', status: 403, code: 'TENANT_PROXY_ERR_TENANT_SUSPENDED' }],
  ['a tenant in maintenance: a 4xx, not traffic\'s 503', '/ask?domain=fixing.example.com', SYNCED, { result: 'denied', status: 403, code: 'TENANT_PROXY_ERR_TENANT_MAINTENANCE', retryAfterS: undefined }],
  ['out of sync: a known domain is still allowed', '/ask?domain=shop.acme-corp.com', UNSYNCED, { result: 'allowed', status: 200 }],
  ['out of sync: a known suspended one still denied', '/ask?domain=sleepy.example.com', UNSYNCED, { result: 'denied', status: 403 }],
  ['out of sync: an unknown domain is "ask again", not "no"', '/ask?domain=new.example.org', UNSYNCED, { result: 'unavailable', status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', retryAfterS: 5 }],
  ['nothing loaded yet', '/ask?domain=shop.acme-corp.com', { index: null, synced: false }, { result: 'unavailable', status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', retryAfterS: 5 }],
  ['no parameter', '/ask', SYNCED, { result: 'invalid', status: 400, code: 'TENANT_PROXY_ERR_BAD_REQUEST', domain: null, detail: /exactly one query parameter.*got 0/ }],
  ['another parameter only', '/ask?name=shop.acme-corp.com', SYNCED, { result: 'invalid', status: 400, detail: /got 0/ }],
  ['both domain and host', '/ask?domain=shop.acme-corp.com&host=shop.acme-corp.com', SYNCED, { result: 'invalid', status: 400, detail: /got 2/ }],
  ['domain twice', '/ask?domain=evil.example.org&domain=shop.acme-corp.com', SYNCED, { result: 'invalid', status: 400, detail: /got 2/ }],
  ['empty', '/ask?domain=', SYNCED, { result: 'invalid', status: 400, detail: /empty host/ }],
  ['an IP address', '/ask?domain=127.0.0.1', SYNCED, { result: 'invalid', status: 400, detail: /IP literal/ }],
  ['an IPv6 literal', '/ask?host=%5B::1%5D', SYNCED, { result: 'invalid', status: 400, detail: /IP literal/ }],
  ['a name with a space', '/ask?domain=shop+acme-corp.com', SYNCED, { result: 'invalid', status: 400, detail: /whitespace/ }],
  ['malformed percent-encoding', '/ask?domain=shop%zz.com', SYNCED, { result: 'invalid', status: 400 }],
  ['a label over 63 bytes', `/ask?domain=${'a'.repeat(64)}.example.com`, SYNCED, { result: 'invalid', status: 400, detail: /63/ }],
  ['invalid is checked before the index: nothing loaded', '/ask?domain=a..b', { index: null, synced: false }, { result: 'invalid', status: 400, detail: /empty label/ }]
]

t.test('answerTlsAsk(): every rule', async (t) => {
  for (const [name, url, view, expect] of CASES) {
    const a = answerTlsAsk(url, view, OPTIONS)
    t.equal(a.result, expect.result, `${name}: ${expect.result}`)
    t.equal(a.status, expect.status, `${name}: status ${expect.status}`)
    if ('domain' in expect) t.equal(a.domain, expect.domain, `${name}: domain`)
    if ('code' in expect) t.equal(a.code, expect.code, `${name}: code`)
    if ('retryAfterS' in expect) t.equal(a.retryAfterS, expect.retryAfterS, `${name}: Retry-After`)
    if (expect.detail !== undefined) t.match(a.detail, expect.detail, `${name}: detail`)
    t.ok(a.status === 200 || (a.status >= 400 && a.status !== 500), `${name}: 200 or a refusal, never a server error`)
  }
})

t.test('traffic.tlsAskPath: off by default, validated, never the health path', async (t) => {
  t.equal(loadConfig({ env: {} }).traffic.tlsAskPath, '')
  t.equal(loadConfig({ env: { TENANT_PROXY_TRAFFIC_TLS_ASK_PATH: TLS_ASK_PATH } }).traffic.tlsAskPath, TLS_ASK_PATH)
  for (const [value, reason] of [['tls-ask', /must be an absolute URL path/], ['/up', /must differ from traffic\.healthPath/], ['/a//b', /must not contain empty/], ['/a/../b', /must not contain empty/], ['/tls/:domain', /without ":" or "\*"/], ['/tls/*', /without ":" or "\*"/], ['/ask?x=1', /must be an absolute URL path/]] as const) {
    t.throws(() => loadConfig({ env: { TENANT_PROXY_TRAFFIC_TLS_ASK_PATH: value } }), { message: reason }, `${value} refused`)
  }
})

interface Asked { status: number, code: string | null, allowed: boolean, retryAfter: string | null }

async function ask (url: string, host?: string): Promise<Asked> {
  const res = await request(url, host === undefined ? {} : { headers: { host } })
  const body = await res.body.json() as { allowed?: boolean, error?: { code: string } }
  const retryAfter = res.headers['retry-after']
  return { status: res.statusCode, code: body.error?.code ?? null, allowed: body.allowed === true, retryAfter: typeof retryAfter === 'string' ? retryAfter : null }
}

async function askCounts (opsUrl: string): Promise<Record<string, number>> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  return Object.fromEntries([...text.matchAll(/^tenant_proxy_tls_ask_total\{result="([a-z]+)"\} (\d+)$/gm)].map((m) => [m[1] as string, Number(m[2])]))
}

t.test('a running proxy answers on the ops listener (both forms) and at traffic.tlsAskPath for any Host; counted', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com', 'shop.acme-corp.com'] },
    { slug: 'sleepy', domains: ['sleepy.example.com'], state: 'suspended' }
  ])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_TLS_ASK_PATH: '/.well-known/tls-ask' }))
  t.same(await askCounts(proxy.opsUrl), { allowed: 0, denied: 0, invalid: 0, unavailable: 0 }, 'every series at zero from the first scrape')

  const ops = `${proxy.opsUrl}${TLS_ASK_PATH}`
  t.match(await ask(`${ops}?domain=shop.acme-corp.com`), { status: 200, allowed: true }, 'Caddy\'s form')
  t.match(await ask(`${ops}?host=shop.acme-corp.com`), { status: 200, allowed: true }, 'kamal-proxy\'s form')
  t.match(await ask(`${ops}?domain=evil.example.org`), { status: 404, code: 'TENANT_PROXY_ERR_UNKNOWN_HOST' })
  t.match(await ask(`${ops}?domain=sleepy.example.com`), { status: 403, code: 'TENANT_PROXY_ERR_TENANT_SUSPENDED' })
  t.match(await ask(`${ops}?domain=10.0.0.1`), { status: 400, code: 'TENANT_PROXY_ERR_BAD_REQUEST' })
  const head = await request(`${ops}?domain=shop.acme-corp.com`, { method: 'HEAD' })
  await head.body.dump()
  t.equal(head.statusCode, 200, 'HEAD answers like GET')

  // kamal-proxy's path form: its probe goes through the app's route with Host = the name checked,
  // so the Host header says nothing; only the query counts.
  const traffic = `${proxy.url}/.well-known/tls-ask`
  t.match(await ask(`${traffic}?host=shop.acme-corp.com`, 'shop.acme-corp.com'), { status: 200, allowed: true }, 'Host = the name checked')
  t.match(await ask(`${traffic}?host=shop.acme-corp.com`, 'not-a-tenant.example'), { status: 200, allowed: true }, 'Host of no tenant: still the query')
  t.match(await ask(`${traffic}?host=evil.example.org`, 'acme.example.com'), { status: 404, code: 'TENANT_PROXY_ERR_UNKNOWN_HOST' }, 'Host of a tenant does not allow another name')
  t.match(await ask(`${traffic}?domain=sleepy.example.com`, '127.0.0.1'), { status: 403 }, 'answered before Host is even checked')
  t.equal(upstream.seen.length, 0, 'no ask reached the app')

  t.same(await askCounts(proxy.opsUrl), { allowed: 5, denied: 4, invalid: 1, unavailable: 0 })

  // The ops path is not on the traffic listener: there it is tenant traffic like any other.
  const viaTraffic = await request(`${proxy.url}${TLS_ASK_PATH}?domain=shop.acme-corp.com`, { headers: { host: 'acme.example.com' } })
  await viaTraffic.body.dump()
  t.equal(upstream.seen.length, 1, 'the ops path on the traffic listener went to the app')
  t.equal(upstream.seen[0]?.url, `${TLS_ASK_PATH}?domain=shop.acme-corp.com`)
  t.same(await askCounts(proxy.opsUrl), { allowed: 5, denied: 4, invalid: 1, unavailable: 0 }, 'and was not counted as an ask')
})

t.test('without traffic.tlsAskPath the traffic listener has no ask path', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const res = await request(`${proxy.url}/.well-known/tls-ask?host=acme.example.com`, { headers: { host: 'acme.example.com' } })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(upstream.seen[0]?.url, '/.well-known/tls-ask?host=acme.example.com', 'the app gets the path')
  const unknown = await ask(`${proxy.url}/.well-known/tls-ask?host=acme.example.com`, 'evil.example.org')
  t.equal(unknown.code, 'TENANT_PROXY_ERR_UNKNOWN_HOST', 'an unknown Host is refused as traffic, not asked about')
  t.same(await askCounts(proxy.opsUrl), { allowed: 0, denied: 0, invalid: 0, unavailable: 0 })
})

t.test('asks never reach the registry: no bytes per ask, and answers from memory once it is gone', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com', 'shop.acme-corp.com'] },
    { slug: 'sleepy', domains: ['sleepy.example.com'], state: 'suspended' }
  ])
  const target = new URL(registry.url)
  const relay = await startTcpRelay(t, { host: target.hostname, port: Number(target.port) })
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(relay.url(registry.url), upstream.origin, {
    TENANT_PROXY_TRAFFIC_TLS_ASK_PATH: '/tls-ask',
    TENANT_PROXY_REGISTRY_RECONNECT_MIN_MS: '20',
    TENANT_PROXY_REGISTRY_RECONNECT_MAX_MS: '100'
  }))
  t.equal(proxy.state.synced, true)
  const ops = `${proxy.opsUrl}${TLS_ASK_PATH}`

  // The proxy's last start-up step on the registry: reporting its version in application_name.
  const version = proxy.state.index?.version
  await until(async () => (await registry.pool.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '% feed v=' || $1 || ' %'", [String(version)])).rowCount === 1 ? true : undefined, 'the proxy to report its version')
  // Periodic version checks are off (testConfig), so from here the registry connections are idle
  // unless an ask uses them. (An idle pool connection may still close, which sends a byte or
  // five; a query per ask would show on a connection that stays open, or open a new one.)
  const before = relay.connections.map((c) => ({ ...c }))
  for (let i = 0; i < 60; i++) {
    const domain = ['shop.acme-corp.com', 'sleepy.example.com', `unknown-${i}.example.org`][i % 3] as string
    const a = await ask(i % 2 === 0 ? `${ops}?domain=${domain}` : `${proxy.url}/tls-ask?host=${domain}`, domain)
    t.equal(a.status, [200, 403, 404][i % 3], `ask ${i} (${domain})`)
  }
  t.equal(relay.connections.length, before.length, '60 asks opened no registry connection')
  t.same(relay.connections.filter((c) => c.open).map((c) => c.toServer), before.filter((_c, i) => relay.connections[i]?.open === true).map((c) => c.toServer), '60 asks, not one byte sent to the registry')
  const bytesBefore = { ...relay.bytes }

  // The relay does carry the registry's traffic: a change reaches the proxy through it, and the
  // ask follows the change.
  await registry.store.addDomain('acme', 'new.acme-corp.com', 'alias')
  await until(async () => (await ask(`${ops}?domain=new.acme-corp.com`)).status === 200 ? true : undefined, 'the new domain to be allowed')
  t.ok(relay.bytes.toClient > bytesBefore.toClient, 'the change came through the relay')

  await relay.cut()
  await until(() => proxy.state.synced ? undefined : true, 'the proxy to notice the registry is gone')
  const counts = await askCounts(proxy.opsUrl)
  t.match(await ask(`${ops}?domain=shop.acme-corp.com`), { status: 200, allowed: true }, 'a known domain is still allowed, from memory')
  t.match(await ask(`${ops}?domain=new.acme-corp.com`), { status: 200 }, 'including the one added live')
  t.match(await ask(`${ops}?domain=sleepy.example.com`), { status: 403 }, 'a suspended one still denied')
  t.match(await ask(`${ops}?domain=later.example.org`), { status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', retryAfter: '5' }, 'an unknown one: ask again later')
  t.match(await ask(`${proxy.url}/tls-ask?host=later.example.org`, 'shop.acme-corp.com'), { status: 503 }, 'on the traffic listener too')
  const after = await askCounts(proxy.opsUrl)
  t.same({ allowed: (after.allowed ?? 0) - (counts.allowed ?? 0), denied: (after.denied ?? 0) - (counts.denied ?? 0), unavailable: (after.unavailable ?? 0) - (counts.unavailable ?? 0) }, { allowed: 2, denied: 1, unavailable: 2 })
})
