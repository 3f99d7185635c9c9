/**
 * The ops descriptor API over real sockets, against a running proxy and a real registry: a token
 * holder gets the descriptor a request to the tenant's primary domain would carry (verified with
 * the proxy's key set), in every state; refused callers get 401 and nothing is issued; without
 * tokens the API does not exist (404); registry changes reach the next descriptor; the tenant
 * list pages in slug order; every call is counted and the issuing one logged without the token.
 *
 * Guards: src/ops/descriptor-api.ts, DescriptorCache.issue (src/descriptor/sign.ts), the primary
 * domain and sorted slugs of the index (src/registry/index.ts), ops.descriptorApi.tokens.
 */
import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { get as httpGet } from 'node:http'
import { request } from 'undici'
import { createVerifier, isDescriptorError } from '@tenant-proxy/verify'
import { FailureLimiter } from '../src/ops/failure-limiter.js'
import { MAX_SCAN, pageOfTenants, parseListQuery } from '../src/ops/descriptor-api.js'
import { buildIndex, type RegistryIndex } from '../src/registry/index.js'
import type { TenantState } from '../src/registry/names.js'
import type { TenantRow } from '../src/registry/store.js'
import { runCli } from './helpers/cli.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const TOKEN = `tok-${randomBytes(24).toString('hex')}`
const OTHER_TOKEN = randomBytes(32).toString('base64url')

interface Issued { tenant: string, state: TenantState, host: string, descriptor: string, expiresAt: string }
interface Answer<T> { status: number, headers: Record<string, string | string[] | undefined>, body: T }
interface ErrorBody { error: { code: string, message: string, status: number } }

async function get<T = unknown> (url: string, headers: Record<string, string> = {}): Promise<Answer<T>> {
  const res = await request(url, { headers })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: (text === '' ? null : JSON.parse(text)) as T }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/** The value of one series in the proxy's /metrics. */
async function series (opsUrl: string, name: string, labels = ''): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels === '' ? '' : `{${labels}}`} `))
  if (line === undefined) throw new Error(`no series ${name}{${labels}}`)
  return Number(line.split(' ')[1])
}

const apiCount = async (opsUrl: string, endpoint: string, result: string): Promise<number> =>
  await series(opsUrl, 'tenant_proxy_ops_api_requests_total', `endpoint="${endpoint}",result="${result}"`)

function decodePart (token: string, i: number): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[i] ?? '', 'base64url').toString()) as Record<string, unknown>
}

t.test('a token holder gets the request descriptor of the primary domain; refused callers get 401 and nothing', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com', 'www.acme.example.com'], databaseHost: 'db1.internal', databasePort: 6432 },
    { slug: 'globex', domains: ['globex.example.com'], state: 'suspended' },
    { slug: 'initech', domains: ['initech.example.com', 'initech.example.org'], state: 'maintenance' }
  ])
  const upstream = await startUpstream(t)
  const config = testConfig(registry.url, upstream.origin, { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: `${TOKEN},${OTHER_TOKEN}` })
  const logLines: string[] = []
  const proxy = await startTestProxy(t, config, logLines)
  const verifier = createVerifier({ keys: proxy.keyring.jwks() }, { issuer: config.deploymentId, audience: config.descriptor.audience })
  const api = (slug: string): string => `${proxy.opsUrl}/v1/tenants/${slug}/descriptor`
  const signatures = async (): Promise<number> => await series(proxy.opsUrl, 'tenant_proxy_descriptor_signatures_total')

  // A request through the proxy first: the API hands out the very token that request carried.
  const routed = await request(`${proxy.url}/x`, { headers: { host: 'www.acme.example.com' } })
  await routed.body.dump()
  await request(`${proxy.url}/x`, { headers: { host: 'acme.example.com' } }).then(async (r) => await r.body.dump())
  const carried = String(upstream.seen[1]?.headers['x-tenant-descriptor'])
  const before = await signatures()
  const ok = await get<Issued>(api('acme'), bearer(TOKEN))
  t.equal(ok.status, 200)
  t.equal(ok.headers['cache-control'], 'no-store')
  t.match(ok.headers['content-type'], /^application\/json/)
  t.same(Object.keys(ok.body), ['tenant', 'state', 'host', 'descriptor', 'expiresAt'])
  t.match(ok.body, { tenant: 'acme', state: 'active', host: 'acme.example.com' })
  t.equal(ok.body.descriptor, carried, 'the descriptor a request to the primary domain carries now, from the same cache')
  t.equal(await signatures(), before, 'nothing signed for it')
  const verified = await verifier.verify(ok.body.descriptor, ok.body.host)
  t.match(verified, { tenant: 'acme', host: 'acme.example.com', db: { name: 'acme', host: 'db1.internal', port: 6432 }, epoch: 1 })
  t.equal(new Date(verified.claims.exp * 1000).toISOString(), ok.body.expiresAt, 'expiresAt is the exp claim')
  const elsewhere = await verifier.verify(ok.body.descriptor, 'www.acme.example.com').then(() => null, (err: unknown) => err)
  t.match(elsewhere, { reason: 'host_mismatch' }, 'bound to the primary domain, like a request descriptor')

  // Tenants without traffic: signed on the spot (not cached), in every state, with the same form.
  for (const [slug, state, host] of [['globex', 'suspended', 'globex.example.com'], ['initech', 'maintenance', 'initech.example.com']] as const) {
    const signed = await signatures()
    const r = await get<Issued>(api(slug), bearer(OTHER_TOKEN))
    t.equal(r.status, 200, `${slug}: issued`)
    t.match(r.body, { tenant: slug, state, host }, `${slug}: its state is in the answer`)
    const d = await verifier.verify(r.body.descriptor, host)
    t.match(d, { tenant: slug, db: { name: slug, host: 'localhost', port: 5432 }, epoch: 1 })
    t.same(decodePart(r.body.descriptor, 0), decodePart(carried, 0), `${slug}: the JOSE header of a request descriptor`)
    t.same(Object.keys(decodePart(r.body.descriptor, 1)), Object.keys(decodePart(carried, 1)), `${slug}: the claims of a request descriptor`)
    const again = await get<Issued>(api(slug), bearer(OTHER_TOKEN))
    t.equal(again.status, 200)
    t.equal(await signatures(), signed + 2, `${slug}: each call signs; the API leaves no token per tenant in the cache`)
  }

  // Refused callers: 401 with a Bearer challenge, nothing signed, nothing issued, no log of it.
  const signedBefore = await signatures()
  const okBefore = await apiCount(proxy.opsUrl, 'descriptor', 'ok')
  const refusals: Array<[string, Record<string, string>, string]> = [
    ['no Authorization', {}, 'Bearer realm="tenant-proxy"'],
    ['wrong token', bearer(`x${TOKEN.slice(1)}`), 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['a prefix of the token', bearer(TOKEN.slice(0, -1)), 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['the token and more', bearer(`${TOKEN}A`), 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['upper-cased token', bearer(TOKEN.toUpperCase()), 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['Basic scheme', { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` }, 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['two tokens', { authorization: `Bearer ${TOKEN} ${OTHER_TOKEN}` }, 'Bearer realm="tenant-proxy", error="invalid_token"'],
    ['token without scheme', { authorization: TOKEN }, 'Bearer realm="tenant-proxy", error="invalid_token"']
  ]
  for (const [what, headers, challenge] of refusals) {
    const r = await get<ErrorBody>(api('acme'), headers)
    t.equal(r.status, 401, `${what}: 401`)
    t.equal(r.headers['www-authenticate'], challenge, `${what}: the challenge`)
    t.match(r.body, { error: { code: 'TENANT_PROXY_ERR_OPS_UNAUTHORIZED', status: 401 } }, `${what}: catalogue error`)
    t.notOk(JSON.stringify(r.body).includes('descriptor"'), `${what}: no descriptor in the answer`)
  }
  t.equal(await signatures(), signedBefore, 'nothing signed for refused callers')
  t.equal(await apiCount(proxy.opsUrl, 'descriptor', 'ok'), okBefore, 'nothing issued')
  t.equal(await apiCount(proxy.opsUrl, 'descriptor', 'unauthorized'), refusals.length, 'each refusal counted')
  // A lower-case scheme is the same scheme (RFC 9110 section 11.1).
  t.equal((await get(api('acme'), { authorization: `bearer ${TOKEN}` })).status, 200, 'scheme case-insensitive')

  // Unknown tenants: 404 for token holders only (a refused caller learns nothing about slugs).
  const unknown = await get<ErrorBody>(api('nope'), bearer(TOKEN))
  t.equal(unknown.status, 404)
  t.match(unknown.body, { error: { code: 'TENANT_PROXY_ERR_TENANT_NOT_FOUND', message: 'no tenant nope' } })
  const odd = await get<ErrorBody>(api('%3Cscript%3E'), bearer(TOKEN))
  t.match(odd, { status: 404, body: { error: { code: 'TENANT_PROXY_ERR_TENANT_NOT_FOUND', message: 'no tenant (not a slug)' } } }, 'only slugs are echoed')
  t.equal((await get(api('nope'))).status, 401, 'without a token: 401, not 404')
  t.equal(await apiCount(proxy.opsUrl, 'descriptor', 'not_found'), 2)

  // Never on the traffic port: there the path is the tenant app's.
  const viaTraffic = await get<{ url: string }>(`${proxy.url}/v1/tenants/acme/descriptor`, { host: 'acme.example.com', ...bearer(TOKEN) })
  t.match(viaTraffic, { status: 200, body: { url: '/v1/tenants/acme/descriptor' } }, 'the app answered, not the ops API')

  // One info line per issued descriptor: slug, caller, token fingerprint; never a token.
  await until(() => logLines.filter((l) => l.includes('issued a descriptor outside a request')).length >= 6 ? true : undefined, 'the issue log lines')
  const issued = logLines.filter((l) => l.includes('issued a descriptor outside a request')).map((l) => JSON.parse(l) as Record<string, unknown>)
  const fingerprint = (token: string): string => createHash('sha256').update(token).digest('hex').slice(0, 8)
  t.match(issued[0], { level: 30, tenant: 'acme', host: 'acme.example.com', state: 'active', epoch: 1, peer: '127.0.0.1', tokenFingerprint: fingerprint(TOKEN) })
  t.match(issued[1], { tenant: 'globex', tokenFingerprint: fingerprint(OTHER_TOKEN) })
  t.equal(issued.length, 6, 'one line per issued descriptor')
  const refusedLines = logLines.filter((l) => l.includes('ops API call refused'))
  t.equal(refusedLines.length, refusals.length + 1, 'one line per refusal')
  const all = logLines.join('\n')
  for (const secret of [TOKEN, OTHER_TOKEN, TOKEN.slice(0, 16), OTHER_TOKEN.slice(0, 16)]) t.notOk(all.includes(secret), 'no token (or part of one) in the logs')
  for (const d of [carried]) t.notOk(all.includes(d), 'no descriptor in the logs')
})

t.test('without tokens the API does not exist: 404 on both endpoints, counted', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  for (const path of ['/v1/tenants/acme/descriptor', '/v1/tenants']) {
    for (const headers of [{}, bearer(TOKEN)]) {
      const r = await get<ErrorBody>(`${proxy.opsUrl}${path}`, headers)
      t.equal(r.status, 404, `${path}: 404`)
      t.match(r.body, { error: { code: 'TENANT_PROXY_ERR_OPS_API_DISABLED' } })
      t.equal(r.headers['www-authenticate'], undefined, 'no challenge: there is nothing to authenticate to')
    }
  }
  t.equal(await apiCount(proxy.opsUrl, 'descriptor', 'disabled'), 2)
  t.equal(await apiCount(proxy.opsUrl, 'tenants', 'disabled'), 2)
  t.equal(await series(proxy.opsUrl, 'tenant_proxy_descriptor_signatures_total'), 0, 'nothing signed')
})

t.test('registry changes reach the next descriptor: moved database (new epoch), new primary domain, removal', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }])
  const upstream = await startUpstream(t)
  const config = testConfig(registry.url, upstream.origin, { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: JSON.stringify([TOKEN]) })
  const proxy = await startTestProxy(t, config)
  const verifier = createVerifier({ keys: proxy.keyring.jwks() }, { issuer: config.deploymentId, audience: config.descriptor.audience })
  const issue = async (slug: string): Promise<Answer<Issued>> => await get<Issued>(`${proxy.opsUrl}/v1/tenants/${slug}/descriptor`, bearer(TOKEN))
  // Traffic first, so the cache holds a token the change must retire.
  await request(`${proxy.url}/`, { headers: { host: 'acme.example.com' } }).then(async (r) => await r.body.dump())
  const first = await verifier.verify((await issue('acme')).body.descriptor, 'acme.example.com')
  t.match(first, { db: { host: 'localhost', port: 5432 }, epoch: 1 })

  // The CLI, as an operator moves a tenant.
  const moved = await runCli(['tenants', 'update', 'acme', '--db-host', 'db2.internal', '--db-port', '6543', '--wait'], { REGISTRY_DATABASE_URL: registry.url })
  t.equal(moved.code, 0, moved.stderr)
  const after = await issue('acme')
  const d = await verifier.verify(after.body.descriptor, after.body.host)
  t.match(d, { tenant: 'acme', db: { name: 'acme', host: 'db2.internal', port: 6543 }, epoch: 2 }, 'right after the write returns (--wait): the new location and epoch')

  // A new primary domain becomes the descriptor's host.
  await registry.store.addDomain('acme', 'acme.example.org', 'primary')
  const rehosted = await until(async () => {
    const r = await issue('acme')
    return r.body.host === 'acme.example.org' ? r : undefined
  }, 'the new primary domain')
  t.match(await verifier.verify(rehosted.body.descriptor, 'acme.example.org'), { tenant: 'acme', host: 'acme.example.org', epoch: 2 })

  // A writer other than the CLI moves acme's primary domain to globex as an alias: acme has no
  // primary domain, so no host to issue for (503 until it gets one), and globex keeps its own.
  await registry.pool.query("UPDATE tenant_proxy.domains SET tenant_id = (SELECT id FROM tenant_proxy.tenants WHERE slug = 'globex'), kind = 'alias' WHERE hostname = 'acme.example.org'")
  const hostless = await until(async () => {
    const r = await issue('acme')
    return r.status === 503 ? r as unknown as Answer<ErrorBody> : undefined
  }, 'acme without a primary domain')
  t.match(hostless.body, { error: { code: 'TENANT_PROXY_ERR_OPS_NO_PRIMARY_DOMAIN' } })
  t.ok(Number(hostless.headers['retry-after']) > 0, 'Retry-After')
  t.equal((await issue('globex')).body.host, 'globex.example.com', 'globex keeps its primary domain')
  await registry.store.addDomain('acme', 'acme.example.net', 'primary')
  await until(async () => (await issue('acme')).body.host === 'acme.example.net' ? true : undefined, 'acme with a primary domain again')
  t.ok(await apiCount(proxy.opsUrl, 'descriptor', 'unavailable') >= 1, 'counted as unavailable')

  // The store's state change and a removal.
  await registry.store.updateTenant('globex', { state: 'maintenance' })
  await until(async () => (await issue('globex')).body.state === 'maintenance' ? true : undefined, 'globex in maintenance')
  await registry.store.removeTenant('globex')
  const gone = await until(async () => {
    const r = await issue('globex')
    return r.status === 404 ? r : undefined
  }, 'globex removed')
  t.match(gone.body, { error: { code: 'TENANT_PROXY_ERR_TENANT_NOT_FOUND' } })
})

t.test('the tenant list pages over 2,500 tenants in slug order, each exactly once, and follows changes', async (t) => {
  const registry = await testRegistry(t)
  // Slugs whose byte order differs from a linguistic collation's ('-' sorts before digits and letters).
  const slugs = Array.from({ length: 2_500 }, (_, i) => i % 3 === 0 ? `t-${(i * 7919) % 10_007}` : i % 3 === 1 ? `t${(i * 31) % 9_973}-x` : `a${i}`)
  t.equal(new Set(slugs).size, slugs.length, 'distinct slugs')
  await registry.pool.query(`
    WITH s AS (SELECT slug, ord FROM unnest($1::text[]) WITH ORDINALITY AS u(slug, ord))
    INSERT INTO tenant_proxy.tenants (slug, database_name, state)
    SELECT slug, 'db_' || ord, CASE WHEN ord % 25 = 0 THEN 'maintenance' ELSE 'active' END FROM s`, [slugs])
  await registry.pool.query(`
    INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.example.com', id, 'primary' FROM tenant_proxy.tenants;
    INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.example.net', id, 'alias' FROM tenant_proxy.tenants`)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: TOKEN }))
  type Page = { tenants: Array<{ slug: string, state: TenantState, host: string }>, next: string | null }
  const list = async (query: string): Promise<Answer<Page>> => await get<Page>(`${proxy.opsUrl}/v1/tenants${query}`, bearer(TOKEN))
  const walk = async (params: string, from: string | null = null): Promise<{ pages: Page[], seen: Page['tenants'] }> => {
    const pages: Page[] = []
    let after: string | null = from
    for (let n = 0; n < 10; n++) {
      const r: Answer<Page> = await list(`?${params}${after === null ? '' : `&after=${after}`}`)
      t.equal(r.status, 200)
      t.equal(r.headers['cache-control'], 'no-store')
      pages.push(r.body)
      after = r.body.next
      if (after === null) break
    }
    return { pages, seen: pages.flatMap((p) => p.tenants) }
  }

  const expected = [...slugs].sort()
  const { pages, seen } = await walk('limit=1000')
  t.same(pages.map((p) => p.tenants.length), [1000, 1000, 500], 'three pages')
  t.same(pages.map((p) => p.next), [expected[999], expected[1999], null], 'next: the last slug of the page, null at the end')
  t.same(seen.map((x) => x.slug), expected, 'every tenant exactly once, in byte order')
  t.ok(seen.every((x) => x.host === `${x.slug}.example.com`), 'host: the primary domain')
  t.equal(seen.filter((x) => x.state === 'maintenance').length, 100)

  const first = await list('')
  t.equal(first.body.tenants.length, 500, 'default limit 500')
  const maintenance = await walk('state=maintenance&limit=30')
  t.same(maintenance.seen.map((x) => x.slug), seen.filter((x) => x.state === 'maintenance').map((x) => x.slug), 'the state filter, paged')
  t.ok(maintenance.seen.every((x) => x.state === 'maintenance'))

  // Changes between pages: a tenant added after the cursor appears, one removed before it is reached does not.
  const page1 = await list('?limit=1000')
  const cursor = page1.body.next as string
  const added = `${cursor}0` // sorts right after the cursor
  const removed = expected[1500] as string
  await registry.store.addTenant({ slug: added, domains: [`${added}.example.com`], databaseName: 'added_db', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {} })
  await registry.store.removeTenant(removed)
  await until(() => proxy.state.index?.bySlug.has(added) === true && proxy.state.index.bySlug.has(removed) === false ? true : undefined, 'the changes applied')
  const rest = await walk('limit=1000', cursor)
  const restSlugs = rest.seen.map((x) => x.slug)
  t.equal(restSlugs[0], added, 'the new tenant, in its place')
  t.notOk(restSlugs.includes(removed), 'the removed tenant is gone')
  t.same(restSlugs, [...expected.slice(1000).filter((s) => s !== removed), added].sort(), 'the rest, in order, each once')

  // Bad queries: 400, counted.
  for (const q of ['?limit=0', '?limit=1001', '?limit=abc', '?limit=1.5', '?state=bogus', '?after=UPPER', '?after=', '?status=active', '?limit=1&limit=2']) {
    const r = await get<ErrorBody>(`${proxy.opsUrl}/v1/tenants${q}`, bearer(TOKEN))
    t.equal(r.status, 400, `${q}: 400`)
    t.match(r.body, { error: { code: 'TENANT_PROXY_ERR_BAD_REQUEST' } })
  }
  t.equal(await apiCount(proxy.opsUrl, 'tenants', 'bad_request'), 9)
  t.equal((await list('?after=zzzz')).body.next, null, 'past the last slug: empty, next null')
  t.equal((await get(`${proxy.opsUrl}/v1/tenants`)).status, 401, 'the list needs a token too')
  t.equal(await apiCount(proxy.opsUrl, 'tenants', 'unauthorized'), 1)
})

t.test('refused tokens are limited per address: 429 before the token is even compared', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: TOKEN }))
  const url = `${proxy.opsUrl}/v1/tenants/acme/descriptor`
  const statuses: number[] = []
  // Burst 10, one forgiven per second: at most one more 401 per second the loop takes.
  for (let i = 0; i < 40 && !statuses.includes(429); i++) statuses.push((await get(url, bearer('x'.repeat(40)))).status)
  t.ok(statuses.slice(0, 10).every((s) => s === 401), 'the first ten are 401')
  t.equal(statuses.at(-1), 429, 'then 429')
  const limited = await get<ErrorBody>(url, bearer('y'.repeat(40)))
  t.equal(limited.status, 429)
  t.match(limited.body, { error: { code: 'TENANT_PROXY_ERR_OPS_RATE_LIMITED' } })
  t.match(limited.headers['retry-after'], /^[1-9]\d*$/, 'Retry-After')
  t.ok(await apiCount(proxy.opsUrl, 'descriptor', 'rate_limited') >= 2)
  // Another address with the right token is not affected (node:http, whose localAddress undici lacks).
  const status = await new Promise<number | undefined>((resolve, reject) => {
    const req = httpGet(url, { localAddress: '127.0.0.2', headers: bearer(TOKEN), agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.on('error', reject)
  })
  t.equal(status, 200, 'another peer is served')
})

t.test('FailureLimiter: burst, refill, per peer, bounded', async (t) => {
  let now = 1_000_000
  const limiter = new FailureLimiter({ burst: 3, perSecond: 1, maxPeers: 2, now: () => now })
  t.equal(limiter.retryAfterS('a'), 0)
  for (let i = 0; i < 3; i++) limiter.fail('a')
  t.equal(limiter.retryAfterS('a'), 1, 'a is out of budget')
  t.equal(limiter.retryAfterS('b'), 0, 'b is not')
  now += 500
  t.equal(limiter.retryAfterS('a'), 1, 'half a failure forgiven: still limited')
  now += 500
  t.equal(limiter.retryAfterS('a'), 0, 'one forgiven after a second')
  limiter.fail('a')
  t.equal(limiter.retryAfterS('a'), 1)
  limiter.fail('b')
  limiter.fail('c')
  t.equal(limiter.size, 2, 'no more than maxPeers tracked')
  t.equal(limiter.retryAfterS('c'), 0, 'an untracked peer is not limited (fail open, the token check still applies)')
  now += 10_000
  limiter.fail('c')
  t.equal(limiter.size, 1, 'refilled peers are forgotten to make room; c is tracked now')
  t.equal(limiter.retryAfterS('c'), 0)
})

t.test('pageOfTenants: bounded scans with a sparse state filter; parseListQuery', async (t) => {
  const n = 25_000
  const tenants: TenantRow[] = Array.from({ length: n }, (_, i) => ({ id: i + 1, slug: `s${String(i).padStart(5, '0')}`, databaseName: `d${i}`, databaseHost: null, databasePort: null, state: i === 24_000 ? 'suspended' : 'active', upstream: null, epoch: 1, primaryHost: `s${i}.example` }))
  const index: RegistryIndex = buildIndex({ version: 1, registryId: 'r', tenants, domains: tenants.map((x) => ({ hostname: x.primaryHost ?? '', tenantId: x.id })) }, { defaultHost: 'db', defaultPort: 5432 })
  const q = { state: 'suspended' as const, after: null, limit: 1000 }
  const slugs = await index.slugOrder.sorted()
  const p1 = pageOfTenants(index, slugs, q)
  t.same(p1, { tenants: [], next: `s${String(MAX_SCAN - 1).padStart(5, '0')}` }, 'a page stops after MAX_SCAN slugs: empty, with a cursor')
  const p2 = pageOfTenants(index, slugs, { ...q, after: p1.next })
  const p3 = pageOfTenants(index, slugs, { ...q, after: p2.next })
  t.same(p3.tenants, [{ slug: 's24000', state: 'suspended', host: 's24000.example' }], 'found on the third page')
  t.equal(p3.next, null)
  t.same(parseListQuery({ limit: '7', after: 'a-b', state: 'active' }), { limit: 7, after: 'a-b', state: 'active' })
  t.same(parseListQuery(undefined), { limit: 500, after: null, state: null })
  t.match(parseListQuery({ limit: ['1', '2'] }), /more than once/)
})

t.test('HS256 descriptors verify the same way (the configured key, not a fixed algorithm)', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const secret = randomBytes(32).toString('base64url')
  const config = testConfig(registry.url, upstream.origin, { TENANT_PROXY_DESCRIPTOR_KEYS: `hs256:${secret}`, TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: TOKEN })
  const proxy = await startTestProxy(t, config)
  const r = await get<Issued>(`${proxy.opsUrl}/v1/tenants/acme/descriptor`, bearer(TOKEN))
  const verifier = createVerifier({ keys: `hs256:${secret}` }, { issuer: config.deploymentId, audience: config.descriptor.audience })
  t.match(await verifier.verify(r.body.descriptor, r.body.host), { tenant: 'acme' })
  try {
    await createVerifier({ keys: `hs256:${randomBytes(32).toString('base64url')}` }, { issuer: config.deploymentId, audience: config.descriptor.audience }).verify(r.body.descriptor, r.body.host)
    t.fail('verified with another secret')
  } catch (err) {
    t.ok(isDescriptorError(err), 'another secret refuses it')
  }
})
