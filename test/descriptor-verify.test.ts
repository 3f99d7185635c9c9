import { createHmac, createSecretKey, generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache, signDescriptor, type DescriptorClaims } from '../src/descriptor/sign.js'
import { decodeDescriptor, keysFromConfig, keysFromJwks, verifyDescriptor, type VerifyOptions } from '../src/descriptor/verify.js'
import { isTpError, type ErrorCode } from '../src/errors.js'

const NOW = 1_800_000_000_000
const T = NOW / 1000
const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const ring = loadKeyring([{ key: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }])
const other = loadKeyring([{ key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }])
const SECRET = 'z'.repeat(32)
const hsRing = loadKeyring([{ key: SECRET, kid: 'hs', alg: 'HS256' }])
const claims = (over: Partial<DescriptorClaims> = {}): DescriptorClaims => ({ v: 1, iss: 'iss', aud: 'aud', sub: 'acme', host: 'acme.example.com', db: { name: 'acme', host: 'db', port: 5432 }, epoch: 1, iat: T, nbf: T, exp: T + 60, ...over })
const opts: VerifyOptions = { keys: ring.verificationKeys, issuer: 'iss', audience: 'aud', host: 'acme.example.com', now: () => NOW }

/** 'accepted', or the message of the catalogue error (`code`) verification throws. */
function reason (token: string, o: Partial<VerifyOptions> = {}, code: ErrorCode = 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID'): string {
  try {
    verifyDescriptor(token, { ...opts, ...o })
  } catch (err) {
    if (isTpError(err, code)) return err.message
    throw err
  }
  return 'accepted'
}

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
const header = (over: Record<string, unknown> = {}): string => b64({ alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt', ...over })
const B64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
// A 64-byte signature leaves 4 unused low bits in its last character; setting one keeps the bytes.
const setLowBit = (c: string): string => B64URL_ALPHABET[B64URL_ALPHABET.indexOf(c) | 1] ?? c
const hmac = (key: string | Buffer, input: string): string => createHmac('sha256', key).update(input).digest('base64url')

t.test('round trip: cache → verify, with keyring keys, the published JWKS and configured keys', async (t) => {
  const token = new DescriptorCache({ keyring: ring, issuer: 'iss', audience: 'aud', ttlS: 60, refreshMarginS: 20, now: () => NOW }).get({ slug: 'acme', epoch: 1, db: { name: 'acme', host: 'db', port: 5432 } }, 'acme.example.com')
  t.same(verifyDescriptor(token, opts), claims())
  const decoded = decodeDescriptor(token)
  t.same(decoded.header, { alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
  t.same(decoded.claims, claims())
  t.equal(decoded.signingInput, token.split('.').slice(0, 2).join('.'))
  t.equal(decoded.signature.length, 64)
  t.same(verifyDescriptor(token, { ...opts, keys: keysFromJwks(ring.jwks()) }), claims(), 'keys from the published JWKS')
  const publicPem = pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  t.same(verifyDescriptor(token, { ...opts, keys: keysFromConfig([{ key: publicPem, kid: ring.signer.kid }]) }), claims(), 'a public PEM from config')
  t.equal(reason(token, { host: undefined }), 'accepted', 'host is only compared when given')
  const hs = signDescriptor(claims(), hsRing.signer)
  t.same(verifyDescriptor(hs, { ...opts, keys: hsRing.verificationKeys }), claims(), 'HS256')
  t.same(verifyDescriptor(hs, { ...opts, keys: keysFromConfig([{ key: SECRET, kid: 'hs', alg: 'HS256' }]) }), claims(), 'HS256 from a configured secret')
})

t.test('forgeries are refused with their reason', async (t) => {
  const good = signDescriptor(claims(), ring.signer)
  const [h = '', p = '', s = ''] = good.split('.')
  t.match(reason(`${h}.${b64({ ...claims(), sub: 'globex' })}.${s}`), /^descriptor rejected: bad signature$/, 'tampered payload')
  t.match(reason(`${header({ extra: 1 })}.${p}.${s}`), /bad signature/, 'tampered header')
  t.match(reason(signDescriptor(claims(), other.signer)), /unknown kid "/, 'signed by a key we do not know')
  const forged = `${h}.${p}`
  t.match(reason(`${forged}.${other.signer.sign(forged)}`), /bad signature/, 'another key claiming our kid')
  t.match(reason(`${forged}.${Buffer.alloc(64).toString('base64url')}`), /bad signature/, 'all-zero signature')
  t.match(reason(`${forged}.${s.slice(0, 40)}`), /bad signature|not canonical/, 'truncated signature')

  // Alg confusion (RFC 8725 section 2.1): HMAC keyed with the public key the app holds.
  const spkiPem = pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const spkiDer = pair.publicKey.export({ type: 'spki', format: 'der' })
  for (const [name, secret] of [['PEM', spkiPem], ['DER', spkiDer]] as const) {
    const input = `${header({ alg: 'HS256' })}.${p}`
    t.match(reason(`${input}.${hmac(secret, input)}`), /alg "HS256" does not match the key's ES256/, `HS256 signed with the public key (${name})`)
  }
  t.match(reason(signDescriptor(claims(), loadKeyring([{ key: SECRET, kid: ring.signer.kid, alg: 'HS256' }]).signer)), /alg "HS256" does not match the key's ES256/, 'HS256 under an ES256 kid')
  t.match(reason(signDescriptor(claims(), ring.signer), { keys: hsRing.verificationKeys }), /unknown kid/, 'ES256 token, HS256-only verifier')
  const esUnderHsKid = `${header({ kid: 'hs' })}.${p}`
  t.match(reason(`${esUnderHsKid}.${ring.signer.sign(esUnderHsKid)}`, { keys: hsRing.verificationKeys }), /alg "ES256" does not match the key's HS256/)

  // A verifier map built by hand that pins HS256 to a public key is refused, not used as an HMAC key.
  const confused = new Map([[ring.signer.kid, { alg: 'HS256' as const, key: pair.publicKey }]])
  const input = `${header({ alg: 'HS256' })}.${p}`
  t.match(reason(`${input}.${hmac(spkiPem, input)}`, { keys: confused }, 'TENANT_PROXY_ERR_KEY_INVALID'), /HS256 needs a secret key/)
  const esWithSecret = new Map([[ring.signer.kid, { alg: 'ES256' as const, key: createSecretKey(Buffer.from(SECRET)) }]])
  t.match(reason(good, { keys: esWithSecret }, 'TENANT_PROXY_ERR_KEY_INVALID'), /ES256 needs an EC P-256 key/)

  for (const none of [`${header({ alg: 'none' })}.${p}.`, `${header({ alg: 'none' })}.${p}.${s}`, `${header({ alg: 'NONE' })}.${p}.`]) {
    t.match(reason(none), /alg "(none|NONE)" does not match the key's ES256/, 'alg none')
  }
  t.match(reason(`${header({ alg: undefined })}.${p}.${s}`), /alg undefined does not match/, 'missing alg')
  t.match(reason(`${header({ kid: undefined })}.${p}.${s}`), /missing kid/)
  t.match(reason(`${header({ crit: ['exp'] })}.${p}.${s}`), /crit header parameter is not supported/)
})

t.test('claims: type, version, issuer, audience, host', async (t) => {
  const [, p = '', s = ''] = signDescriptor(claims(), ring.signer).split('.')
  t.match(reason(`${header({ typ: 'JWT' })}.${p}.${s}`), /typ must be tenant-db\+jwt, got "JWT"/)
  t.match(reason(`${header({ typ: undefined })}.${p}.${s}`), /typ must be tenant-db\+jwt, got undefined/)
  t.match(reason(signDescriptor({ ...claims(), v: 2 } as unknown as DescriptorClaims, ring.signer)), /unsupported version v 2/)
  t.match(reason(signDescriptor(claims({ iss: 'evil' }), ring.signer)), /wrong issuer \(iss "evil"\)/)
  t.match(reason(signDescriptor(claims({ aud: 'other-app' }), ring.signer)), /wrong audience \(aud "other-app"\)/)
  t.match(reason(signDescriptor({ ...claims(), aud: ['aud'] } as unknown as DescriptorClaims, ring.signer)), /wrong audience/, 'aud must be one string')
  t.match(reason(signDescriptor(claims(), ring.signer), { host: 'globex.example.com' }), /host claim "acme\.example\.com" does not match the request host "globex\.example\.com"/)
  t.match(reason(signDescriptor(claims(), ring.signer), { host: 'ACME.example.com' }), /does not match the request host/, 'hosts are compared canonical, exactly')
  t.match(reason(signDescriptor({ ...claims(), db: { name: 'acme' } } as unknown as DescriptorClaims, ring.signer)), /malformed db claim/)
  t.match(reason(signDescriptor({ ...claims(), sub: undefined } as unknown as DescriptorClaims, ring.signer)), /sub and host must be strings, epoch an integer/)
  t.match(reason(signDescriptor({ ...claims(), exp: '9999999999' } as unknown as DescriptorClaims, ring.signer)), /exp, nbf and iat must be integers from 0 to 2\^53-1/)
})

t.test('time window: exp and nbf with leeway (default 5 s)', async (t) => {
  const at = (c: Partial<DescriptorClaims>, o: Partial<VerifyOptions> = {}): string => reason(signDescriptor(claims(c), ring.signer), o)
  t.match(at({ exp: T - 6 }), /expired \(exp 1799999994, now 1800000000\)/, 'expired beyond the leeway')
  t.match(at({ exp: T - 5 }), /expired/, 'exactly at exp + leeway is expired (RFC 7519: now must be before exp)')
  t.equal(at({ exp: T - 4 }), 'accepted', 'within the leeway')
  t.equal(at({ exp: T + 1 }, { leewayS: 0 }), 'accepted')
  t.match(at({ exp: T }, { leewayS: 0 }), /expired/, 'no leeway: expired at exp')
  t.match(at({ nbf: T + 30 }), /not yet valid \(nbf 1800000030, now 1800000000\)/, 'nbf in the future')
  t.match(at({ nbf: T + 6 }), /not yet valid/, 'nbf beyond the leeway')
  t.equal(at({ nbf: T + 5 }), 'accepted', 'nbf within the leeway')
  t.match(at({ nbf: T + 1 }, { leewayS: 0 }), /not yet valid/)
})

t.test('malformed values are refused before any key is used', async (t) => {
  const good = signDescriptor(claims(), ring.signer)
  const [h = '', p = '', s = ''] = good.split('.')
  const cases: Array<[string, string, RegExp]> = [
    ['comma-joined duplicate', `${good}, ${good}`, /value contains a comma \(duplicated header\)/],
    ['comma-joined, no space', `${good},${good}`, /comma/],
    ['empty', '', /empty value/],
    ['garbage', 'garbage', /not a compact JWS \(expected three dot-separated parts\)/],
    ['two parts', `${h}.${p}`, /three dot-separated parts/],
    ['four parts', `${good}.x`, /three dot-separated parts/],
    ['JWE-like five parts', `${h}..${p}..${s}`, /three dot-separated parts/],
    ['not base64url', '!!.??.**', /header is not unpadded base64url/],
    ['standard base64 alphabet', `${h}.${p}.${s.replace(/[-_]/g, '+')}+/`, /signature is not unpadded base64url/],
    ['padded', `${h}=.${p}.${s}`, /header is not unpadded base64url/],
    ['whitespace', ` ${good}`, /header is not unpadded base64url/],
    ['non-canonical trailing bits (same bytes, another spelling)', `${h}.${p}.${s.slice(0, -1)}${setLowBit(s.at(-1) ?? 'A')}`, /signature is not canonical base64url/],
    ['impossible length', `${h}.${p}.${s}AAA`, /signature is not canonical base64url/],
    ['empty header', `.${p}.${s}`, /header is not unpadded base64url/],
    ['empty payload', `${h}..${s}`, /payload is not unpadded base64url/],
    ['header is a JSON string', `${b64('x')}.${p}.${s}`, /header is not a JSON object/],
    ['header is a JSON array', `${b64([1])}.${p}.${s}`, /header is not a JSON object/],
    ['payload is null', `${h}.${b64(null)}.${s}`, /payload is not a JSON object/],
    ['payload is not JSON', `${h}.${Buffer.from('{').toString('base64url')}.${s}`, /payload is not JSON/]
  ]
  for (const [name, token, expected] of cases) t.match(reason(token), expected, name)
  t.throws(() => decodeDescriptor(`${good}, ${good}`), { code: 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID' }, 'decode alone refuses duplicates too')
  t.throws(() => decodeDescriptor(undefined as unknown as string), { code: 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID' }, 'a missing header value')
})

t.test('keysFromJwks: EC P-256 signing keys only; bad entries are named', async (t) => {
  const [published] = ring.jwks().keys
  if (published === undefined) throw new Error('no published key')
  const keys = keysFromJwks({
    keys: [
      published,
      { kty: 'oct', k: 'c2VjcmV0', kid: 'oct' },
      { ...published, kid: 'enc', use: 'enc' },
      { ...published, kid: 'es384', alg: 'ES384' },
      { ...published, kid: undefined }
    ]
  })
  t.same([...keys.keys()], [ring.signer.kid])
  const refused = (jwks: { keys?: unknown }): string => {
    try {
      keysFromJwks(jwks)
    } catch (err) {
      if (isTpError(err, 'TENANT_PROXY_ERR_KEY_INVALID')) return err.message
      throw err
    }
    return 'accepted'
  }
  t.match(refused({}), /jwks: has no "keys" list/)
  t.match(refused({ keys: [published, null] }), /jwks\.keys\[1\]: is not an object/)
  t.match(refused({ keys: [published, published] }), /jwks\.keys\[1\]: duplicate kid/)
  t.match(refused({ keys: [{ ...published, x: published.y }] }), /jwks\.keys\[0\]: x and y are not a point on P-256/)
})
