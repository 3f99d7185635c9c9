/**
 * Descriptor verification, for Node apps behind the proxy and for `tenant-proxy descriptor
 * decode`. It applies every rule of docs/descriptor.md: pinned algorithm per key, typ, v, iss,
 * aud, time window with leeway, host, and no comma-joined duplicates.
 */
import { createPublicKey, createHmac, timingSafeEqual, verify, type KeyObject } from 'node:crypto'
import { tpError } from '../errors.js'
import { DESCRIPTOR_TYP, type DescriptorAlg } from './keyring.js'
import type { DescriptorClaims } from './sign.js'

/** Keys by kid, each pinned to one algorithm. */
export type VerificationKeys = ReadonlyMap<string, { alg: DescriptorAlg, key: KeyObject }>

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
  leewayS?: number
  now?: () => number
}

const B64URL = /^[A-Za-z0-9_-]*$/

/** Splits and parses a compact JWS without verifying it. */
export function decodeDescriptor (token: string): DecodedDescriptor {
  // Duplicated headers arrive joined with ", ": never pick one of several descriptors.
  if (token.includes(',')) invalid('value contains a comma (duplicated header)')
  const parts = token.split('.')
  if (parts.length !== 3) invalid('not a compact JWS (expected three dot-separated parts)')
  const [h = '', p = '', s = ''] = parts
  if (!B64URL.test(h) || !B64URL.test(p) || !B64URL.test(s) || h === '' || p === '' || s === '') invalid('parts must be non-empty unpadded base64url')
  const header = parseJson(h, 'header')
  const claims = parseJson(p, 'payload')
  return { header, claims, signingInput: `${h}.${p}`, signature: Buffer.from(s, 'base64url') }
}

/** Verifies a descriptor and returns its claims; throws TENANT_PROXY_ERR_DESCRIPTOR_INVALID with the failed check. */
export function verifyDescriptor (token: string, opts: VerifyOptions): DescriptorClaims {
  const d = decodeDescriptor(token)
  const { header, claims } = d
  if (header.typ !== DESCRIPTOR_TYP) invalid(`typ must be ${DESCRIPTOR_TYP}`)
  if (typeof header.kid !== 'string') invalid('missing kid')
  const entry = opts.keys.get(header.kid)
  if (entry === undefined) invalid(`unknown kid ${JSON.stringify(header.kid)}`)
  // The key decides the algorithm, never the token: this defeats alg "none" and HS256-with-a-public-key.
  if (header.alg !== entry.alg) invalid(`alg ${JSON.stringify(header.alg)} does not match the key's ${entry.alg}`)
  if (!signatureValid(entry.alg, entry.key, d.signingInput, d.signature)) invalid('bad signature')

  if (claims.v !== 1) invalid('unsupported version v')
  if (claims.iss !== opts.issuer) invalid('wrong issuer (iss)')
  if (claims.aud !== opts.audience) invalid('wrong audience (aud)')
  const now = Math.floor((opts.now ?? Date.now)() / 1000)
  const leeway = opts.leewayS ?? 5
  if (typeof claims.exp !== 'number' || now > claims.exp + leeway) invalid('expired (exp)')
  if (typeof claims.nbf !== 'number' || now < claims.nbf - leeway) invalid('not yet valid (nbf)')
  if (typeof claims.iat !== 'number') invalid('missing iat')
  if (typeof claims.sub !== 'string' || typeof claims.host !== 'string' || typeof claims.epoch !== 'number') invalid('missing sub, host or epoch')
  const db = claims.db as { name?: unknown, host?: unknown, port?: unknown } | undefined
  if (typeof db !== 'object' || db === null || typeof db.name !== 'string' || typeof db.host !== 'string' || typeof db.port !== 'number') invalid('malformed db claim')
  if (opts.host !== undefined && claims.host !== opts.host) invalid(`host claim ${JSON.stringify(claims.host)} does not match the request host ${JSON.stringify(opts.host)}`)
  return claims as unknown as DescriptorClaims
}

/** Verification keys from a JWKS (EC P-256 keys with kid; others are ignored). */
export function keysFromJwks (jwks: { keys?: unknown }): Map<string, { alg: DescriptorAlg, key: KeyObject }> {
  const out = new Map<string, { alg: DescriptorAlg, key: KeyObject }>()
  if (!Array.isArray(jwks.keys)) invalid('key set has no "keys" list')
  for (const jwk of jwks.keys as Array<Record<string, unknown>>) {
    if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.kid !== 'string') continue
    const key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: String(jwk.x), y: String(jwk.y) }, format: 'jwk' })
    out.set(jwk.kid, { alg: 'ES256', key })
  }
  return out
}

function signatureValid (alg: DescriptorAlg, key: KeyObject, input: string, signature: Buffer): boolean {
  if (alg === 'HS256') {
    const expected = createHmac('sha256', key.export()).update(input).digest()
    return expected.length === signature.length && timingSafeEqual(expected, signature)
  }
  if (signature.length !== 64) return false
  return verify('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }, signature)
}

function parseJson (b64: string, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(b64, 'base64url').toString('utf8'))
  } catch {
    invalid(`${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalid(`${what} is not a JSON object`)
  return value as Record<string, unknown>
}

function invalid (reason: string): never {
  throw tpError('TENANT_PROXY_ERR_DESCRIPTOR_INVALID', [reason])
}
