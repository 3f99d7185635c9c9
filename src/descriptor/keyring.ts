/**
 * Descriptor keys: parsed and checked once at start. The first key signs; every key verifies;
 * public ES256 keys are published as a JWKS so apps can follow rotations.
 */
import { createHash, createHmac, createPrivateKey, createPublicKey, createSecretKey, sign, type KeyObject } from 'node:crypto'
import { tpError } from '../errors.js'

export type DescriptorAlg = 'ES256' | 'HS256'

/** A key as configured (descriptor.keys[i]). */
export interface KeyConfig {
  kid?: string | null
  alg?: DescriptorAlg | null
  key: string
}

/** A key that verifies descriptors, pinned to one algorithm. */
export interface VerificationKey {
  readonly alg: DescriptorAlg
  readonly key: KeyObject
}

/** An EC public key as published in the key set. */
export interface PublicJwk {
  kty: 'EC'
  crv: 'P-256'
  x: string
  y: string
  kid: string
  alg: 'ES256'
  use: 'sig'
}

/** The key that signs descriptors. */
export interface Signer {
  readonly kid: string
  readonly alg: DescriptorAlg
  /** base64url of the JOSE header {alg,kid,typ}, encoded once. */
  readonly headerB64: string
  /** base64url signature of `signingInput` (header.payload). */
  sign (signingInput: string): string
}

/** All keys of one proxy. */
export interface Keyring {
  readonly signer: Signer
  readonly verificationKeys: ReadonlyMap<string, VerificationKey>
  jwks (): { keys: PublicJwk[] }
}

/** The JOSE `typ` of descriptors (RFC 7515 section 4.1.9; RFC 8725 section 3.11 explicit typing). */
export const DESCRIPTOR_TYP = 'tenant-db+jwt'

/** Minimum HS256 secret length: RFC 7518 section 3.2 requires a key at least as long as the hash. */
export const MIN_HS256_BYTES = 32

/**
 * Parses and checks every key; throws TENANT_PROXY_ERR_KEY_INVALID naming `path[i]` and, when
 * given, where the keys came from (`source`: a variable, a file, a config file), never the key.
 */
export function loadKeyring (keys: readonly KeyConfig[], path = 'descriptor.keys', source?: string): Keyring {
  const parsed = parseAll(keys, path, source, 'at least one signing key is required; create one with `tenant-proxy keys generate`')
  const first = parsed[0]
  if (first === undefined || first.signKey === null) {
    fail(where(path, 0, source), 'the first key signs, so it must be a private key or secret (public keys may follow it)')
  }
  const verificationKeys = new Map<string, VerificationKey>(parsed.map((k) => [k.kid, { alg: k.alg, key: k.verifyKey }]))
  const jwks = parsed.flatMap((k) => k.publicJwk === null ? [] : [k.publicJwk])
  return { signer: makeSigner(first.kid, first.alg, first.signKey), verificationKeys, jwks: () => ({ keys: jwks.map((j) => ({ ...j })) }) }
}

/** Verification keys only (public PEMs allowed first), with the same checks as loadKeyring; for verifiers and the CLI. */
export function keysFromConfig (keys: readonly KeyConfig[], path = 'keys', source?: string): Map<string, VerificationKey> {
  const parsed = parseAll(keys, path, source, 'at least one key is required')
  return new Map(parsed.map((k) => [k.kid, { alg: k.alg, key: k.verifyKey }]))
}

/** RFC 7638 thumbprint (SHA-256, base64url) of a JWK's required members. */
export function jwkThumbprint (jwk: { kty: 'EC', crv: string, x: string, y: string } | { kty: 'oct', k: string }): string {
  // RFC 7638 section 3.2: required members only, lexicographic order, no whitespace.
  const canonical = jwk.kty === 'EC'
    ? JSON.stringify({ crv: jwk.crv, kty: 'EC', x: jwk.x, y: jwk.y })
    : JSON.stringify({ k: jwk.k, kty: 'oct' })
  return createHash('sha256').update(canonical).digest('base64url')
}

interface ParsedKey {
  kid: string
  alg: DescriptorAlg
  signKey: KeyObject | null
  verifyKey: KeyObject
  publicJwk: PublicJwk | null
}

const PEM_LABEL = /-----BEGIN ([A-Z0-9 ]+)-----/g
/** Text that is (part of) PEM armour, damaged or not: never an HMAC secret. */
const PEM_LIKE = /-----|\bBEGIN [A-Z]|PRIVATE KEY|PUBLIC KEY/
const PRIVATE_LABELS = new Set(['PRIVATE KEY', 'EC PRIVATE KEY', 'RSA PRIVATE KEY'])
const PUBLIC_LABELS = new Set(['PUBLIC KEY', 'RSA PUBLIC KEY'])

function parseAll (keys: readonly KeyConfig[], path: string, source: string | undefined, emptyReason: string): ParsedKey[] {
  const list: unknown = keys
  if (!Array.isArray(list) || keys.length === 0) fail(source === undefined ? path : `${path} from ${source}`, emptyReason)
  const parsed: ParsedKey[] = []
  const seen = new Set<string>()
  for (const [i, k] of keys.entries()) {
    const p = parseKey(k, where(path, i, source))
    if (seen.has(p.kid)) fail(where(path, i, source), `duplicate kid ${JSON.stringify(p.kid)}`)
    seen.add(p.kid)
    parsed.push(p)
  }
  return parsed
}

function parseKey (k: KeyConfig, at: string): ParsedKey {
  // The config schema checks these shapes too, but loadKeyring is also called by code and tests:
  // a header naming an alg we do not sign with would be a forgery waiting to happen.
  if (typeof k !== 'object' || k === null || typeof k.key !== 'string' || k.key === '') fail(at, 'key must be a non-empty string (a PEM key or an HS256 secret)')
  if (k.kid != null && (typeof k.kid !== 'string' || k.kid === '')) fail(at, 'kid must be a non-empty string')
  if (k.alg != null && k.alg !== 'ES256' && k.alg !== 'HS256') fail(at, 'alg must be ES256 or HS256')
  const isPem = k.key.includes('-----BEGIN ')
  // HS256 is chosen explicitly or not at all: guessing it from "not a PEM" made a key with damaged
  // armour (private key included) an HMAC secret that any holder of the text could sign with.
  const alg = k.alg ?? 'ES256'
  if (alg === 'HS256') {
    if (PEM_LIKE.test(k.key)) fail(at, 'alg HS256 needs a shared secret, not a PEM key')
    if (isJsonContainer(k.key)) fail(at, 'alg HS256 needs the secret itself, not JSON (a JWK?)')
    // The string's UTF-8 bytes are the HMAC key, as Ruby jwt, PyJWT and jose treat a string secret.
    const bytes = Buffer.from(k.key, 'utf8')
    if (bytes.length < MIN_HS256_BYTES) fail(at, `HS256 secret is ${bytes.length} bytes; at least ${MIN_HS256_BYTES} are required`)
    const secret = createSecretKey(bytes)
    const kid = k.kid ?? jwkThumbprint({ kty: 'oct', k: bytes.toString('base64url') })
    return { kid, alg, signKey: secret, verifyKey: secret, publicJwk: null }
  }
  if (!isPem) {
    fail(at, k.alg == null
      ? 'not a PEM key; an HS256 secret must say so: "alg": "HS256" (or hs256:<secret> in TENANT_PROXY_DESCRIPTOR_KEYS)'
      : 'alg ES256 needs an EC P-256 key in PEM form')
  }
  const { signKey, verifyKey } = parsePem(k.key, at)
  if (verifyKey.asymmetricKeyType === 'rsa' || verifyKey.asymmetricKeyType === 'rsa-pss') fail(at, 'ES256 needs an EC P-256 key, got an RSA key')
  const curve = verifyKey.asymmetricKeyDetails?.namedCurve
  if (verifyKey.asymmetricKeyType !== 'ec' || curve !== 'prime256v1') {
    fail(at, `ES256 needs an EC P-256 key, got ${verifyKey.asymmetricKeyType ?? 'unknown'}${curve !== undefined ? ` ${curve}` : ''}`)
  }
  const jwk = verifyKey.export({ format: 'jwk' }) as { kty: 'EC', crv: string, x: string, y: string }
  const kid = k.kid ?? jwkThumbprint(jwk)
  return { kid, alg, signKey, verifyKey, publicJwk: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, kid, alg: 'ES256', use: 'sig' } }
}

function parsePem (pem: string, at: string): { signKey: KeyObject | null, verifyKey: KeyObject } {
  // `openssl ecparam -genkey` writes an EC PARAMETERS block before the key; it carries no key.
  const labels = [...pem.matchAll(PEM_LABEL)].map((m) => m[1] ?? '').filter((l) => l !== 'EC PARAMETERS')
  const label = labels[0]
  if (label === undefined) fail(at, 'the PEM holds no key (an EC PARAMETERS block alone is not a key; use `tenant-proxy keys generate` or `openssl ecparam -genkey -noout`)')
  if (labels.length > 1) fail(at, 'one PEM key per entry: list several keys as separate entries')
  if (label === 'ENCRYPTED PRIVATE KEY') fail(at, 'encrypted private keys are not supported; give an unencrypted PKCS#8 or SEC1 key (protect the file instead)')
  if (label === 'CERTIFICATE') fail(at, 'a certificate is not a key; give its public key PEM (`openssl x509 -pubkey -noout`)')
  if (!PRIVATE_LABELS.has(label) && !PUBLIC_LABELS.has(label)) fail(at, `unsupported PEM type ${JSON.stringify(label)} (expected PRIVATE KEY, EC PRIVATE KEY or PUBLIC KEY)`)
  try {
    if (PRIVATE_LABELS.has(label)) {
      const signKey = createPrivateKey(pem)
      return { signKey, verifyKey: createPublicKey(signKey) }
    }
    return { signKey: null, verifyKey: createPublicKey(pem) }
  } catch {
    // OpenSSL's message may quote key material: say what is wrong in our own words.
    return fail(at, 'not a readable PEM key (expected an EC P-256 private key, PKCS#8 or SEC1, or a public key)')
  }
}

function makeSigner (kid: string, alg: DescriptorAlg, key: KeyObject): Signer {
  const headerB64 = Buffer.from(JSON.stringify({ alg, kid, typ: DESCRIPTOR_TYP })).toString('base64url')
  if (alg === 'HS256') {
    return { kid, alg, headerB64, sign: (input) => createHmac('sha256', key).update(input).digest('base64url') }
  }
  // JWS ES256 signatures are the raw 64-byte r||s pair (RFC 7518 section 3.4), not DER.
  return { kid, alg, headerB64, sign: (input) => sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url') }
}

/** True when `text` is a JSON object or array (a JWK or key list pasted where a secret belongs). */
function isJsonContainer (text: string): boolean {
  const t = text.trim()
  if (!(t.startsWith('{') || t.startsWith('['))) return false
  try {
    JSON.parse(t)
    return true
  } catch {
    return false
  }
}

/** `path[i]`, and where the keys came from when known. */
function where (path: string, i: number, source: string | undefined): string {
  return source === undefined ? `${path}[${i}]` : `${path}[${i}] from ${source}`
}

function fail (at: string, reason: string): never {
  throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, reason])
}
