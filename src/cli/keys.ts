/**
 * `tenant-proxy keys generate`: a new descriptor signing key and what the app needs to verify it.
 * `tenant-proxy keys rotate`: the three rotation phases on a key file (src/descriptor/rotate.ts).
 */
import { generateKey } from '../descriptor/generate.js'
import { HS256_PREFIX } from '../descriptor/key-text.js'
import { inspectKeyFile, ROTATION_PHASES, rotateKeyFile, type RotationPhase } from '../descriptor/rotate.js'
import { tpError } from '../errors.js'
import { flag, str, type Command } from './command.js'

export const keysGenerate: Command = {
  name: 'keys generate',
  summary: 'Print a new descriptor signing key (ES256 by default) and its public JWK.',
  usage: 'tenant-proxy keys generate [--alg ES256|HS256] [--json]',
  help: `ES256: prints a PKCS#8 private key PEM for TENANT_PROXY_DESCRIPTOR_KEYS(_FILE) and the public JWK
apps verify with (also served at /.well-known/tenant-proxy/jwks.json on the ops listener).
HS256: prints a random 32-byte secret to share with exactly one app, as hs256:<secret> (the form
TENANT_PROXY_DESCRIPTOR_KEYS(_FILE) takes; the app gets the secret without the prefix).`,
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
      : `# Shared secret: give this line to tenant-proxy as it is (TENANT_PROXY_DESCRIPTOR_KEYS, or the file TENANT_PROXY_DESCRIPTOR_KEYS_FILE names),\n# and the secret without the ${HS256_PREFIX} prefix to the one app that verifies it.\n${HS256_PREFIX}${key.key}\n`)
    return 0
  }
}

export const keysRotate: Command = {
  name: 'keys rotate',
  summary: 'Rotate the descriptor signing key in a key file: publish the next key, switch signing, retire the old key.',
  usage: 'tenant-proxy keys rotate --file <keys.pem> [--phase publish|switch|retire] [--dry-run] [--json]',
  help: `Works on the ES256 key file given to the proxy as TENANT_PROXY_DESCRIPTOR_KEYS_FILE (PEM blocks, the
first signs). Without --phase, shows where the rotation stands. Each phase rewrites the file
atomically (same mode) and refuses to run out of order:
  publish  [A]          → [A, B]        B is generated and published in the JWKS; A still signs
  switch   [A, B]       → [B, A public] B signs; A verifies tokens signed before (its private key is dropped)
  retire   [B, A public] → [B]          A is no longer trusted
Restart (or redeploy) every proxy after each phase: keys are read at start. Before switch, wait until
apps have refetched the key set (its Cache-Control max-age, 60 s); before retire, wait descriptor.ttlS
plus that max-age. Private keys are written to the file only, never printed.`,
  options: { file: { type: 'string' }, phase: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const file = str(args, 'file')
    if (file === undefined) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', ['--file <keys.pem> is required (the file TENANT_PROXY_DESCRIPTOR_KEYS_FILE names)'])
    const phase = str(args, 'phase')
    if (phase === undefined) {
      const state = inspectKeyFile(file)
      if (flag(args, 'json')) {
        ctx.io.out(JSON.stringify({ file, state: state.state, next: state.next, keys: state.keys }, null, 2) + '\n')
      } else {
        ctx.io.out([`${file}: ${state.state}`, ...state.keys.map((k) => `  kid ${k.kid} (${k.private ? 'private' : 'public'}): ${k.role}`), `next: tenant-proxy keys rotate --file ${file} --phase ${state.next}`].join('\n') + '\n')
      }
      return 0
    }
    if (!(ROTATION_PHASES as readonly string[]).includes(phase)) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--phase must be one of ${ROTATION_PHASES.join(', ')}, got ${JSON.stringify(phase)}`])
    const dryRun = flag(args, 'dry-run')
    const step = rotateKeyFile(file, phase as RotationPhase, { dryRun })
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ file, phase: step.phase, dryRun, before: step.before.state, after: step.after.state, next: step.after.next, keys: step.after.keys, publishedJwk: step.publishedJwk }, null, 2) + '\n')
      return 0
    }
    const after = ROTATION_ADVICE[step.phase]
    ctx.io.out([
      `${dryRun ? '(dry run, file unchanged) ' : ''}${step.phase}: ${file} is now ${step.after.state}`,
      ...step.after.keys.map((k) => `  kid ${k.kid} (${k.private ? 'private' : 'public'}): ${k.role}`),
      ...(step.publishedJwk === null ? [] : [`public JWK of the next key (for apps that pin keys): ${JSON.stringify(step.publishedJwk)}`]),
      `then: ${after}`
    ].join('\n') + '\n')
    return 0
  }
}

const ROTATION_ADVICE: Record<RotationPhase, string> = {
  publish: 'restart every proxy; once apps have refetched the key set (max-age 60 s), run --phase switch',
  switch: 'restart every proxy; after descriptor.ttlS plus the key set max-age (60 s), run --phase retire',
  retire: 'restart every proxy; the rotation is complete'
}
