/**
 * New descriptor keys for `tenant-proxy keys generate`.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { loadKeyring, type DescriptorAlg, type PublicJwk } from './keyring.js'

/** A generated key: what tenant-proxy needs (key) and what the app needs (publicJwk or the same secret). */
export interface GeneratedKey {
  alg: DescriptorAlg
  kid: string
  key: string
  publicJwk?: PublicJwk
}

/** Generates an ES256 key pair (PKCS#8 PEM) or a 32-byte HS256 secret (43 base64url characters). */
export function generateKey (alg: DescriptorAlg): GeneratedKey {
  const key = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    : randomBytes(32).toString('base64url')
  const keyring = loadKeyring([{ key, alg }])
  const publicJwk = keyring.jwks().keys[0]
  return publicJwk === undefined ? { alg, kid: keyring.signer.kid, key } : { alg, kid: keyring.signer.kid, key, publicJwk }
}
