/**
 * Descriptor verification inside the proxy's own package: `tenant-proxy descriptor decode` and the
 * demo app. Apps use @tenant-proxy/verify (clients/node), which implements the same specification
 * on jose; both run the shared vectors. It applies every rule of docs/descriptor.md, in its
 * order: no comma-joined duplicates, size cap, typ, no header naming its own key, pinned algorithm
 * per key, signature, v, iss, aud, claim types, time window with leeway, host. Each refusal
 * carries the reason code of test/fixtures/descriptor-vectors.json.
 */
import { createHmac, createPublicKey, timingSafeEqual, verify, type KeyObject } from 'node:crypto'
import { TenantProxyError, tpError } from '../errors.js'
import { canonicalHost } from '../routing/host.js'
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

/**
 * Why a descriptor was refused: the codes of test/fixtures/descriptor-vectors.json (in the order
 * the checks run), plus `missing` (no header at all) and `jwks_unavailable` (no keys to check with).
 */
export const DESCRIPTOR_REASONS = ['malformed', 'comma', 'too_large', 'typ', 'forbidden_header', 'unknown_kid', 'alg', 'bad_signature', 'version', 'issuer', 'audience', 'claims', 'expired', 'not_yet_valid', 'host_mismatch'] as const

/** A reason code of a refused descriptor. */
export type DescriptorReason = typeof DESCRIPTOR_REASONS[number] | 'missing' | 'jwks_unavailable'

/** Reasons that describe a malformed request rather than a failed verification (HTTP 400, like the Ruby and Python verifiers). */
const BAD_REQUEST_REASONS: ReadonlySet<DescriptorReason> = new Set(['missing', 'malformed', 'comma', 'too_large'])

/** A refused descriptor: a catalogue error with a stable `reason` and the HTTP status a middleware answers with. */
export class DescriptorError extends TenantProxyError {
  readonly reason: DescriptorReason

  constructor (reason: DescriptorReason, detail: string, cause?: unknown) {
    super(reason === 'jwks_unavailable' ? 'TENANT_PROXY_ERR_JWKS_UNAVAILABLE' : reason === 'missing' ? 'TENANT_PROXY_ERR_DESCRIPTOR_MISSING' : 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID', [detail], cause === undefined ? undefined : { cause })
    this.name = 'DescriptorError'
    this.reason = reason
  }

  /** 400 for a missing or malformed value, 503 when no keys could be fetched, 401 for everything else. */
  get httpStatus (): 400 | 401 | 503 {
    if (this.reason === 'jwks_unavailable') return 503
    return BAD_REQUEST_REASONS.has(this.reason) ? 400 : 401
  }
}

/** True when `err` is a refused descriptor (optionally for `reason`). */
export function isDescriptorError (err: unknown, reason?: DescriptorReason): err is DescriptorError {
  return err instanceof DescriptorError && (reason === undefined || err.reason === reason)
}

/** Largest accepted token in bytes (docs/descriptor.md): the proxy's are under 1 KiB, and nothing bigger is parsed. */
export const MAX_TOKEN_BYTES = 8192

/**
 * JOSE header parameters refused outright: `crit` demands extensions we do not implement (RFC 7515
 * section 4.1.11); `jwk`, `jku`, `x5u` and `x5c` let a token name its own key, which a verifier
 * that trusts configured keys must never consult (RFC 8725 section 3.10 on key confusion).
 */
export const FORBIDDEN_HEADERS = ['crit', 'jwk', 'jku', 'x5u', 'x5c'] as const

/** Options of verifyDescriptor. */
export interface VerifyOptions {
  keys: VerificationKeys
  issuer: string
  audience: string
  /** The request's canonical host; checked against the `host` claim when given. */
  host?: string | undefined
  /**
   * The request's Host as received (any case, port, trailing dot); canonicalized like the proxy
   * does (src/routing/host.ts) and checked against the `host` claim. A host that does not
   * canonicalize (an IP literal, garbage) matches no claim. Ignored when `host` is given.
   */
  requestHost?: string | undefined
  /** Clock skew allowed on exp and nbf, in seconds (default 5). */
  leewayS?: number
  /** Clock in ms (tests inject one). */
  now?: () => number
}

/** Default clock skew allowance, in seconds. */
export const DEFAULT_LEEWAY_S = 5

const B64URL = /^[A-Za-z0-9_-]+$/
/** Invalid UTF-8 is malformed (as in every verifier), not silently replaced by U+FFFD. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
/** The largest numeric claim: the largest integer every JSON parser holds exactly. */
const MAX_SAFE = Number.MAX_SAFE_INTEGER

function isInt (v: unknown, min: number, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
}

/** Splits and parses a compact JWS without verifying it. */
export function decodeDescriptor (token: string): DecodedDescriptor {
  if (typeof token !== 'string' || token === '') invalid('malformed', 'empty value')
  // Duplicated headers arrive joined with ", ": never pick one of several descriptors.
  if (token.includes(',')) invalid('comma', 'value contains a comma (duplicated header)')
  // Checked before any decoding, so a huge value costs no base64 or JSON work.
  if (Buffer.byteLength(token, 'utf8') > MAX_TOKEN_BYTES) invalid('too_large', `token too large (over ${MAX_TOKEN_BYTES} bytes)`)
  const parts = token.split('.')
  if (parts.length !== 3) invalid('malformed', 'not a compact JWS (expected three dot-separated parts)')
  const [h = '', p = '', s = ''] = parts
  const header = parseJson(decodePart(h, 'header'), 'header')
  const claims = parseJson(decodePart(p, 'payload'), 'payload')
  // An unsecured JWS (alg "none", RFC 7515 appendix A.5) has an empty signature: decode it so the
  // verifier can refuse it by its alg, with a reason that says so.
  return { header, claims, signingInput: `${h}.${p}`, signature: s === '' ? Buffer.alloc(0) : decodePart(s, 'signature') }
}

/** Verifies a descriptor and returns its claims; throws a DescriptorError (TENANT_PROXY_ERR_DESCRIPTOR_INVALID) naming the failed check. */
export function verifyDescriptor (token: string, opts: VerifyOptions): DescriptorClaims {
  const d = decodeDescriptor(token)
  const { header } = d
  checkHeader(header)
  const kid = header.kid as string
  const entry = opts.keys.get(kid)
  if (entry === undefined) invalid('unknown_kid', `unknown kid ${JSON.stringify(kid)}`)
  return checkSigned(d, entry, opts)
}

/**
 * The checks that need no key: typ, forbidden header parameters, a kid. Exported for kit.ts,
 * which looks the kid up in a key set that may have to be fetched first.
 */
export function checkHeader (header: Record<string, unknown>): void {
  if (header.typ !== DESCRIPTOR_TYP) invalid('typ', `typ must be ${DESCRIPTOR_TYP}, got ${JSON.stringify(header.typ)}`)
  for (const name of FORBIDDEN_HEADERS) {
    // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
    if (name === 'crit' && header.crit !== undefined) invalid('forbidden_header', 'crit header parameter is not supported')
    // A key named by the token itself is the attacker's key: never look at it, refuse the token.
    if (Object.hasOwn(header, name)) invalid('forbidden_header', `${name} header parameter is not accepted (keys come from the verifier's configuration only)`)
  }
  if (typeof header.kid !== 'string') invalid('unknown_kid', 'missing kid')
}

/** The checks after the key lookup: pinned alg, signature, claims, time window, host. */
export function checkSigned (d: DecodedDescriptor, entry: VerificationKey, opts: Omit<VerifyOptions, 'keys'>): DescriptorClaims {
  const { header, claims } = d
  // The key decides the algorithm, never the token (RFC 8725 section 3.1): this defeats alg
  // "none" and HS256 signed with the ES256 public key as the HMAC secret.
  if (header.alg !== entry.alg) invalid('alg', `alg ${JSON.stringify(header.alg)} does not match the key's ${entry.alg}`)
  if (!signatureValid(entry, String(header.kid), d.signingInput, d.signature)) invalid('bad_signature', 'bad signature')

  if (claims.v !== 1) invalid('version', `unsupported version v ${JSON.stringify(claims.v)}`)
  if (claims.iss !== opts.issuer) invalid('issuer', `wrong issuer (iss ${JSON.stringify(claims.iss)})`)
  // aud is one string in descriptor v1; an array is refused rather than searched.
  if (claims.aud !== opts.audience) invalid('audience', `wrong audience (aud ${JSON.stringify(claims.aud)})`)
  // Types first, then times: the shared vectors order `claims` before `expired`. Numeric dates are
  // integers in 0..2^53-1 (docs/descriptor.md): JSON's 1e400 parses as Infinity, which a plain
  // `now < exp` would take for "never expires".
  if (!isInt(claims.exp, 0, MAX_SAFE) || !isInt(claims.nbf, 0, MAX_SAFE) || !isInt(claims.iat, 0, MAX_SAFE)) invalid('claims', 'exp, nbf and iat must be integers from 0 to 2^53-1')
  if (typeof claims.sub !== 'string' || typeof claims.host !== 'string' || !isInt(claims.epoch, 0, MAX_SAFE)) invalid('claims', 'sub and host must be strings, epoch an integer from 0 to 2^53-1')
  const db = claims.db as { name?: unknown, host?: unknown, port?: unknown } | null | undefined
  if (typeof db !== 'object' || db === null || Array.isArray(db) || typeof db.name !== 'string' || typeof db.host !== 'string' || !isInt(db.port, 1, 65_535)) invalid('claims', 'malformed db claim')
  const nowMs = (opts.now ?? Date.now)()
  const leewayMs = (opts.leewayS ?? DEFAULT_LEEWAY_S) * 1000
  // RFC 7519 section 4.1.4: the current time must be BEFORE exp; 4.1.5: not before nbf.
  if (nowMs >= claims.exp * 1000 + leewayMs) invalid('expired', `expired (exp ${claims.exp}, now ${Math.floor(nowMs / 1000)})`)
  if (nowMs < claims.nbf * 1000 - leewayMs) invalid('not_yet_valid', `not yet valid (nbf ${claims.nbf}, now ${Math.floor(nowMs / 1000)})`)
  const host = opts.host ?? (opts.requestHost === undefined ? undefined : requestHostFor(opts.requestHost))
  // '' is a request host without a canonical form: it matches no claim, not even an empty one.
  if (host !== undefined && (host === '' || claims.host !== host)) invalid('host_mismatch', `host claim ${JSON.stringify(claims.host)} does not match the request host ${JSON.stringify(host)}`)
  return claims as unknown as DescriptorClaims
}

/**
 * The request host as the proxy writes the `host` claim, or '' (which matches no claim) when it
 * is not a routable name: the proxy never issues descriptors for IP literals or invalid names.
 */
export function requestHostFor (raw: string): string {
  const c = canonicalHost(raw)
  return c.ok ? c.host : ''
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
  if (!B64URL.test(b64)) invalid('malformed', `${what} is not unpadded base64url`)
  const bytes = Buffer.from(b64, 'base64url')
  if (bytes.toString('base64url') !== b64) invalid('malformed', `${what} is not canonical base64url`)
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
    value = JSON.parse(UTF8.decode(bytes))
  } catch {
    invalid('malformed', `${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalid('malformed', `${what} is not a JSON object`)
  return value as Record<string, unknown>
}

function invalid (reason: DescriptorReason, detail: string): never {
  throw new DescriptorError(reason, detail)
}

function keyUnusable (kid: string, reason: string): never {
  throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`kid ${JSON.stringify(kid)}`, reason])
}
