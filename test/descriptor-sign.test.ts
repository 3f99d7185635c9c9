import { generateKeyPairSync } from 'node:crypto'
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache, type DescriptorTarget } from '../src/descriptor/sign.js'

const target = (): DescriptorTarget => ({ slug: 'acme', epoch: 3, db: { name: 'acme_prod', host: 'db1.internal', port: 5432 } })

t.test('ES256 descriptors verify with jose (public key and JWKS)', async (t) => {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const ring = loadKeyring([{ key: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'shop-prod', audience: 'shop', ttlS: 60, refreshMarginS: 20, now: () => 1_800_000_000_000 })
  const token = cache.get(target(), 'acme.example.com')
  const opts = { issuer: 'shop-prod', audience: 'shop', typ: 'tenant-db+jwt', algorithms: ['ES256'], currentDate: new Date(1_800_000_010_000) }
  const { payload, protectedHeader } = await jwtVerify(token, pair.publicKey, opts)
  t.same(protectedHeader, { alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
  t.same(payload, { v: 1, iss: 'shop-prod', aud: 'shop', sub: 'acme', host: 'acme.example.com', db: { name: 'acme_prod', host: 'db1.internal', port: 5432 }, epoch: 3, iat: 1_800_000_000, nbf: 1_800_000_000, exp: 1_800_000_060 })
  t.same(Object.keys(payload), ['v', 'iss', 'aud', 'sub', 'host', 'db', 'epoch', 'iat', 'nbf', 'exp'])
  const viaJwks = await jwtVerify(token, createLocalJWKSet(ring.jwks() as unknown as JSONWebKeySet), opts)
  t.equal(viaJwks.payload.sub, 'acme')
})

t.test('HS256 descriptors verify with jose and the shared secret', async (t) => {
  const secret = 'x'.repeat(40)
  const ring = loadKeyring([{ key: secret }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20 })
  const { payload, protectedHeader } = await jwtVerify(cache.get(target(), 'acme.test'), new TextEncoder().encode(secret), { issuer: 'i', audience: 'a', algorithms: ['HS256'], typ: 'tenant-db+jwt' })
  t.equal(protectedHeader.alg, 'HS256')
  t.equal(payload.host, 'acme.test')
})

t.test('the cache signs once per host and target, and re-signs inside the refresh margin', async (t) => {
  let now = 1_800_000_000_000
  let signatures = 0
  const ring = loadKeyring([{ key: 'y'.repeat(32) }])
  const cache = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20, now: () => now, onSign: () => { signatures++ } })
  const acme = target()
  const first = cache.get(acme, 'acme.example.com')
  t.equal(cache.get(acme, 'acme.example.com'), first, 'hit returns the identical token')
  t.equal(signatures, 1)
  cache.get(acme, 'www.acme.example.com')
  t.equal(signatures, 2, 'another host of the same tenant has its own token')
  now += 39_000
  t.equal(cache.get(acme, 'acme.example.com'), first, 'still outside the margin at 39 s')
  now += 1_000
  const refreshed = cache.get(acme, 'acme.example.com')
  t.not(refreshed, first, 're-signed at exp - margin (40 s)')
  t.equal(signatures, 3)
  const moved = { ...acme, epoch: 4 }
  t.not(cache.get(moved, 'acme.example.com'), refreshed, 'a new route object (tenant changed) re-signs')
  t.equal(signatures, 4)
  t.equal(cache.size, 2)
  cache.delete('acme.example.com')
  t.equal(cache.size, 1)
  cache.clear()
  t.equal(cache.size, 0)
})
