/**
 * The ordered checks of docs/descriptor.md ("What a verifier must check, in this order"): the
 * first that fails decides the reason code, the same in every verifier. The signature is checked
 * by jose, with the algorithm the key is pinned to (never the token's).
 */
import { compactVerify, errors as joseErrors } from 'jose'
import { refuse } from './errors.js'
import { canonicalHost } from './host.js'
import type { VerificationKey } from './keys.js'

/** The descriptor's JOSE `typ` (RFC 8725 section 3.11, explicit typing). */
export const DESCRIPTOR_TYP = 'tenant-db+jwt'
/** Largest accepted value in bytes, checked before any decoding: the proxy's are under 1 KiB. */
export const MAX_TOKEN_BYTES = 8192
/**
 * Header parameters refused outright: `crit` demands extensions nobody implements (RFC 7515
 * section 4.1.11); `jwk`, `jku`, `x5u`, `x5c` let a token name its own key (RFC 8725 section 3.10).
 */
export const FORBIDDEN_HEADERS = ['crit', 'jwk', 'jku', 'x5u', 'x5c'] as const
/** The largest numeric date, epoch and the like: the largest integer every JSON parser holds exactly. */
export const MAX_SAFE = Number.MAX_SAFE_INTEGER

/** Descriptor v1 claims (docs/descriptor.md). */
export interface DescriptorClaims {
  v: 1
  iss: string
  aud: string
  sub: string
  host: string
  db: { name: string, host: string, port: number }
  epoch: number
  iat: number
  nbf: number
  exp: number
}

export interface Decoded {
  token: string
  header: Record<string, unknown>
  claims: Record<string, unknown>
}

export interface ClaimOptions {
  issuer: string
  audience: string
  leewayS: number
  nowMs: number
  requestHost: string
}

const B64URL = /^[A-Za-z0-9_-]+$/
/** Invalid UTF-8 is malformed (as in Python and Ruby), not silently replaced by U+FFFD. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** Checks 1 to 4: one value, no comma, the size cap, three canonical base64url parts of JSON objects. */
export function decode (token: string): Decoded {
  if (typeof token !== 'string' || token === '') refuse('malformed', 'empty value')
  // Intermediaries join a duplicated header with ", ": never pick one of several descriptors.
  if (token.includes(',')) refuse('comma', 'value contains a comma (duplicated header)')
  if (Buffer.byteLength(token, 'utf8') > MAX_TOKEN_BYTES) refuse('too_large', `value over ${MAX_TOKEN_BYTES} bytes`)
  const parts = token.split('.')
  if (parts.length !== 3) refuse('malformed', 'not a compact JWS (three dot-separated parts)')
  const [h = '', p = '', s = ''] = parts
  const header = jsonObject(part(h, 'header'), 'header')
  const claims = jsonObject(part(p, 'payload'), 'payload')
  // An empty signature (alg "none", RFC 7515 appendix A.5) is refused by its alg, with that reason.
  if (s !== '') part(s, 'signature')
  return { token, header, claims }
}

/** Checks 5 to 7 without the lookup: typ, forbidden parameters, a kid. */
export function checkHeader (header: Record<string, unknown>): string {
  if (header.typ !== DESCRIPTOR_TYP) refuse('typ', `typ must be ${DESCRIPTOR_TYP}`)
  for (const name of FORBIDDEN_HEADERS) {
    // A key named by the token itself is the attacker's key: never look at it, refuse the token.
    if (Object.hasOwn(header, name)) refuse('forbidden_header', `${name} header parameter is not accepted`)
  }
  if (typeof header.kid !== 'string') refuse('unknown_kid', 'missing kid')
  return header.kid
}

/** Checks 8 to 16: pinned alg, signature (jose), v, iss, aud, claim types and ranges, times, host. */
export async function checkSigned (d: Decoded, key: VerificationKey, opts: ClaimOptions): Promise<DescriptorClaims> {
  // The key decides the algorithm, never the token (RFC 8725 section 3.1): this defeats alg "none"
  // and HS256 "signed" with the ES256 public key as the HMAC secret.
  if (d.header.alg !== key.alg) refuse('alg', `alg ${JSON.stringify(d.header.alg)} does not match the key's ${key.alg}`)
  try {
    await compactVerify(d.token, key.key, { algorithms: [key.alg] })
  } catch (err) {
    if (err instanceof joseErrors.JWSSignatureVerificationFailed) refuse('bad_signature', 'bad signature')
    if (err instanceof joseErrors.JOSEError) refuse('malformed', `not a valid JWS (${err.code})`)
    throw err
  }
  const c = d.claims
  if (c.v !== 1) refuse('version', `unsupported version v ${JSON.stringify(c.v)}`)
  if (c.iss !== opts.issuer) refuse('issuer', 'wrong issuer')
  // aud is one string in descriptor v1: an array is refused rather than searched.
  if (c.aud !== opts.audience) refuse('audience', 'wrong audience')
  // Numeric dates are integers in 0..2^53-1: JSON's 1e400 parses as Infinity, which would mean
  // "never expires" to a plain `now < exp` and crash integer conversions elsewhere.
  if (!isInt(c.exp, 0, MAX_SAFE) || !isInt(c.nbf, 0, MAX_SAFE) || !isInt(c.iat, 0, MAX_SAFE)) refuse('claims', 'exp, nbf and iat must be integers from 0 to 2^53-1')
  if (typeof c.sub !== 'string' || typeof c.host !== 'string' || !isInt(c.epoch, 0, MAX_SAFE)) refuse('claims', 'sub and host must be strings, epoch an integer from 0 to 2^53-1')
  const db = c.db as { name?: unknown, host?: unknown, port?: unknown } | null | undefined
  if (typeof db !== 'object' || db === null || Array.isArray(db) || typeof db.name !== 'string' || typeof db.host !== 'string' || !isInt(db.port, 1, 65_535)) refuse('claims', 'db must have string name and host and an integer port from 1 to 65535')
  const leewayMs = opts.leewayS * 1000
  // RFC 7519 section 4.1.4: the current time must be BEFORE exp; section 4.1.5: not before nbf.
  if (opts.nowMs >= c.exp * 1000 + leewayMs) refuse('expired', `expired (exp ${c.exp})`)
  if (opts.nowMs < c.nbf * 1000 - leewayMs) refuse('not_yet_valid', `not yet valid (nbf ${c.nbf})`)
  const host = canonicalHost(opts.requestHost)
  // A request host without a canonical form (an IP literal, garbage) matches no claim, not even an empty one.
  if (host === null || c.host !== host) refuse('host_mismatch', 'the host claim does not match the request host')
  return c as unknown as DescriptorClaims
}

function isInt (v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
}

function part (b64: string, what: string): Buffer {
  // RFC 7515 section 2: unpadded base64url, in its one canonical spelling (no stray trailing bits).
  if (!B64URL.test(b64)) refuse('malformed', `${what} is not unpadded base64url`)
  const bytes = Buffer.from(b64, 'base64url')
  if (bytes.toString('base64url') !== b64) refuse('malformed', `${what} is not canonical base64url`)
  return bytes
}

function jsonObject (bytes: Buffer, what: string): Record<string, unknown> {
  let value: unknown
  try {
    // NaN and Infinity are not JSON (RFC 8259 section 6): JSON.parse refuses them, as every kit must.
    value = JSON.parse(UTF8.decode(bytes))
  } catch {
    refuse('malformed', `${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) refuse('malformed', `${what} is not a JSON object`)
  return value as Record<string, unknown>
}
