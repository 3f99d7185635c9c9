/**
 * Verification keys, each pinned to one algorithm and found by kid (docs/descriptor.md, "Keys"):
 * ES256 public keys from a JWKS (what the proxy publishes) or PEM, and HS256 secrets, always
 * marked as such (`{ alg: 'HS256', key }` or `hs256:<secret>`): a text is never taken for an HMAC
 * secret because it is not a PEM, so a damaged private key cannot become a shared secret.
 */
import { createHash, createPublicKey, createSecretKey, type KeyObject } from 'node:crypto'
import { VerifierConfigError } from './errors.js'

export type DescriptorAlg = 'ES256' | 'HS256'

/** A key as given to createVerifier: a PEM (ES256, public or private) or an HS256 secret with `alg: 'HS256'`. */
export interface KeyConfig {
  kid?: string | null
  alg?: DescriptorAlg | null
  key: string
}

/** A JWKS document, as served at /.well-known/tenant-proxy/jwks.json. */
export interface Jwks { keys: unknown[] }

/** A key that verifies descriptors, pinned to one algorithm. */
export interface VerificationKey {
  readonly alg: DescriptorAlg
  readonly key: KeyObject
}

export type KeyMap = ReadonlyMap<string, VerificationKey>

/** RFC 7518 section 3.2: an HMAC key at least as long as the hash. */
export const MIN_HS256_BYTES = 32
const HS256_PREFIX = 'hs256:'
const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g
const PEM_LIKE = /-----|\bBEGIN [A-Z]|PRIVATE KEY|PUBLIC KEY/

/** ES256 keys by kid from a JWKS: EC P-256 keys with a kid, `use` absent or `sig`, `alg` absent or `ES256`; others are skipped. */
export function keysFromJwks (jwks: unknown, where = 'jwks'): Map<string, VerificationKey> {
  const list = (jwks as { keys?: unknown } | null)?.keys
  if (typeof jwks !== 'object' || jwks === null || !Array.isArray(list)) bad(where, 'has no "keys" list')
  const out = new Map<string, VerificationKey>()
  for (const [i, item] of (list as unknown[]).entries()) {
    if (typeof item !== 'object' || item === null) bad(`${where}.keys[${i}]`, 'is not an object')
    const jwk = item as Record<string, unknown>
    // RFC 7517 sections 4.2 and 4.4: a key for encryption or another alg is not ours to verify with.
    if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.kid !== 'string') continue
    if ((jwk.use !== undefined && jwk.use !== 'sig') || (jwk.alg !== undefined && jwk.alg !== 'ES256')) continue
    if (out.has(jwk.kid)) bad(`${where}.keys[${i}]`, `duplicate kid ${JSON.stringify(jwk.kid)}`)
    let key: KeyObject
    try {
      key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: String(jwk.x), y: String(jwk.y) }, format: 'jwk' })
    } catch (err) {
      bad(`${where}.keys[${i}]`, 'x and y are not a point on P-256', err)
    }
    out.set(jwk.kid, { alg: 'ES256', key })
  }
  return out
}

/** Keys by kid from a list of `{ kid?, alg?, key }` (kid defaults to the RFC 7638 thumbprint, as the proxy's). */
export function keysFromConfig (keys: readonly KeyConfig[], where = 'keys'): Map<string, VerificationKey> {
  if (!Array.isArray(keys) || keys.length === 0) bad(where, 'needs at least one key')
  const out = new Map<string, VerificationKey>()
  for (const [i, item] of (keys as readonly unknown[]).entries()) {
    const at = `${where}[${i}]`
    // Checked here although typed: key lists also come from JSON files.
    const k = (typeof item === 'object' && item !== null ? item : {}) as Partial<KeyConfig>
    if (typeof k.key !== 'string' || k.key === '') bad(at, 'key must be a non-empty string (a PEM key or an HS256 secret)')
    if (k.kid != null && (typeof k.kid !== 'string' || k.kid === '')) bad(at, 'kid must be a non-empty string')
    if (k.alg != null && k.alg !== 'ES256' && k.alg !== 'HS256') bad(at, 'alg must be ES256 or HS256')
    const { kid, entry } = k.alg === 'HS256' ? secretKey(k.key, at) : pemKey(k.key, at)
    const id = k.kid ?? kid
    if (out.has(id)) bad(at, `duplicate kid ${JSON.stringify(id)}`)
    out.set(id, entry)
  }
  return out
}

/**
 * Keys from a text (a key file, TENANT_DESCRIPTOR_KEYS_FILE): a JWKS (`{"keys": [...]}`), a JSON
 * list as keysFromConfig takes, one `hs256:<secret>` line, or PEM blocks with `#` comments and
 * blank lines between them. Anything else is refused, never guessed at.
 */
export function keysFromText (text: string, where: string): Map<string, VerificationKey> {
  const trimmed = text.trim()
  if (trimmed === '') bad(where, 'is empty')
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    let parsed: unknown
    try {
      parsed = JSON.parse(trimmed)
    } catch {
      // Not the parser's message: it quotes the text around the error, and this text is key material.
      bad(where, 'is not valid JSON')
    }
    return Array.isArray(parsed) ? keysFromConfig(parsed as KeyConfig[], where) : keysFromJwks(parsed, where)
  }
  const lines = trimmed.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
  if (lines[0]?.toLowerCase().startsWith(HS256_PREFIX) === true) {
    if (lines.length > 1) bad(where, `an ${HS256_PREFIX} secret is one line (several keys go in a JSON list)`)
    return keysFromConfig([{ alg: 'HS256', key: (lines[0] ?? '').slice(HS256_PREFIX.length).trim() }], where)
  }
  const blocks = [...trimmed.matchAll(PEM_BLOCK)].filter((m) => m[1] !== 'EC PARAMETERS').map((m) => m[0])
  const rest = trimmed.replace(PEM_BLOCK, '').split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('{'))
  if (blocks.length === 0) bad(where, `holds no PEM key; an HS256 secret must be marked as one: ${HS256_PREFIX}<secret>`)
  if (rest.length > 0) bad(where, 'has a line outside its PEM blocks that is not a # comment (damaged PEM armour?)')
  return keysFromConfig(blocks.map((key) => ({ key })), where)
}

function secretKey (secret: string, at: string): { kid: string, entry: VerificationKey } {
  if (PEM_LIKE.test(secret)) bad(at, 'alg HS256 needs a shared secret, not a PEM key')
  // The string's UTF-8 bytes are the HMAC key, as the proxy, Ruby jwt and PyJWT use a string secret.
  const bytes = Buffer.from(secret, 'utf8')
  if (bytes.length < MIN_HS256_BYTES) bad(at, `HS256 secret is ${bytes.length} bytes; at least ${MIN_HS256_BYTES} are required`)
  return { kid: thumbprint(JSON.stringify({ k: bytes.toString('base64url'), kty: 'oct' })), entry: { alg: 'HS256', key: createSecretKey(bytes) } }
}

function pemKey (pem: string, at: string): { kid: string, entry: VerificationKey } {
  if (!pem.includes('-----BEGIN ')) bad(at, 'not a PEM key; an HS256 secret must say so: alg: \'HS256\' (or hs256:<secret> in a key text)')
  let key: KeyObject
  try {
    // A private key works too: its public half verifies.
    key = createPublicKey(pem)
  } catch (err) {
    // OpenSSL's message may quote key material: say what is wrong in our own words.
    bad(at, 'not a readable PEM key (expected an EC P-256 public or private key)', err)
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') bad(at, 'ES256 needs an EC P-256 key')
  const jwk = key.export({ format: 'jwk' })
  return { kid: thumbprint(JSON.stringify({ crv: jwk.crv, kty: 'EC', x: jwk.x, y: jwk.y })), entry: { alg: 'ES256', key } }
}

/** RFC 7638: SHA-256 of the required members in lexicographic order, base64url. */
function thumbprint (canonical: string): string {
  return createHash('sha256').update(canonical).digest('base64url')
}

function bad (where: string, reason: string, cause?: unknown): never {
  throw new VerifierConfigError('TENANT_PROXY_ERR_KEY_INVALID', `descriptor key ${where}: ${reason}`, cause === undefined ? undefined : { cause })
}
