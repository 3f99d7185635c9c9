/**
 * Descriptor verification, for Node apps behind the proxy and for `tenant-proxy descriptor
 * decode`. It applies every rule of docs/descriptor.md: pinned algorithm per key, typ, v, iss,
 * aud, time window with leeway, host, and no comma-joined duplicates.
 */
import { createHmac, createPublicKey, timingSafeEqual, verify, type KeyObject } from 'node:crypto'
import { tpError } from '../errors.js'
import { DESCRIPTOR_TYP, type VerificationKey } from './keyring.js'
import type { DescriptorClaims } from './sign.js'

export { keysFromConfig } from './keyring.js'

/** Keys by kid, each pinned to one algorithm. */
export type VerificationKeys = ReadonlyMap<string, VerificationKey>

/** A decoded (not verified) descriptor. */
export interface DecodedDescriptor {
  header: Record<string, unknown>
  claims: Record<string, unknown>
  signingInput: string
  signature: Buffer
}

/** Options of verifyDescriptor. */
export interface VerifyOptions {
  keys: VerificationKeys
  issuer: string
  audience: string
  /** The request's canonical host; checked against the `host` claim when given. */
  host?: string | undefined
  /** Clock skew allowed on exp and nbf, in seconds (default 5). */
  leewayS?: number
  /** Clock in ms (tests inject one). */
  now?: () => number
}

/** Default clock skew allowance, in seconds. */
export const DEFAULT_LEEWAY_S = 5

const B64URL = /^[A-Za-z0-9_-]+$/

/** Splits and parses a compact JWS without verifying it. */
export function decodeDescriptor (token: string): DecodedDescriptor {
  if (typeof token !== 'string' || token === '') invalid('empty value')
  // Duplicated headers arrive joined with ", ": never pick one of several descriptors.
  if (token.includes(',')) invalid('value contains a comma (duplicated header)')
  const parts = token.split('.')
  if (parts.length !== 3) invalid('not a compact JWS (expected three dot-separated parts)')
  const [h = '', p = '', s = ''] = parts
  const header = parseJson(decodePart(h, 'header'), 'header')
  const claims = parseJson(decodePart(p, 'payload'), 'payload')
  // An unsecured JWS (alg "none", RFC 7515 appendix A.5) has an empty signature: decode it so the
  // verifier can refuse it by its alg, with a reason that says so.
  return { header, claims, signingInput: `${h}.${p}`, signature: s === '' ? Buffer.alloc(0) : decodePart(s, 'signature') }
}

/** Verifies a descriptor and returns its claims; throws TENANT_PROXY_ERR_DESCRIPTOR_INVALID with the failed check. */
export function verifyDescriptor (token: string, opts: VerifyOptions): DescriptorClaims {
  const d = decodeDescriptor(token)
  const { header, claims } = d
  if (header.typ !== DESCRIPTOR_TYP) invalid(`typ must be ${DESCRIPTOR_TYP}, got ${JSON.stringify(header.typ)}`)
  // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
  if (header.crit !== undefined) invalid('crit header parameter is not supported')
  if (typeof header.kid !== 'string') invalid('missing kid')
  const entry = opts.keys.get(header.kid)
  if (entry === undefined) invalid(`unknown kid ${JSON.stringify(header.kid)}`)
  // The key decides the algorithm, never the token (RFC 8725 section 3.1): this defeats alg
  // "none" and HS256 signed with the ES256 public key as the HMAC secret.
  if (header.alg !== entry.alg) invalid(`alg ${JSON.stringify(header.alg)} does not match the key's ${entry.alg}`)
  if (!signatureValid(entry, header.kid, d.signingInput, d.signature)) invalid('bad signature')

  if (claims.v !== 1) invalid(`unsupported version v ${JSON.stringify(claims.v)}`)
  if (claims.iss !== opts.issuer) invalid(`wrong issuer (iss ${JSON.stringify(claims.iss)})`)
  // aud is one string in descriptor v1; an array is refused rather than searched.
  if (claims.aud !== opts.audience) invalid(`wrong audience (aud ${JSON.stringify(claims.aud)})`)
  if (typeof claims.exp !== 'number' || typeof claims.nbf !== 'number' || typeof claims.iat !== 'number') invalid('exp, nbf and iat must be numbers')
  const nowMs = (opts.now ?? Date.now)()
  const leewayMs = (opts.leewayS ?? DEFAULT_LEEWAY_S) * 1000
  // RFC 7519 section 4.1.4: the current time must be BEFORE exp; 4.1.5: not before nbf.
  if (nowMs >= claims.exp * 1000 + leewayMs) invalid(`expired (exp ${claims.exp}, now ${Math.floor(nowMs / 1000)})`)
  if (nowMs < claims.nbf * 1000 - leewayMs) invalid(`not yet valid (nbf ${claims.nbf}, now ${Math.floor(nowMs / 1000)})`)
  if (typeof claims.sub !== 'string' || typeof claims.host !== 'string' || typeof claims.epoch !== 'number') invalid('sub, host and epoch are required')
  const db = claims.db as { name?: unknown, host?: unknown, port?: unknown } | null | undefined
  if (typeof db !== 'object' || db === null || typeof db.name !== 'string' || typeof db.host !== 'string' || typeof db.port !== 'number') invalid('malformed db claim')
  if (opts.host !== undefined && claims.host !== opts.host) invalid(`host claim ${JSON.stringify(claims.host)} does not match the request host ${JSON.stringify(opts.host)}`)
  return claims as unknown as DescriptorClaims
}

/** Verification keys from a JWKS such as /.well-known/tenant-proxy/jwks.json (EC P-256 signing keys with a kid; others are skipped). */
export function keysFromJwks (jwks: { keys?: unknown }): Map<string, VerificationKey> {
  const out = new Map<string, VerificationKey>()
  if (typeof jwks !== 'object' || jwks === null || !Array.isArray(jwks.keys)) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', ['jwks', 'has no "keys" list'])
  for (const [i, item] of (jwks.keys as unknown[]).entries()) {
    if (typeof item !== 'object' || item === null) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`jwks.keys[${i}]`, 'is not an object'])
    const jwk = item as Record<string, unknown>
    // RFC 7517 sections 4.2 and 4.4: a key marked for encryption or another alg is not ours to verify with.
    if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.kid !== 'string') continue
    if ((jwk.use !== undefined && jwk.use !== 'sig') || (jwk.alg !== undefined && jwk.alg !== 'ES256')) continue
    if (out.has(jwk.kid)) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`jwks.keys[${i}]`, `duplicate kid ${JSON.stringify(jwk.kid)}`])
    let key: KeyObject
    try {
      key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: String(jwk.x), y: String(jwk.y) }, format: 'jwk' })
    } catch (err) {
      throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`jwks.keys[${i}]`, 'x and y are not a point on P-256'], err)
    }
    out.set(jwk.kid, { alg: 'ES256', key })
  }
  return out
}

function decodePart (b64: string, what: string): Buffer {
  // RFC 7515 section 2: unpadded base64url. Re-encoding must give the same text, so a token has
  // one spelling only (no stray trailing bits that decode to the same bytes).
  if (!B64URL.test(b64)) invalid(`${what} is not unpadded base64url`)
  const bytes = Buffer.from(b64, 'base64url')
  if (bytes.toString('base64url') !== b64) invalid(`${what} is not canonical base64url`)
  return bytes
}

function signatureValid (entry: VerificationKey, kid: string, input: string, signature: Buffer): boolean {
  const { alg, key } = entry
  if (alg === 'HS256') {
    // A caller-built map could pin HS256 to a public key: HMAC keyed with it is the classic alg confusion.
    if (key.type !== 'secret') keyUnusable(kid, 'HS256 needs a secret key')
    const expected = createHmac('sha256', key).update(input).digest()
    return expected.length === signature.length && timingSafeEqual(expected, signature)
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') keyUnusable(kid, 'ES256 needs an EC P-256 key')
  // RFC 7518 section 3.4: the signature is r||s, 32 bytes each.
  if (signature.length !== 64) return false
  return verify('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }, signature)
}

function parseJson (bytes: Buffer, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(bytes.toString('utf8'))
  } catch {
    invalid(`${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalid(`${what} is not a JSON object`)
  return value as Record<string, unknown>
}

function invalid (reason: string): never {
  throw tpError('TENANT_PROXY_ERR_DESCRIPTOR_INVALID', [reason])
}

function keyUnusable (kid: string, reason: string): never {
  throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`kid ${JSON.stringify(kid)}`, reason])
}
