/**
 * `tenant-proxy keys generate`: a new descriptor signing key and what the app needs to verify it.
 */
import { generateKey } from '../descriptor/generate.js'
import { tpError } from '../errors.js'
import { flag, str, type Command } from './command.js'

export const keysGenerate: Command = {
  name: 'keys generate',
  summary: 'Print a new descriptor signing key (ES256 by default) and its public JWK.',
  usage: 'tenant-proxy keys generate [--alg ES256|HS256] [--json]',
  help: `ES256: prints a PKCS#8 private key PEM for TENANT_PROXY_DESCRIPTOR_KEYS(_FILE) and the public JWK
apps verify with (also served at /.well-known/tenant-proxy/jwks.json on the ops listener).
HS256: prints a random 32-byte secret to share with exactly one app.`,
  options: { alg: { type: 'string' }, json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const alg = str(args, 'alg') ?? 'ES256'
    if (alg !== 'ES256' && alg !== 'HS256') throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--alg must be ES256 or HS256, got ${JSON.stringify(alg)}`])
    const key = generateKey(alg)
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ alg: key.alg, kid: key.kid, key: key.key, publicJwk: key.publicJwk ?? null }, null, 2) + '\n')
      return 0
    }
    ctx.io.out(`# kid: ${key.kid}  alg: ${key.alg}\n`)
    ctx.io.out(alg === 'ES256'
      ? `# Private key: keep it secret; give it to tenant-proxy as TENANT_PROXY_DESCRIPTOR_KEYS_FILE=<file>.\n${key.key.trimEnd()}\n# Public JWK for the app:\n${JSON.stringify(key.publicJwk)}\n`
      : `# Shared secret: give it to tenant-proxy (TENANT_PROXY_DESCRIPTOR_KEYS) and to the one app that verifies it.\n${key.key}\n`)
    return 0
  }
}
