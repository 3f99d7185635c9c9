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
  readonly verificationKeys: ReadonlyMap<string, { alg: DescriptorAlg, key: KeyObject }>
  jwks (): { keys: PublicJwk[] }
}

/** The JOSE `typ` of descriptors (RFC 7515 section 4.1.9; RFC 8725 section 3.11 explicit typing). */
export const DESCRIPTOR_TYP = 'tenant-db+jwt'

/** Minimum HS256 secret length: RFC 7518 section 3.2 requires a key at least as long as the hash. */
export const MIN_HS256_BYTES = 32

/** Parses and checks every key; throws TENANT_PROXY_ERR_KEY_INVALID naming `path[i]` (never the key). */
export function loadKeyring (keys: readonly KeyConfig[], path = 'descriptor.keys'): Keyring {
  if (keys.length === 0) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [path, 'at least one signing key is required; create one with `tenant-proxy keys generate`'])
  const parsed = keys.map((k, i) => parseKey(k, `${path}[${i}]`))
  const verificationKeys = new Map<string, { alg: DescriptorAlg, key: KeyObject }>()
  for (const [i, k] of parsed.entries()) {
    if (verificationKeys.has(k.kid)) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`${path}[${i}]`, `duplicate kid ${JSON.stringify(k.kid)}`])
    verificationKeys.set(k.kid, { alg: k.alg, key: k.verifyKey })
  }
  const first = parsed[0]
  if (first === undefined || first.signKey === null) {
    throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [`${path}[0]`, 'the first key signs, so it must be a private key or secret (public keys may follow it)'])
  }
  const jwks = parsed.flatMap((k) => k.publicJwk === null ? [] : [k.publicJwk])
  return { signer: makeSigner(first.kid, first.alg, first.signKey), verificationKeys, jwks: () => ({ keys: jwks.map((j) => ({ ...j })) }) }
}

/** RFC 7638 thumbprint (SHA-256, base64url) of a JWK's required members. */
export function jwkThumbprint (jwk: { kty: 'EC', crv: string, x: string, y: string } | { kty: 'oct', k: string }): string {
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

function parseKey (k: KeyConfig, at: string): ParsedKey {
  const isPem = k.key.includes('-----BEGIN')
  const alg = k.alg ?? (isPem ? 'ES256' : 'HS256')
  if (alg === 'HS256') {
    if (isPem) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, 'alg HS256 needs a shared secret, not a PEM key'])
    const bytes = Buffer.from(k.key, 'utf8')
    if (bytes.length < MIN_HS256_BYTES) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, `HS256 secret is ${bytes.length} bytes; at least ${MIN_HS256_BYTES} are required`])
    const secret = createSecretKey(bytes)
    const kid = k.kid ?? jwkThumbprint({ kty: 'oct', k: bytes.toString('base64url') })
    return { kid, alg, signKey: secret, verifyKey: secret, publicJwk: null }
  }
  if (!isPem) throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, 'alg ES256 needs an EC P-256 key in PEM form'])
  let signKey: KeyObject | null = null
  let verifyKey: KeyObject
  try {
    if (/-----BEGIN (EC )?PRIVATE KEY-----/.test(k.key)) {
      signKey = createPrivateKey(k.key)
      verifyKey = createPublicKey(signKey)
    } else {
      verifyKey = createPublicKey(k.key)
    }
  } catch {
    // The parser's message may quote key material: say what is wrong in our own words.
    throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, 'not a readable PEM key (expected an EC P-256 private key, PKCS#8 or SEC1, or a public key)'])
  }
  if (verifyKey.asymmetricKeyType !== 'ec' || verifyKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [at, `ES256 needs an EC P-256 key, got ${verifyKey.asymmetricKeyType ?? 'unknown'}${verifyKey.asymmetricKeyDetails?.namedCurve !== undefined ? ` ${verifyKey.asymmetricKeyDetails.namedCurve}` : ''}`])
  }
  const jwk = verifyKey.export({ format: 'jwk' }) as { kty: 'EC', crv: string, x: string, y: string }
  const kid = k.kid ?? jwkThumbprint(jwk)
  return { kid, alg, signKey, verifyKey, publicJwk: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, kid, alg: 'ES256', use: 'sig' } }
}

function makeSigner (kid: string, alg: DescriptorAlg, key: KeyObject): Signer {
  const headerB64 = Buffer.from(JSON.stringify({ alg, kid, typ: DESCRIPTOR_TYP })).toString('base64url')
  if (alg === 'HS256') {
    const secret = key.export()
    return { kid, alg, headerB64, sign: (input) => createHmac('sha256', secret).update(input).digest('base64url') }
  }
  // JWS ES256 signatures are the raw r||s pair (RFC 7518 section 3.4), not DER.
  return { kid, alg, headerB64, sign: (input) => sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url') }
}
