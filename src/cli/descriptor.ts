/**
 * `tenant-proxy descriptor decode <token>`: shows a descriptor's header and claims, and verifies
 * it when given keys (PEM files, a shared secret, a JWKS file, or the configured keys).
 */
import { readFileSync } from 'node:fs'
import { createPublicKey, createSecretKey, type KeyObject } from 'node:crypto'
import { loadKeyring } from '../descriptor/keyring.js'
import { decodeDescriptor, keysFromJwks, verifyDescriptor } from '../descriptor/verify.js'
import { tpError } from '../errors.js'
import { flag, str, strs, type Command } from './command.js'

type VerificationKeys = Map<string, { alg: 'ES256' | 'HS256', key: KeyObject }>

export const descriptorDecode: Command = {
  name: 'descriptor decode',
  summary: "Show a descriptor's header and claims; verify it when given keys.",
  usage: 'tenant-proxy descriptor decode <token> [--key <pem-file>…] [--secret <secret>] [--jwks <file>] [--configured-keys] [--issuer <iss>] [--audience <aud>] [--host <host>] [--json]',
  help: `Without key options the token is only decoded (nothing is verified). With --key (an EC public or
private key PEM file), --secret (an HS256 secret), --jwks (a key set file, e.g. saved from
/.well-known/tenant-proxy/jwks.json) or --configured-keys (descriptor.keys of the configuration),
the signature, typ, v, iss, aud, nbf/exp (5 s leeway) and, with --host, the host claim are checked.
--issuer and --audience default to deploymentId and descriptor.audience of the configuration.`,
  options: {
    key: { type: 'string', multiple: true },
    secret: { type: 'string' },
    jwks: { type: 'string' },
    'configured-keys': { type: 'boolean' },
    issuer: { type: 'string' },
    audience: { type: 'string' },
    host: { type: 'string' },
    json: { type: 'boolean' }
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const token = (args.positionals[0] ?? '').trim()
    const decoded = decodeDescriptor(token)
    const kid = typeof decoded.header.kid === 'string' ? decoded.header.kid : ''
    const candidates = verificationKeys(args, kid, () => ctx.config().descriptor.keys)
    let verified: boolean | null = null
    if (candidates.length > 0) {
      const config = ctx.config()
      const options = { issuer: str(args, 'issuer') ?? config.deploymentId, audience: str(args, 'audience') ?? config.descriptor.audience, host: str(args, 'host') }
      // Each explicitly given key is tried on its own; the first that verifies wins.
      let firstError: unknown = null
      for (const keys of candidates) {
        try {
          verifyDescriptor(token, { keys, ...options })
          verified = true
          break
        } catch (err) {
          firstError ??= err
        }
      }
      if (verified !== true) throw firstError
    }
    const exp = decoded.claims.exp
    const expiresIn = typeof exp === 'number' ? exp - Math.floor(Date.now() / 1000) : null
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ header: decoded.header, claims: decoded.claims, verified, expiresInSeconds: expiresIn }, null, 2) + '\n')
    } else {
      ctx.io.out([
        `header: ${JSON.stringify(decoded.header)}`,
        `claims: ${JSON.stringify(decoded.claims, null, 2)}`,
        expiresIn === null ? 'expires: (no exp claim)' : expiresIn >= 0 ? `expires: in ${expiresIn} s` : `expires: ${-expiresIn} s ago`,
        verified === null ? 'signature: NOT verified (give --key, --secret, --jwks or --configured-keys)' : 'signature: verified'
      ].join('\n') + '\n')
    }
    return 0
  }
}

function verificationKeys (args: Parameters<Command['run']>[1], kid: string, configured: () => ReadonlyArray<{ kid: string | null, alg: 'ES256' | 'HS256' | null, key: string }>): VerificationKeys[] {
  const candidates: VerificationKeys[] = []
  for (const file of strs(args, 'key')) {
    const pem = readText(file, '--key')
    let key: KeyObject
    try {
      key = createPublicKey(pem)
    } catch (err) {
      throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--key ${file}: not an EC public or private key PEM`], err)
    }
    // A key given by hand stands for whatever kid the token names: the operator chose it.
    candidates.push(new Map([[kid, { alg: 'ES256', key }]]))
  }
  const secret = str(args, 'secret')
  if (secret !== undefined) candidates.push(new Map([[kid, { alg: 'HS256', key: createSecretKey(Buffer.from(secret, 'utf8')) }]]))
  const jwksFile = str(args, 'jwks')
  if (jwksFile !== undefined) {
    let jwks: unknown
    try {
      jwks = JSON.parse(readText(jwksFile, '--jwks'))
    } catch (err) {
      throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--jwks ${jwksFile}: not a JSON key set`], err)
    }
    candidates.push(keysFromJwks(jwks as { keys?: unknown }))
  }
  if (flag(args, 'configured-keys')) candidates.push(new Map(loadKeyring(configured()).verificationKeys))
  return candidates
}

function readText (file: string, option: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`${option} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`], err)
  }
}
