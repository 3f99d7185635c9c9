import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { request } from 'undici'
import type { SeenRequest } from './helpers/upstream.js'
import { startUpstream } from './helpers/upstream.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { rawRequest } from './helpers/raw-http.js'

const TENANTS = [
  { slug: 'acme', domains: ['acme.example.com', 'acme.test'], databaseName: 'acme_prod' },
  { slug: 'globex', domains: ['globex.example.com'], databaseName: 'globex_prod', databaseHost: 'db2.internal', databasePort: 6432 },
  { slug: 'sleepy', domains: ['sleepy.example.com'], state: 'suspended' as const },
  { slug: 'fixing', domains: ['fixing.example.com'], state: 'maintenance' as const },
  { slug: 'admin', domains: ['admin-tenant.example.com'] }
]

async function get (base: string, host: string, path = '/', headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, string | string[] | undefined>, text: string }> {
  const res = await request(`${base}${path}`, { headers: { host, ...headers } })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

t.test('routing over real sockets', async (t) => {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  const config = testConfig(registry.url, upstream.origin, {
    TENANT_PROXY_ROUTING_WILDCARD_DOMAINS: 'apps.example.net',
    TENANT_PROXY_ROUTING_PASSTHROUGH_HOSTS: 'signup.example.com',
    TENANT_PROXY_DEPLOYMENT_ID: 'test-deploy',
    TENANT_PROXY_DESCRIPTOR_AUDIENCE: 'test-app'
  })
  const proxy = await startTestProxy(t, config)
  const jwksRes = await request(`${proxy.opsUrl}/.well-known/tenant-proxy/jwks.json`)
  const jwks = createLocalJWKSet(await jwksRes.body.json() as JSONWebKeySet)
  const verify = async (token: unknown): Promise<Record<string, unknown>> => {
    if (typeof token !== 'string') throw new Error('no descriptor')
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: 'test-deploy', audience: 'test-app', typ: 'tenant-db+jwt', algorithms: ['ES256'] })
    t.equal(protectedHeader.kid, proxy.keyring.signer.kid)
    return payload
  }
  const seen = (text: string): SeenRequest => JSON.parse(text) as SeenRequest

  t.test('two tenants get their own verifiable descriptors', async (t) => {
    const a = await get(proxy.url, 'acme.example.com', '/orders?page=2')
    t.equal(a.status, 200)
    const aSeen = seen(a.text)
    t.equal(aSeen.url, '/orders?page=2')
    t.equal(aSeen.headers.host, 'acme.example.com', 'Host preserved by default')
    const claims = await verify(aSeen.headers['x-tenant-descriptor'])
    t.match(claims, { v: 1, iss: 'test-deploy', aud: 'test-app', sub: 'acme', host: 'acme.example.com', db: { name: 'acme_prod', host: 'localhost', port: 5432 }, epoch: 1 })
    t.equal((claims.exp as number) - (claims.iat as number), 60)
    t.equal(claims.nbf, claims.iat)

    const g = await get(proxy.url, 'GLOBEX.example.com.:8080')
    const gClaims = await verify(seen(g.text).headers['x-tenant-descriptor'])
    t.match(gClaims, { sub: 'globex', host: 'globex.example.com', db: { name: 'globex_prod', host: 'db2.internal', port: 6432 } })
    t.equal(a.headers['x-tenant-descriptor'], undefined, 'never echoed to the client, even when the app echoes it')
    t.equal(a.headers['keep-alive'], 'timeout=72', 'keep-alive is the proxy\'s own (72 s), not the upstream\'s (5 s)')
    t.ok(typeof a.headers['x-request-id'] === 'string')
  })

  t.test('descriptors are cached per host and not re-signed per request', async (t) => {
    const one = seen((await get(proxy.url, 'acme.test')).text).headers['x-tenant-descriptor']
    const two = seen((await get(proxy.url, 'acme.test')).text).headers['x-tenant-descriptor']
    t.equal(one, two)
    t.match(await verify(one), { sub: 'acme', host: 'acme.test' })
  })

  t.test('www. fallback', async (t) => {
    const r = await get(proxy.url, 'www.acme.example.com')
    t.equal(r.status, 200)
    t.match(await verify(seen(r.text).headers['x-tenant-descriptor']), { sub: 'acme', host: 'www.acme.example.com' })
  })

  t.test('wildcard base domain: first label is the slug, reserved labels never resolve', async (t) => {
    const r = await get(proxy.url, 'globex.apps.example.net')
    t.equal(r.status, 200)
    t.match(await verify(seen(r.text).headers['x-tenant-descriptor']), { sub: 'globex' })
    for (const host of ['admin.apps.example.net', 'www.apps.example.net', 'api.apps.example.net', 'nobody.apps.example.net', 'a.globex.apps.example.net', 'apps.example.net']) {
      const miss = await get(proxy.url, host)
      t.equal(miss.status, 404, host)
    }
  })

  t.test('unknown host: 404 with an error code, JSON or HTML by Accept, never a default tenant', async (t) => {
    const before = upstream.seen.length
    const json = await get(proxy.url, 'nobody.example.com')
    t.equal(json.status, 404)
    t.match(json.headers['content-type'], /application\/json/)
    t.match(JSON.parse(json.text), { error: { code: 'TENANT_PROXY_ERR_UNKNOWN_HOST', status: 404 } })
    const html = await get(proxy.url, 'nobody.example.com', '/', { accept: 'text/html,application/xhtml+xml' })
    t.equal(html.status, 404)
    t.match(html.headers['content-type'], /text\/html/)
    t.match(html.text, /TENANT_PROXY_ERR_UNKNOWN_HOST/)
    t.equal(upstream.seen.length, before, 'nothing reached the upstream')
  })

  t.test('suspended → 403, maintenance → 503 with Retry-After', async (t) => {
    const s = await get(proxy.url, 'sleepy.example.com')
    t.equal(s.status, 403)
    t.match(JSON.parse(s.text), { error: { code: 'TENANT_PROXY_ERR_TENANT_SUSPENDED' } })
    const m = await get(proxy.url, 'fixing.example.com')
    t.equal(m.status, 503)
    t.equal(m.headers['retry-after'], '30')
    t.match(JSON.parse(m.text), { error: { code: 'TENANT_PROXY_ERR_TENANT_MAINTENANCE' } })
  })

  t.test('pass-through hosts are forwarded without a descriptor', async (t) => {
    const r = await get(proxy.url, 'signup.example.com', '/', { 'x-tenant-descriptor': 'forged' })
    t.equal(r.status, 200)
    t.equal(seen(r.text).headers['x-tenant-descriptor'], undefined)
  })

  t.test('an absolute-form target wins over Host (RFC 9112 section 3.2.2)', async (t) => {
    const r = await rawRequest(proxy.traffic.port, 'GET http://acme.example.com/abs?q=1 HTTP/1.1\r\nHost: globex.example.com\r\nConnection: close\r\n\r\n')
    t.equal(r.status, 200)
    const s = seen(r.body)
    t.equal(s.url, '/abs?q=1')
    t.match(await verify(s.headers['x-tenant-descriptor']), { sub: 'acme' })
    t.equal(s.headers.host, 'acme.example.com', 'the app sees the Host the request was routed for, not the client\'s')
    t.equal(s.headers['x-forwarded-host'], 'acme.example.com')
  })

  t.test('X-Forwarded-Host from an untrusted peer is ignored', async (t) => {
    const r = await get(proxy.url, 'acme.example.com', '/', { 'x-forwarded-host': 'globex.example.com' })
    const s = seen(r.text)
    t.match(await verify(s.headers['x-tenant-descriptor']), { sub: 'acme' })
    t.equal(s.headers['x-forwarded-host'], 'acme.example.com', 'replaced, not passed on')
  })

  t.test('malformed requests get a 4xx, never a 5xx', async (t) => {
    const cases: Array<[string, number]> = [
      ['GET / HTTP/1.1\r\nHost: a..b\r\nConnection: close\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n', 400],
      ['GET /%zz HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n', 400],
      ['GET /../../etc/passwd HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nConnection: close\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nHost: acme.example.com\r\nHost: globex.example.com\r\nConnection: close\r\n\r\n', 400],
      ['BREW / HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n', 400],
      ['GET / HTTP/1.1\r\nHost: acme.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n', 400]
    ]
    for (const [raw, status] of cases) {
      const r = await rawRequest(proxy.traffic.port, raw)
      t.equal(r.status, status, JSON.stringify(raw.split('\r\n').slice(0, 3)))
    }
  })
})

t.test('HS256 descriptors verify with the shared secret', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const secret = 'a-shared-secret-of-at-least-32-bytes!!'
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_DESCRIPTOR_KEYS: JSON.stringify([{ alg: 'HS256', key: secret, kid: 'hs-1' }]) }))
  const r = await get(proxy.url, 'acme.example.com')
  const token = (JSON.parse(r.text) as SeenRequest).headers['x-tenant-descriptor'] as string
  const { payload, protectedHeader } = await jwtVerify(token, new TextEncoder().encode(secret), { algorithms: ['HS256'], issuer: 'tenant-proxy', audience: 'app', typ: 'tenant-db+jwt' })
  t.equal(protectedHeader.kid, 'hs-1')
  t.equal(payload.sub, 'acme')
  const jwks = await (await request(`${proxy.opsUrl}/.well-known/tenant-proxy/jwks.json`)).body.json() as JSONWebKeySet
  t.same(jwks.keys, [], 'HS256 secrets are never published')
})

t.test('a trusted proxy may set X-Forwarded-For, -Proto and X-Request-Id, but does not choose the tenant; Host can be rewritten', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, {
    TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.0/8',
    TENANT_PROXY_UPSTREAM_HOST_HEADER: 'app.internal'
  }))
  // kamal-proxy with forward_headers on copies a client's X-Forwarded-Host through: the tenant
  // must still be the one Host names.
  const r = await get(proxy.url, 'acme.example.com', '/', {
    'x-forwarded-host': 'globex.example.com',
    'x-forwarded-for': '203.0.113.9',
    'x-forwarded-proto': 'https',
    'x-forwarded-ssl': 'off',
    'x-request-id': 'req-abc-123'
  })
  t.equal(r.status, 200)
  const s = JSON.parse(r.text) as SeenRequest
  t.equal(s.headers.host, 'app.internal', 'Host rewritten for the internal vhost')
  t.equal(s.headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1')
  t.equal(s.headers['x-forwarded-proto'], 'https')
  t.equal(s.headers['x-forwarded-port'], '443', 'the port of the trusted scheme')
  t.equal(s.headers['x-forwarded-ssl'], undefined, 'not a header the hop is trusted for')
  t.equal(s.headers['x-forwarded-host'], 'acme.example.com', 'the host the tenant was chosen for, not the hop\'s X-Forwarded-Host')
  t.equal(s.headers['x-request-id'], 'req-abc-123')
  t.equal(r.headers['x-request-id'], 'req-abc-123')
  const token = s.headers['x-tenant-descriptor'] as string
  const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { sub: string, host: string }
  t.match(claims, { sub: 'acme', host: 'acme.example.com' }, 'Host chose the tenant')
})

t.test('traffic.hostFromForwardedHost: a trusted hop\'s last X-Forwarded-Host entry chooses the tenant, an untrusted peer\'s never', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, {
    TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.2',
    TENANT_PROXY_TRAFFIC_HOST_FROM_FORWARDED_HOST: 'true'
  }))
  const request = 'GET / HTTP/1.1\r\nHost: front.internal\r\nX-Forwarded-Host: globex.example.com, acme.example.com\r\nConnection: close\r\n\r\n'
  const trustedRes = await rawRequest(proxy.traffic.port, request, { from: '127.0.0.2' })
  t.equal(trustedRes.status, 200, 'from the trusted hop (127.0.0.2)')
  const s = JSON.parse(trustedRes.body) as SeenRequest
  const claims = JSON.parse(Buffer.from(String(s.headers['x-tenant-descriptor']).split('.')[1] ?? '', 'base64url').toString()) as { sub: string, host: string }
  t.match(claims, { sub: 'acme', host: 'acme.example.com' }, 'the last entry (the one the hop wrote)')
  t.equal(s.headers['x-forwarded-host'], 'acme.example.com', 'the app is told the host the tenant was chosen for')
  const before = upstream.seen.length
  const untrusted = await rawRequest(proxy.traffic.port, request, { from: '127.0.0.1' })
  t.equal(untrusted.status, 404, 'from any other peer Host counts (front.internal is no tenant)')
  t.equal(upstream.seen.length, before, 'nothing reached the app')
})

t.test('an untrusted client cannot set forwarding headers or the request id', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_UPSTREAM_HOST_HEADER: 'app.internal' }))
  const r = await get(proxy.url, 'acme.example.com', '/', { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-request-id': 'mine' })
  const s = JSON.parse(r.text) as SeenRequest
  t.equal(s.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(s.headers['x-forwarded-proto'], 'http')
  t.equal(s.headers['x-forwarded-host'], 'acme.example.com', 'the original host travels in X-Forwarded-Host')
  t.equal(s.headers.host, 'app.internal')
  t.not(s.headers['x-request-id'], 'mine')
  t.match(s.headers['x-request-id'], /^[0-9a-f]{16}-[0-9a-z]+$/, 'generated: process prefix and counter')
})

t.test('upstream pools: round-robin over the default origins, named pools per tenant, unknown pool → 502', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com'] },
    { slug: 'heavy', domains: ['heavy.example.com'], upstream: 'reports' },
    { slug: 'lost', domains: ['lost.example.com'], upstream: 'nowhere' }
  ])
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  const reports = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, `${a.origin},${b.origin}`, { TENANT_PROXY_UPSTREAM_POOLS: JSON.stringify({ reports: [reports.origin] }) }))
  for (let i = 0; i < 4; i++) t.equal((await get(proxy.url, 'acme.example.com')).status, 200)
  t.equal(a.seen.length, 2, 'half on the first origin')
  t.equal(b.seen.length, 2, 'half on the second')
  t.equal((await get(proxy.url, 'heavy.example.com')).status, 200)
  t.equal(reports.seen.length, 1, 'the tenant\'s named pool')
  const lost = await get(proxy.url, 'lost.example.com')
  t.equal(lost.status, 502)
  t.match(JSON.parse(lost.text), { error: { code: 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN' } })
  t.equal(a.seen.length + b.seen.length, 4, 'never sent to another pool instead')
})
