/**
 * @tenant-proxy/verify (clients/node), imported by its package name as an app imports it (the npm
 * workspace links it; `npm run build` builds its dist/): the shared vectors with inline keys and a
 * key file, the key set URL cache (max-age, background refresh, cooldown on unknown kids, last good
 * key set kept, no redirects) against a real HTTP key set server, settings from TENANT_DESCRIPTOR_*
 * read at first use, and a real Fastify app and a real Connect-style node:http app receiving
 * requests through a running proxy.
 */
import { createPublicKey } from 'node:crypto'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import * as kit from '@tenant-proxy/verify'
import { fastifyTenantDescriptor } from '@tenant-proxy/verify/fastify'
import { loadKeyring, type Keyring } from '../src/descriptor/keyring.js'
import { signDescriptor, type DescriptorClaims } from '../src/descriptor/sign.js'
import { JWKS_PATH } from '../src/ops/app.js'
import { VECTORS_PATH } from './fixtures/generate-vectors.js'
import { es256Pem, startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { rawRequest } from './helpers/raw-http.js'

interface VectorCase { name: string, token: string, request_host: string, expect: 'valid' | 'invalid', reason: string | null, claims?: DescriptorClaims }
interface Vectors { now: number, leeway: number, issuer: string, audience: string, keys: { hs256: { secret: string, kid: string } }, jwks: kit.Jwks, cases: VectorCase[] }
const vectors = JSON.parse(await readFile(VECTORS_PATH, 'utf8')) as Vectors

async function outcome (verifier: kit.DescriptorVerifier, token: string | undefined, host: string): Promise<{ ok: true, d: kit.TenantDescriptor } | { ok: false, reason: string, status: number }> {
  try {
    return { ok: true, d: await verifier.verify(token, host) }
  } catch (err) {
    if (kit.isDescriptorError(err)) return { ok: false, reason: err.reason, status: err.httpStatus }
    throw err
  }
}

t.test('every shared vector through @tenant-proxy/verify (inline keys and a key file)', async (t) => {
  const opts = { issuer: vectors.issuer, audience: vectors.audience, leewayS: vectors.leeway, now: () => vectors.now * 1000 }
  const inline = kit.createVerifier({ keys: [...vectors.jwks.keys.map((k) => ({ key: jwkToPem(k) })), { key: vectors.keys.hs256.secret, alg: 'HS256' as const }] }, opts)
  const dir = await mkdtemp(join(tmpdir(), 'tp-kit-'))
  const file = join(dir, 'jwks.json')
  await writeFile(file, JSON.stringify(vectors.jwks))
  const fromFile = kit.createVerifier({ keysFile: file }, opts)
  for (const c of vectors.cases) {
    const r = await outcome(inline, c.token, c.request_host)
    if (c.expect === 'valid') {
      t.ok(r.ok, `${c.name}: accepted`)
      if (r.ok) {
        t.same(r.d.claims, c.claims, `${c.name}: claims`)
        t.same({ tenant: r.d.tenant, host: r.d.host, db: r.d.db, epoch: r.d.epoch }, { tenant: c.claims?.sub, host: c.claims?.host, db: c.claims?.db, epoch: c.claims?.epoch })
        t.ok(Object.isFrozen(r.d) && Object.isFrozen(r.d.db) && Object.isFrozen(r.d.claims) && Object.isFrozen(r.d.claims.db), `${c.name}: frozen`)
      }
    } else {
      t.same(r.ok ? 'accepted' : r.reason, c.reason, `${c.name}: refused for ${c.reason ?? ''}`)
      if (!r.ok) t.equal(r.status, ['malformed', 'comma', 'too_large'].includes(c.reason ?? '') ? 400 : 401, `${c.name}: HTTP status`)
    }
    // The key file holds the ES256 keys only: cases naming the HS256 kid are unknown kids there.
    const namesHs256Kid = c.token.split('.')[0] === '' ? false : Buffer.from(c.token.split('.')[0] ?? '', 'base64url').toString().includes(vectors.keys.hs256.kid)
    if (!namesHs256Kid) {
      const f = await outcome(fromFile, c.token, c.request_host)
      t.same(f.ok ? 'accepted' : f.reason, c.expect === 'valid' ? 'accepted' : c.reason, `${c.name}: same through keysFile`)
    }
  }
  t.same(await outcome(inline, undefined, 'acme.example.com'), { ok: false, reason: 'missing', status: 400 }, 'no header: missing, 400')
  const good = vectors.cases[0]?.token ?? ''
  t.same(await outcome(inline, [good, good] as unknown as string, 'acme.example.com'), { ok: false, reason: 'comma', status: 400 }, 'a repeated header (list) is a comma')
  t.match(await outcome(inline, good, '127.0.0.1'), { ok: false, reason: 'host_mismatch' }, 'an IP literal request host matches no claim')
  t.throws(() => kit.createVerifier({ keys: vectors.jwks }, { ...opts, leewayS: 6 }), { code: 'TENANT_PROXY_ERR_CONFIG_INVALID' }, 'leeway over 5 s is refused')
  t.throws(() => kit.createVerifier({ keys: vectors.jwks }, { ...opts, audience: '' }), { code: 'TENANT_PROXY_ERR_CONFIG_INVALID' }, 'audience is required')
})

/** A real key set server: serves `jwks()` (or fails when `fail` is set) and counts fetches. */
async function jwksServer (t: Test, jwks: () => unknown, cacheControl = 'public, max-age=60'): Promise<{ url: string, fetches: () => number, fail: (status: number | null) => void, redirect: (status: number, location: string) => void }> {
  let count = 0
  let failWith: number | null = null
  let location: string | null = null
  const server = createServer((req, res) => {
    count++
    if (failWith !== null) {
      res.writeHead(failWith, location === null ? {} : { location }).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': cacheControl }).end(JSON.stringify(jwks()))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => server.close(() => resolve())))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`,
    fetches: () => count,
    fail: (s) => { failWith = s; location = null },
    redirect: (s, to) => { failWith = s; location = to }
  }
}

const ISS = 'shop-production'
const AUD = 'shop'

function token (ring: Keyring, nowS: number, over: Partial<DescriptorClaims> = {}): string {
  return signDescriptor({ v: 1, iss: ISS, aud: AUD, sub: 'acme', host: 'acme.example.com', db: { name: 'acme', host: 'db', port: 5432 }, epoch: 1, iat: nowS, nbf: nowS, exp: nowS + 60, ...over }, ring.signer)
}

t.test('JWKS URL: cached for max-age, refreshed in the background, one refetch per cooldown on unknown kids, last good set kept', async (t) => {
  const a = loadKeyring([{ key: es256Pem() }])
  const b = loadKeyring([{ key: es256Pem() }])
  let published = a.jwks()
  const server = await jwksServer(t, () => published, 'public, max-age=10')
  let nowMs = 1_800_000_000_000
  const verifier = kit.createVerifier({ jwksUrl: server.url }, { issuer: ISS, audience: AUD, now: () => nowMs })
  const s = (): number => Math.floor(nowMs / 1000)

  t.equal((await verifier.verify(token(a, s()), 'acme.example.com')).tenant, 'acme', 'first token verifies')
  t.equal(server.fetches(), 1, 'first use fetches the key set')
  await verifier.verify(token(a, s()), 'acme.example.com')
  t.equal(server.fetches(), 1, 'within max-age: no fetch')

  // B is not published: a burst of tokens under its kid makes no fetch within the cooldown.
  const burst = await Promise.all(Array.from({ length: 50 }, async () => await outcome(verifier, token(b, s()), 'acme.example.com')))
  t.ok(burst.every((r) => !r.ok && r.reason === 'unknown_kid'), 'unknown kid refused')
  t.equal(server.fetches(), 1, 'no refetch right after the last fetch (cooldown 30 s)')

  nowMs += 5_000
  published = { keys: [...a.jwks().keys, ...b.jwks().keys] }
  t.match(await outcome(verifier, token(b, s()), 'acme.example.com'), { ok: false, reason: 'unknown_kid' }, '5 s later: still in the cooldown, still unknown')
  t.equal(server.fetches(), 1)

  nowMs += 6_000 // 11 s after the first fetch: max-age 10 s has passed
  t.ok((await outcome(verifier, token(a, s()), 'acme.example.com')).ok, 'max-age passed: the stale key set answers at once')
  t.equal(verifier.jwksFetches, 2, 'and a refresh started in the background (max-age from Cache-Control)')
  await verifier.settled()
  t.ok((await outcome(verifier, token(b, s()), 'acme.example.com')).ok, 'once refreshed, the new key is known')
  t.equal(server.fetches(), 2)

  const c = loadKeyring([{ key: es256Pem() }])
  nowMs += 5_000
  const concurrent = await Promise.all(Array.from({ length: 20 }, async () => await outcome(verifier, token(c, s()), 'acme.example.com')))
  t.ok(concurrent.every((r) => !r.ok && r.reason === 'unknown_kid'))
  t.equal(server.fetches(), 2, 'unknown kid within the cooldown: no fetch')
  nowMs += 30_000
  const after = await Promise.all(Array.from({ length: 20 }, async () => await outcome(verifier, token(c, s()), 'acme.example.com')))
  t.ok(after.every((r) => !r.ok && r.reason === 'unknown_kid'), 'unknown kids are refused at once, not after a fetch')
  t.equal(verifier.jwksFetches, 3, 'cooldown passed: exactly one refetch for 20 concurrent unknown kids')
  await verifier.settled()
  t.equal(server.fetches(), 3)

  server.fail(500)
  nowMs += 60_000
  t.ok((await outcome(verifier, token(a, s()), 'acme.example.com')).ok, 'key set server failing: the last good key set still verifies')
  t.equal(verifier.jwksFetches, 4, 'one refetch was attempted')
  await verifier.settled()
  t.equal(server.fetches(), 4)
  t.ok((await outcome(verifier, token(a, s()), 'acme.example.com')).ok)
  t.equal(server.fetches(), 4, 'a failing server is not retried before the cooldown')
  nowMs += 30_000
  t.ok((await outcome(verifier, token(a, s()), 'acme.example.com')).ok)
  t.equal(verifier.jwksFetches, 5, 'retried after the cooldown')
  await verifier.settled()
  t.equal(server.fetches(), 5)
})

t.test('JWKS URL: no key set at all → jwks_unavailable (503); redirects are not followed', async (t) => {
  const a = loadKeyring([{ key: es256Pem() }])
  const server = await jwksServer(t, () => a.jwks())
  const elsewhere = await jwksServer(t, () => a.jwks())
  server.fail(503)
  const verifier = kit.createVerifier({ jwksUrl: server.url }, { issuer: ISS, audience: AUD })
  const now = Math.floor(Date.now() / 1000)
  t.same(await outcome(verifier, token(a, now), 'acme.example.com'), { ok: false, reason: 'jwks_unavailable', status: 503 })
  for (const status of [301, 302, 307, 308]) {
    server.redirect(status, elsewhere.url)
    t.match(await outcome(verifier, token(a, now), 'acme.example.com'), { ok: false, reason: 'jwks_unavailable' }, `a ${status} redirect is a failed fetch`)
  }
  t.equal(elsewhere.fetches(), 0, 'the redirect target was never asked')
  server.fail(null)
  t.ok((await outcome(verifier, token(a, now), 'acme.example.com')).ok, 'recovers once the server answers: with no key set held, every request may try')
})

t.test('createVerifierFromEnv: TENANT_DESCRIPTOR_* read at first use, never at creation', async (t) => {
  const a = loadKeyring([{ key: es256Pem() }])
  const server = await jwksServer(t, () => a.jwks())
  const env: Record<string, string | undefined> = {}
  const verifier = kit.createVerifierFromEnv(env)
  t.equal(verifier.jwksFetches, 0, 'created without any setting (a build step or console imports the app)')
  await t.rejects(verifier.verify(token(a, Math.floor(Date.now() / 1000)), 'acme.example.com'), { name: 'VerifierConfigError', code: 'TENANT_PROXY_ERR_CONFIG_INVALID', message: /TENANT_DESCRIPTOR_ISSUER, TENANT_DESCRIPTOR_AUDIENCE, TENANT_DESCRIPTOR_JWKS_URL \(or TENANT_DESCRIPTOR_KEYS_FILE\) are not set/ }, 'a missing setting is a configuration error naming the variables, not a refusal')
  const late = kit.createVerifierFromEnv(env)
  Object.assign(env, { TENANT_DESCRIPTOR_ISSUER: ISS, TENANT_DESCRIPTOR_AUDIENCE: AUD, TENANT_DESCRIPTOR_JWKS_URL: server.url })
  await late.prefetch()
  t.equal(server.fetches(), 1, 'prefetch reads the settings and loads the key set')
  t.equal((await late.verify(token(a, Math.floor(Date.now() / 1000)), 'acme.example.com')).tenant, 'acme')
  t.equal(server.fetches(), 1)
  const both = kit.createVerifierFromEnv({ ...env, TENANT_DESCRIPTOR_KEYS_FILE: '/nonexistent' })
  await t.rejects(both.prefetch(), { code: 'TENANT_PROXY_ERR_CONFIG_INVALID', message: /not both/ })
  const proxyNames = kit.createVerifierFromEnv({ TENANT_PROXY_ISSUER: ISS, TENANT_PROXY_AUDIENCE: AUD, TENANT_PROXY_JWKS_URL: server.url })
  await t.rejects(proxyNames.prefetch(), { code: 'TENANT_PROXY_ERR_CONFIG_INVALID' }, 'TENANT_PROXY_* belongs to the proxy: never read')

  // Through the Connect middleware, a configuration error is an error (500), not a 4xx refusal.
  const mw = kit.tenantDescriptorMiddleware({ verifier: kit.createVerifierFromEnv({}) })
  const passed = await new Promise<unknown>((resolve) => {
    const req = { url: '/x', headers: { host: 'acme.example.com', 'x-tenant-descriptor': token(a, 1) } } as unknown as IncomingMessage
    mw(req, {} as ServerResponse, resolve)
  })
  t.match(passed, { name: 'VerifierConfigError' }, 'next(err) with the configuration error')
})

/** An http server whose handler is set after it listens (the proxy must know its origin first). */
async function lateServer (t: Test): Promise<{ origin: string, port: number, setHandler: (h: RequestListener) => void }> {
  let handler: RequestListener = (_req, res) => { res.writeHead(503).end() }
  const server = createServer((req, res) => handler(req, res))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  const port = (server.address() as AddressInfo).port
  return { origin: `http://127.0.0.1:${port}`, port, setHandler: (h) => { handler = h } }
}

/** Proxy + app: the app at `app.origin` is the proxy's upstream; tenants acme and globex. */
async function proxyInFront (t: Test, upstreamOrigin: string): Promise<{ trafficPort: number, jwksUrl: string, issuer: string, audience: string }> {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }])
  const config = testConfig(registry.url, upstreamOrigin, { TENANT_PROXY_DEPLOYMENT_ID: 'shop-production', TENANT_PROXY_DESCRIPTOR_AUDIENCE: 'shop' })
  const proxy = await startTestProxy(t, config)
  return { trafficPort: proxy.traffic.port, jwksUrl: `${proxy.opsUrl}${JWKS_PATH}`, issuer: config.deploymentId, audience: config.descriptor.audience }
}

/** The checks both apps must pass: through the proxy, and straight to the app (bypassing it). */
async function appChecks (t: Test, trafficPort: number, appPort: number, header = 'X-Tenant-Descriptor'): Promise<void> {
  const via = async (host: string, path = '/whoami'): Promise<{ status: number, body: Record<string, unknown> }> => {
    const r = await request(`http://127.0.0.1:${trafficPort}${path}`, { headers: { host } })
    return { status: r.statusCode, body: await r.body.json() as Record<string, unknown> }
  }
  const acme = await via('acme.example.com')
  t.equal(acme.status, 200, 'through the proxy: 200')
  t.match(acme.body, { tenant: 'acme', host: 'acme.example.com', db: { name: 'acme' }, frozen: true })
  t.match((await via('GLOBEX.example.com.')).body, { tenant: 'globex', host: 'globex.example.com' }, 'Host in upper case with a trailing dot: canonicalized like the proxy does')

  // Straight to the app: what an attacker who reaches the app port could send.
  const direct = async (headers: string): Promise<{ status: number, body: string }> => {
    const r = await rawRequest(appPort, `GET /whoami HTTP/1.1\r\n${headers}Connection: close\r\n\r\n`)
    return { status: r.status, body: r.body }
  }
  const captured = (await request(`http://127.0.0.1:${trafficPort}/token`, { headers: { host: 'acme.example.com' } }))
  const acmeToken = await captured.body.text()
  t.ok(acmeToken.split('.').length === 3, 'the app saw a compact JWS')
  t.same(await direct('Host: acme.example.com\r\n'), { status: 400, body: '{"error":"tenant descriptor missing or malformed","reason":"missing"}' }, 'no descriptor: 400 missing')
  t.same((await direct(`Host: acme.example.com\r\n${header}: ${acmeToken}\r\n`)).status, 200, 'a captured token replayed on its own host still works while valid (why the app port must not be reachable)')
  t.match(await direct(`Host: globex.example.com\r\n${header}: ${acmeToken}\r\n`), { status: 401, body: /"reason":"host_mismatch"/ }, "acme's token on globex's host: 401 host_mismatch")
  t.match(await direct(`Host: acme.example.com\r\n${header}: ${acmeToken}\r\n${header}: ${acmeToken}\r\n`), { status: 400, body: /"reason":"comma"/ }, 'two headers: 400 comma')
  const forged = signDescriptor({ v: 1, iss: 'shop-production', aud: 'shop', sub: 'acme', host: 'acme.example.com', db: { name: 'acme', host: 'x', port: 5432 }, epoch: 1, iat: Math.floor(Date.now() / 1000), nbf: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 60 }, loadKeyring([{ key: es256Pem() }]).signer)
  t.match(await direct(`Host: acme.example.com\r\n${header}: ${forged}\r\n`), { status: 401, body: /"reason":"unknown_kid"/ }, 'forged with another key: 401 unknown_kid')
  t.match(await direct(`Host: acme.example.com\r\n${header}: ${'a'.repeat(9000)}\r\n`), { status: 400, body: /"reason":"too_large"/ }, 'oversized: 400 too_large')
  t.match(await direct('Host: acme.example.com\r\n'), { body: /^\{"error"/ }, 'refusals never echo the token')
  const up = await rawRequest(appPort, 'GET /up?probe=1 HTTP/1.1\r\nHost: whatever\r\nConnection: close\r\n\r\n')
  t.equal(up.status, 200, 'skipped path /up: no descriptor needed')
  t.equal((await rawRequest(appPort, 'GET //up HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')).status, 400, '//up is not /up: checked')
}

t.test('Fastify plugin: a real Fastify app behind a running proxy', async (t) => {
  const server = await lateServer(t)
  const proxy = await proxyInFront(t, server.origin)
  const refused: string[] = []
  const verifier = kit.createVerifier({ jwksUrl: proxy.jwksUrl }, { issuer: proxy.issuer, audience: proxy.audience })
  const app = Fastify({ serverFactory: (handler) => { server.setHandler(handler); return createServer() } })
  await app.register(fastifyTenantDescriptor, { verifier, onRefused: (err) => refused.push(err.reason) })
  app.get('/whoami', async (request) => {
    const d = request.tenantDescriptor
    return { tenant: d?.tenant, host: d?.host, db: d?.db, frozen: Object.isFrozen(d) }
  })
  app.get('/token', async (request) => String(request.headers['x-tenant-descriptor']))
  app.get('/up', async (request) => ({ up: true, descriptor: request.tenantDescriptor }))
  await app.ready()
  t.teardown(async () => await app.close())
  await appChecks(t, proxy.trafficPort, server.port)
  t.ok(refused.includes('host_mismatch') && refused.includes('missing'), 'onRefused hears every refusal by reason')
  t.equal(verifier.jwksFetches, 1, 'one key set fetch served every request')
})

t.test('Connect middleware: a real node:http app behind a running proxy', async (t) => {
  const server = await lateServer(t)
  const proxy = await proxyInFront(t, server.origin)
  const verifier = kit.createVerifier({ jwksUrl: proxy.jwksUrl }, { issuer: proxy.issuer, audience: proxy.audience })
  const middleware = kit.tenantDescriptorMiddleware({ verifier })
  const send = (res: ServerResponse, body: string): void => { res.writeHead(200, { 'content-type': 'application/json' }).end(body) }
  // The smallest Connect: run the middleware, then the route if it called next().
  server.setHandler((req: IncomingMessage, res) => {
    middleware(req, res, (err) => {
      if (err !== undefined) {
        res.writeHead(500).end()
        return
      }
      const d = (req as kit.RequestWithDescriptor).tenantDescriptor ?? null
      if (req.url === '/token') send(res, JSON.stringify(String(req.headers['x-tenant-descriptor'])).slice(1, -1))
      else send(res, JSON.stringify({ tenant: d?.tenant, host: d?.host, db: d?.db, frozen: Object.isFrozen(d) }))
    })
  })
  await appChecks(t, proxy.trafficPort, server.port)
})

function jwkToPem (jwk: unknown): string {
  const { kty, crv, x, y } = jwk as { kty: string, crv: string, x: string, y: string }
  return createPublicKey({ key: { kty, crv, x, y }, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
}

t.test('the package canonicalizes request hosts exactly as the proxy does (property)', async (t) => {
  const fc = (await import('fast-check')).default
  const { canonicalHost: proxyCanonical } = await import('../src/routing/host.js')
  const proxy = (h: string): string | null => { const r = proxyCanonical(h); return r.ok ? r.host : null }
  // Pieces that exercise every branch: case, ports, dots, IPv4/IPv6 shapes, IDN, UTS #46 mappings, A-labels, junk.
  const piece = fc.constantFrom('a', 'Z', '0', '9', '-', '.', ':', '[', ']', '@', ' ', '\t', 'xn--', 'xn--bcher-kva', 'xn--zz', 'ü', 'Ü', 'ß', '\u3002', '\uff41', '\u2603', '\u200d', 'example', 'com', '123', '65535', '65536', '::1', '127.0.0.1', 'a'.repeat(63))
  const host = fc.array(piece, { maxLength: 12 }).map((parts) => parts.join(''))
  fc.assert(fc.property(host, (h) => kit.canonicalHost(h) === proxy(h)), { numRuns: 20_000, seed: 11 })
  t.pass('20 000 generated hosts canonicalize the same')
  for (const h of ['BÜCHER.example:8443', 'acme.example.com.', 'a'.repeat(64) + '.example', `${'a.'.repeat(126)}aa`, '日本.example', '1.2.3.4', 'example.123']) {
    t.equal(kit.canonicalHost(h), proxy(h), JSON.stringify(h))
  }
})
