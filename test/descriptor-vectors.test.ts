/**
 * The shared descriptor test vectors (test/fixtures/descriptor-vectors.json, also run by
 * clients/ruby and clients/python): every case through src/descriptor/verify.ts, and the file's
 * own consistency (keys, kids, JWKS, claims of the valid cases).
 */
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { jwkThumbprint, loadKeyring } from '../src/descriptor/keyring.js'
import { decodeDescriptor, DESCRIPTOR_REASONS, isDescriptorError, keysFromConfig, keysFromJwks, verifyDescriptor, type VerificationKeys } from '../src/descriptor/verify.js'
import { isTpError } from '../src/errors.js'
import { REASONS, VECTORS_PATH, type Reason } from './fixtures/generate-vectors.js'

interface EsKey { kid: string, alg: string, private_pem: string, private_jwk: Record<string, string>, public_pem: string, public_jwk: Record<string, string> }
interface VectorCase { name: string, token: string, request_host: string, expect: 'valid' | 'invalid', reason: Reason | null, claims?: Record<string, unknown> }
interface Vectors {
  now: number
  leeway: number
  max_token_bytes: number
  issuer: string
  audience: string
  host: string
  reasons: string[]
  keys: { es256: EsKey, es256_rotated: EsKey, attacker: EsKey, hs256: { kid: string, alg: string, secret: string } }
  jwks: { keys: Array<Record<string, string>> }
  cases: VectorCase[]
}

const vectors = JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as Vectors

function trustedKeys (): VerificationKeys {
  return new Map([...keysFromJwks(vectors.jwks), ...keysFromConfig([{ key: vectors.keys.hs256.secret, alg: 'HS256' }])])
}

function verifyCase (c: VectorCase, keys: VerificationKeys): { ok: true, claims: unknown } | { ok: false, reason: string, message: string } {
  try {
    // The raw request host: verify.ts canonicalizes it like the Ruby and Python verifiers do.
    const claims = verifyDescriptor(c.token, { keys, issuer: vectors.issuer, audience: vectors.audience, requestHost: c.request_host, leewayS: vectors.leeway, now: () => vectors.now * 1000 })
    return { ok: true, claims }
  } catch (err) {
    if (isDescriptorError(err) && isTpError(err, 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID')) return { ok: false, reason: err.reason, message: err.message }
    throw err
  }
}

t.test('every case through verify.ts', async (t) => {
  const keys = trustedKeys()
  for (const c of vectors.cases) {
    const r = verifyCase(c, keys)
    if (c.expect === 'valid') {
      t.ok(r.ok, `${c.name}: accepted`)
      if (r.ok) t.same(r.claims, c.claims, `${c.name}: claims`)
      continue
    }
    if (c.reason === null) throw new Error(`${c.name}: an invalid case needs a reason`)
    t.notOk(r.ok, `${c.name}: refused`)
    // The same reason code as the Ruby and Python verifiers: no case is refused for another reason.
    if (!r.ok) t.equal(r.reason, c.reason, `${c.name}: refused for ${c.reason} (${r.message})`)
  }
})

t.test('every case verifies the same way at any wall-clock time (the clock is injected)', async (t) => {
  // A token that is valid now would still verify once this file is years old: only `now` matters.
  const keys = trustedKeys()
  const c = vectors.cases.find((x) => x.name === 'valid ES256')
  if (c === undefined) throw new Error('no valid ES256 case')
  t.throws(() => verifyDescriptor(c.token, { keys, issuer: vectors.issuer, audience: vectors.audience, now: () => (vectors.now + 3600) * 1000 }), /expired/)
  t.ok(verifyCase(c, keys).ok)
})

t.test('the fixture is consistent', async (t) => {
  t.same(vectors.reasons, REASONS, 'reason codes as the generator defines them')
  t.same(DESCRIPTOR_REASONS, REASONS, 'verify.ts uses the same codes in the same order')
  const names = vectors.cases.map((c) => c.name)
  t.equal(new Set(names).size, names.length, 'case names are unique')
  for (const c of vectors.cases) {
    t.ok(c.expect === 'valid' ? c.reason === null && c.claims !== undefined : c.reason !== null && REASONS.includes(c.reason), `${c.name}: expect, reason and claims agree`)
  }
  for (const reason of REASONS) t.ok(vectors.cases.some((c) => c.reason === reason), `some case is refused for ${reason}`)

  for (const name of ['es256', 'es256_rotated', 'attacker'] as const) {
    const k = vectors.keys[name]
    const ring = loadKeyring([{ key: k.private_pem }])
    t.equal(ring.signer.kid, k.kid, `${name}: kid is the thumbprint of its key`)
    t.same(ring.jwks().keys[0], k.public_jwk, `${name}: public JWK as the proxy publishes it`)
    t.equal(jwkThumbprint({ kty: 'EC', crv: 'P-256', x: k.public_jwk.x ?? '', y: k.public_jwk.y ?? '' }), k.kid)
    const fromJwk = createPrivateKey({ key: k.private_jwk, format: 'jwk' })
    t.equal(fromJwk.export({ type: 'pkcs8', format: 'pem' }).toString(), createPrivateKey(k.private_pem).export({ type: 'pkcs8', format: 'pem' }).toString(), `${name}: private JWK and PEM are the same key`)
    t.equal(createPublicKey(k.public_pem).export({ format: 'jwk' }).x, k.public_jwk.x, `${name}: public PEM matches`)
  }
  const hsRing = loadKeyring([{ key: vectors.keys.hs256.secret, alg: 'HS256' }])
  t.equal(hsRing.signer.kid, vectors.keys.hs256.kid, 'HS256 kid is the thumbprint of the secret\'s JWK')
  t.ok(Buffer.byteLength(vectors.keys.hs256.secret) >= 32, 'HS256 secret is at least 32 bytes')
  t.same(vectors.jwks.keys.map((k) => k.kid), [vectors.keys.es256.kid, vectors.keys.es256_rotated.kid], 'the JWKS holds the primary and the rotated key')
  t.notOk(vectors.jwks.keys.some((k) => k.kid === vectors.keys.attacker.kid), 'the attacker key is not trusted')
  t.notOk(vectors.jwks.keys.some((k) => 'd' in k), 'the JWKS holds no private parts')

  const jwksOnly = keysFromJwks(vectors.jwks)
  for (const c of vectors.cases.filter((x) => x.expect === 'valid')) {
    const { header, claims } = decodeDescriptor(c.token)
    t.same(claims, c.claims, `${c.name}: claims field is the token's payload`)
    const keys = header.alg === 'HS256' ? keysFromConfig([{ key: vectors.keys.hs256.secret, alg: 'HS256' }]) : jwksOnly
    t.ok(verifyCase(c, keys).ok, `${c.name}: verifies with ${header.alg === 'HS256' ? 'the HS256 secret alone' : 'the JWKS in the file alone'}`)
  }
  const oversized = vectors.cases.find((c) => c.reason === 'too_large')
  t.ok(oversized !== undefined && Buffer.byteLength(oversized.token) > vectors.max_token_bytes, 'the oversized token is over the limit')
  t.ok(vectors.cases.filter((c) => c.reason !== 'too_large').every((c) => Buffer.byteLength(c.token) <= vectors.max_token_bytes), 'every other token is under it')
})
