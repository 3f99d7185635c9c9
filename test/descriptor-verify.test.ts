import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache, signDescriptor, type DescriptorClaims } from '../src/descriptor/sign.js'
import { decodeDescriptor, keysFromJwks, verifyDescriptor } from '../src/descriptor/verify.js'
import { isTpError } from '../src/errors.js'

const NOW = 1_800_000_000_000
const es = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const ring = loadKeyring([{ key: es() }])
const other = loadKeyring([{ key: es() }])
const hsRing = loadKeyring([{ key: 'z'.repeat(32), kid: ring.signer.kid }])
const claims = (over: Partial<DescriptorClaims> = {}): DescriptorClaims => ({ v: 1, iss: 'iss', aud: 'aud', sub: 'acme', host: 'acme.example.com', db: { name: 'acme', host: 'db', port: 5432 }, epoch: 1, iat: NOW / 1000, nbf: NOW / 1000, exp: NOW / 1000 + 60, ...over })
const opts = { keys: ring.verificationKeys, issuer: 'iss', audience: 'aud', host: 'acme.example.com', now: () => NOW }

function reason (token: string, o: Partial<typeof opts> = {}): string {
  try {
    verifyDescriptor(token, { ...opts, ...o })
  } catch (err) {
    if (isTpError(err, 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID')) return err.message
    throw err
  }
  return 'accepted'
}

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')

t.test('round trip', async (t) => {
  const token = new DescriptorCache({ keyring: ring, issuer: 'iss', audience: 'aud', ttlS: 60, refreshMarginS: 20, now: () => NOW }).get({ slug: 'acme', epoch: 1, db: { name: 'acme', host: 'db', port: 5432 } }, 'acme.example.com')
  t.match(verifyDescriptor(token, opts), { sub: 'acme', host: 'acme.example.com' })
  t.match(decodeDescriptor(token).header, { typ: 'tenant-db+jwt', alg: 'ES256' })
  t.match(verifyDescriptor(token, { ...opts, keys: keysFromJwks(ring.jwks()) }), { sub: 'acme' }, 'keys from the published JWKS')
})

t.test('every forgery and mismatch is refused with its reason', async (t) => {
  const good = signDescriptor(claims(), ring.signer)
  const [h, p, s] = good.split('.')
  t.match(reason(`${h}.${b64({ ...claims(), sub: 'globex' })}.${s}`), /bad signature/, 'tampered payload')
  t.match(reason(signDescriptor(claims(), other.signer)), /unknown kid/, 'signed by another key')
  const forgedInput = `${b64({ alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })}.${p}`
  t.match(reason(`${forgedInput}.${other.signer.sign(forgedInput)}`), /bad signature/, 'another key claiming our kid')
  t.match(reason(signDescriptor(claims(), hsRing.signer)), /alg "HS256" does not match the key's ES256/, 'alg confusion: HS256 under an ES256 kid')
  t.match(reason(`${b64({ alg: 'none', kid: ring.signer.kid, typ: 'tenant-db+jwt' })}.${p}.${s}`), /alg "none" does not match/, 'alg none')
  t.match(reason(`${b64({ alg: 'ES256', kid: ring.signer.kid, typ: 'JWT' })}.${p}.${s}`), /typ must be tenant-db\+jwt/)
  t.match(reason(signDescriptor(claims({ exp: NOW / 1000 - 6 }), ring.signer)), /expired/, 'expired beyond the 5 s leeway')
  t.equal(reason(signDescriptor(claims({ exp: NOW / 1000 - 4 }), ring.signer)), 'accepted', 'within leeway')
  t.match(reason(signDescriptor(claims({ nbf: NOW / 1000 + 30 }), ring.signer)), /not yet valid/)
  t.match(reason(signDescriptor(claims({ iss: 'evil' }), ring.signer)), /wrong issuer/)
  t.match(reason(signDescriptor(claims({ aud: 'other-app' }), ring.signer)), /wrong audience/)
  t.match(reason(good, { host: 'globex.example.com' }), /host claim "acme\.example\.com" does not match the request host "globex\.example\.com"/)
  t.match(reason(signDescriptor({ ...claims(), v: 2 } as unknown as DescriptorClaims, ring.signer)), /unsupported version/)
  t.match(reason(`${good}, ${good}`), /comma/, 'duplicated header joined with a comma')
  t.match(reason('garbage'), /three dot-separated parts/)
  t.match(reason('a.b'), /three dot-separated parts/)
  t.match(reason('!!.??.**'), /base64url/)
  t.match(reason(`${b64('x')}.${p}.${s}`), /header is not a JSON object/)
  t.match(reason(`${h}.${Buffer.from('{').toString('base64url')}.${s}`), /payload is not JSON/)
})
