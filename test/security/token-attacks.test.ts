/**
 * Token attacks against the Node verifier (@tenant-proxy/verify) with live tokens from running
 * proxies. (The same attacks as fixed tokens are in test/fixtures/descriptor-vectors.json, which
 * the Node, Ruby and Python suites all run.) Two proxies share one signing key but serve two apps
 * (audiences billing and shop): the ALBeast shape, a token for app A replayed to app B.
 *
 * Guards: src/descriptor/verify.ts checkHeader (typ, forbidden jwk/jku/x5u/x5c/crit, kid),
 * checkSigned (alg pinned to the key, signature, iss, aud, times, host) and decodeDescriptor
 * (comma, 8 KiB cap, canonical base64url). Remove a check and its case is accepted.
 */
import { createHmac, createPublicKey } from 'node:crypto'
import t from 'tap'
import { request } from 'undici'
import { createVerifier, isDescriptorError, type DescriptorVerifier } from '@tenant-proxy/verify'
import { loadKeyring } from '../../src/descriptor/keyring.js'
import { signDescriptor, type DescriptorClaims } from '../../src/descriptor/sign.js'
import { es256Pem, startTestProxy, testConfig, testRegistry } from '../helpers/proxy.js'
import { startUpstream } from '../helpers/upstream.js'

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')

t.test('live tokens: forgeries, replays across apps and hosts, tampering, time', async (t) => {
  const pem = es256Pem()
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }])
  const upstream = await startUpstream(t)
  const env = { TENANT_PROXY_DESCRIPTOR_KEYS: pem, TENANT_PROXY_DEPLOYMENT_ID: 'shop-production' }
  const billing = await startTestProxy(t, testConfig(registry.url, upstream.origin, { ...env, TENANT_PROXY_DESCRIPTOR_AUDIENCE: 'billing' }))
  const shop = await startTestProxy(t, testConfig(registry.url, upstream.origin, { ...env, TENANT_PROXY_DESCRIPTOR_AUDIENCE: 'shop' }))
  const live = async (proxy: typeof shop, host: string): Promise<string> => {
    const n = upstream.seen.length
    await (await request(`${proxy.url}/`, { headers: { host } })).body.dump()
    return String(upstream.seen[n]?.headers['x-tenant-descriptor'])
  }
  const ring = loadKeyring([{ key: pem }])
  const jwks = ring.jwks()
  let nowMs = Date.now()
  const shopVerifier = createVerifier({ keys: jwks }, { issuer: 'shop-production', audience: 'shop', now: () => nowMs })
  const reason = async (v: DescriptorVerifier, token: string, host = 'acme.example.com'): Promise<string> => {
    try {
      await v.verify(token, host)
      return 'valid'
    } catch (err) {
      if (isDescriptorError(err)) return err.reason
      throw err
    }
  }

  const good = await live(shop, 'acme.example.com')
  const [h = '', p = '', s = ''] = good.split('.')
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as DescriptorClaims
  const header = JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>
  const attacker = loadKeyring([{ key: es256Pem() }])
  const attackerSigned = (hdr: Record<string, unknown>, c: unknown = claims): string => {
    const input = `${b64(hdr)}.${b64(c)}`
    return `${input}.${attacker.signer.sign(input)}`
  }
  const ourSigned = (c: Partial<DescriptorClaims>, hdr?: Record<string, unknown>): string => {
    const signer = hdr === undefined ? ring.signer : { ...ring.signer, headerB64: b64(hdr) }
    return signDescriptor({ ...claims, ...c }, signer)
  }
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString()
  const hsInput = `${b64({ ...header, alg: 'HS256' })}.${p}`

  const cases: Array<[string, string, string, string?]> = [
    ['the live token itself', good, 'valid'],
    ["app A's token (aud billing) sent to app B (shop)", await live(billing, 'acme.example.com'), 'audience'],
    ["acme's token on globex's host", good, 'host_mismatch', 'globex.example.com'],
    ['alg none, our kid, no signature', `${b64({ ...header, alg: 'none' })}.${p}.`, 'alg'],
    ['HS256 keyed with the ES256 public key PEM', `${hsInput}.${createHmac('sha256', spki).update(hsInput).digest('base64url')}`, 'alg'],
    ['HS256 keyed with the JWKS entry', `${hsInput}.${createHmac('sha256', JSON.stringify(jwks.keys[0])).update(hsInput).digest('base64url')}`, 'alg'],
    ['swapped kid (attacker key, our kid)', attackerSigned(header), 'bad_signature'],
    ['embedded jwk (attacker key, our kid)', attackerSigned({ ...header, jwk: attacker.jwks().keys[0] }), 'forbidden_header'],
    ['jku pointing at the attacker', attackerSigned({ ...header, jku: 'http://127.0.0.1:1/jwks.json' }), 'forbidden_header'],
    ['x5u', attackerSigned({ ...header, x5u: 'http://127.0.0.1:1/cert.pem' }), 'forbidden_header'],
    ['x5c', attackerSigned({ ...header, x5c: ['MIIB'] }), 'forbidden_header'],
    ['attacker kid', attackerSigned({ ...header, kid: attacker.signer.kid }), 'unknown_kid'],
    ['wrong typ (JWT), our key', ourSigned({}, { ...header, typ: 'JWT' }), 'typ'],
    ['wrong iss, our key', ourSigned({ iss: 'shop-staging' }), 'issuer'],
    ['expired, our key', ourSigned({ iat: claims.iat - 600, nbf: claims.iat - 600, exp: claims.iat - 60 }), 'expired'],
    ['nbf in the future, our key', ourSigned({ nbf: claims.iat + 60, exp: claims.exp + 60 }), 'not_yet_valid'],
    ['tampered payload (tenant globex)', `${h}.${b64({ ...claims, sub: 'globex', db: { ...claims.db, name: 'globex' } })}.${s}`, 'bad_signature'],
    ['tampered header (kid kept, extra member)', `${b64({ ...header, x: 1 })}.${p}.${s}`, 'bad_signature'],
    ['padded base64url', `${good}=`, 'malformed'],
    ['two tokens joined', `${good},${good}`, 'comma'],
    ['oversized (> 8 KiB)', ourSigned({ sub: 'a'.repeat(9000) }), 'too_large']
  ]
  for (const [name, token, expected, host] of cases) t.equal(await reason(shopVerifier, token, host), expected, name)

  // Time: the same live token after its exp (+ 5 s leeway) is refused.
  nowMs = (claims.exp + 5) * 1000
  t.equal(await reason(shopVerifier, good), 'expired', 'the live token after exp + leeway')
  nowMs = (claims.exp + 4) * 1000
  t.equal(await reason(shopVerifier, good), 'valid', 'within the leeway')
})
