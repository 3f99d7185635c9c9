import { generateKeyPairSync } from 'node:crypto'
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache, signDescriptor, type DescriptorClaims, type DescriptorTarget } from '../src/descriptor/sign.js'
import { isTpError } from '../src/errors.js'

const NOW = 1_800_000_000_000
const target = (): DescriptorTarget => ({ slug: 'acme', epoch: 3, db: { name: 'acme_prod', host: 'db1.internal', port: 5432 } })
const CLAIM_ORDER = ['v', 'iss', 'aud', 'sub', 'host', 'db', 'epoch', 'iat', 'nbf', 'exp']

t.test('ES256 descriptors verify with jose (public key and the published JWKS)', async (t) => {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const ring = loadKeyring([{ key: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'shop-prod', audience: 'shop', ttlS: 60, refreshMarginS: 20, now: () => NOW })
  const token = cache.get(target(), 'acme.example.com')
  t.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}$/, 'compact, unpadded, 64-byte r||s signature')
  const opts = { issuer: 'shop-prod', audience: 'shop', typ: 'tenant-db+jwt', algorithms: ['ES256'], currentDate: new Date(NOW + 10_000) }
  const { payload, protectedHeader } = await jwtVerify(token, pair.publicKey, opts)
  t.same(protectedHeader, { alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
  t.same(payload, { v: 1, iss: 'shop-prod', aud: 'shop', sub: 'acme', host: 'acme.example.com', db: { name: 'acme_prod', host: 'db1.internal', port: 5432 }, epoch: 3, iat: 1_800_000_000, nbf: 1_800_000_000, exp: 1_800_000_060 })
  t.same(Object.keys(payload), CLAIM_ORDER)
  const viaJwks = await jwtVerify(token, createLocalJWKSet(ring.jwks() as unknown as JSONWebKeySet), opts)
  t.equal(viaJwks.payload.sub, 'acme')
  t.equal(viaJwks.protectedHeader.kid, ring.signer.kid)
  await t.rejects(jwtVerify(token, pair.publicKey, { ...opts, currentDate: new Date(NOW + 60_000) }), { code: 'ERR_JWT_EXPIRED' }, 'exp = iat + ttlS')
})

t.test('HS256 descriptors verify with jose and the shared string secret', async (t) => {
  const secret = 'x'.repeat(40)
  const ring = loadKeyring([{ key: secret, alg: 'HS256' }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20 })
  const token = cache.get(target(), 'acme.test')
  const { payload, protectedHeader } = await jwtVerify(token, new TextEncoder().encode(secret), { issuer: 'i', audience: 'a', algorithms: ['HS256'], typ: 'tenant-db+jwt' })
  t.same(protectedHeader, { alg: 'HS256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
  t.equal(payload.host, 'acme.test')
  t.equal(payload.sub, 'acme')
  await t.rejects(jwtVerify(token, new TextEncoder().encode('y'.repeat(40)), { algorithms: ['HS256'] }), { code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' }, 'another secret fails')
})

t.test('signDescriptor keeps the claims as given, in order', async (t) => {
  const ring = loadKeyring([{ key: 'w'.repeat(32), kid: 'k1', alg: 'HS256' }])
  const claims: DescriptorClaims = { v: 1, iss: 'i', aud: 'a', sub: 's', host: 'h.test', db: { name: 'd', host: 'db', port: 6432 }, epoch: 9, iat: 100, nbf: 100, exp: 160 }
  const token = signDescriptor(claims, ring.signer)
  t.same(decodeProtectedHeader(token), { alg: 'HS256', kid: 'k1', typ: 'tenant-db+jwt' })
  const [h, p] = token.split('.')
  t.equal(h, ring.signer.headerB64, 'the pre-encoded header')
  t.equal(Buffer.from(p ?? '', 'base64url').toString(), JSON.stringify(claims))
  t.notOk(token.includes('='), 'no padding')
})

t.test('the cache signs once per host and target, and re-signs inside the refresh margin', async (t) => {
  let now = NOW
  let signatures = 0
  const ring = loadKeyring([{ key: 'y'.repeat(32), alg: 'HS256' }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20, now: () => now, onSign: () => { signatures++ }, random: () => 0 })
  const acme = target()
  const first = cache.get(acme, 'acme.example.com')
  t.equal(cache.get(acme, 'acme.example.com'), first, 'hit returns the identical token')
  t.equal(signatures, 1)
  cache.get(acme, 'www.acme.example.com')
  t.equal(signatures, 2, 'another host of the same tenant has its own token')
  now += 39_999
  t.equal(cache.get(acme, 'acme.example.com'), first, 'still cached just before exp - margin (40 s)')
  t.equal(signatures, 2)
  now += 1
  const refreshed = cache.get(acme, 'acme.example.com')
  t.not(refreshed, first, 're-signed at exp - margin')
  t.equal(signatures, 3)
  const { payload } = await jwtVerify(refreshed, new TextEncoder().encode('y'.repeat(32)), { currentDate: new Date(now) })
  t.match(payload, { iat: (NOW + 40_000) / 1000, nbf: (NOW + 40_000) / 1000, exp: (NOW + 100_000) / 1000 })
  cache.get({ ...acme }, 'acme.example.com')
  t.equal(signatures, 4, 'an equal but new route object re-signs (HS256 is deterministic, so count signatures)')
  const moved = { ...acme, epoch: 4 }
  const movedToken = cache.get(moved, 'acme.example.com')
  t.equal((await jwtVerify(movedToken, new TextEncoder().encode('y'.repeat(32)), { currentDate: new Date(now) })).payload.epoch, 4, 'the new target is what gets signed')
  t.equal(signatures, 5)
  t.equal(cache.get(moved, 'acme.example.com'), movedToken)
  t.equal(signatures, 5)
  t.equal(cache.size, 2)
  cache.delete('acme.example.com')
  t.equal(cache.size, 1)
  cache.get(moved, 'acme.example.com')
  t.equal(signatures, 6, 'a deleted host is signed again')
  cache.clear()
  t.equal(cache.size, 0)
})

t.test('the cache refuses a refresh margin that would sign every request; hooks are optional', async (t) => {
  const keyring = loadKeyring([{ key: 'y'.repeat(32), alg: 'HS256' }])
  const refused = (ttlS: number, refreshMarginS: number): boolean => {
    try {
      new DescriptorCache({ keyring, issuer: 'i', audience: 'a', ttlS, refreshMarginS }).get(target(), 'x.test')
      return false
    } catch (err) {
      return isTpError(err, 'TENANT_PROXY_ERR_CONFIG_INVALID')
    }
  }
  t.ok(refused(60, 60), 'margin = ttl')
  t.ok(refused(60, 61), 'margin > ttl')
  t.ok(refused(0, 0), 'ttl 0')
  t.ok(refused(60, -1), 'negative margin')
  t.notOk(refused(60, 0), 'margin 0 is allowed')
  const cache = new DescriptorCache({ keyring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20, now: undefined, onSign: undefined })
  t.match(cache.get(target(), 'x.test'), /^ey/, 'explicitly undefined hooks fall back to the defaults')
})

t.test('issue: the cached token with its exp when one is fresh, else a new one that is not cached', async (t) => {
  let now = NOW
  let signed = 0
  const ring = loadKeyring([{ key: 'x'.repeat(40), alg: 'HS256' }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20, now: () => now, onSign: () => { signed++ }, random: () => 0 })
  const acme = target()
  const claimsOf = (token: string): DescriptorClaims => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as DescriptorClaims
  const fresh = cache.issue(acme, 'acme.test')
  t.equal(fresh.exp, NOW / 1000 + 60, 'full lifetime')
  t.equal(claimsOf(fresh.token).exp, fresh.exp)
  t.equal(cache.size, 0, 'not cached')
  t.equal(signed, 1)
  const carried = cache.get(acme, 'acme.test')
  now += 30_000
  t.same(cache.issue(acme, 'acme.test'), { token: carried, exp: NOW / 1000 + 60 }, 'the token requests carry, with its exp')
  t.equal(signed, 2, 'nothing signed for it')
  now += 10_000
  const renewed = cache.issue(acme, 'acme.test')
  t.equal(signed, 3, 'inside the refresh margin: signed anew, as get would')
  t.equal(renewed.exp, NOW / 1000 + 100)
  cache.get(acme, 'acme.test')
  t.equal(signed, 4, 'without replacing the cached entry: get signs its own')
  const moved = { ...acme, epoch: 4 }
  t.equal(claimsOf(cache.issue(moved, 'acme.test').token).epoch, 4, 'a changed target is never served the old token')
})

t.test('hosts signed together fall due over half the refresh margin, not in one instant', async (t) => {
  let now = NOW
  let signed = 0
  let draw = 0
  // 1,000 evenly spaced draws from [0, 1): the jitter's whole range, deterministically.
  const random = (): number => (draw++ % 1000) / 1000
  const ring = loadKeyring([{ key: 'z'.repeat(32), alg: 'HS256' }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20, now: () => now, onSign: () => { signed++ }, random })
  const acme = target()
  const hosts = Array.from({ length: 1000 }, (_, i) => `t${i}.test`)
  for (const host of hosts) cache.get(acme, host)
  t.equal(signed, 1000)
  const dueBy = (ms: number): number => {
    now = NOW + ms
    const before = signed
    for (const host of hosts) cache.get(acme, host)
    return signed - before
  }
  t.equal(dueBy(30_009), 0, 'none before exp - margin - margin/2 (30 s, the largest draw 0.999 → 30.01 s)')
  t.equal(dueBy(30_010), 1, 'the first at 30.01 s')
  t.equal(dueBy(35_000), 500 - 1, 'half of them by 35 s')
  t.equal(dueBy(40_000), 500, 'all of them by exp - margin (40 s)')
  // issue() returns the exp the cached token carries, whatever its jitter.
  now = NOW + 20_000
  const fresh = cache.get(acme, 'fresh.test')
  t.same(cache.issue(acme, 'fresh.test'), { token: fresh, exp: (NOW + 20_000) / 1000 + 60 })
})
