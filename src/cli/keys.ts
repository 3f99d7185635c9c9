/**
 * `tenant-proxy keys generate`: a new descriptor signing key (into a file only its owner can read,
 * or printed) and what the app needs to verify it.
 * `tenant-proxy keys rotate`: the three rotation phases on a key file (src/descriptor/rotate.ts).
 */
import { generateKey } from '../descriptor/generate.js'
import { HS256_PREFIX } from '../descriptor/key-text.js'
import { inspectKeyFile, ROTATION_PHASES, rotateKeyFile, type RotationPhase } from '../descriptor/rotate.js'
import { tpError } from '../errors.js'
import { createExclusive, replaceAtomically } from '../file-write.js'
import { flag, str, type Command } from './command.js'

export const keysGenerate: Command = {
  name: 'keys generate',
  summary: 'Create a new descriptor signing key (ES256 by default): written to --out FILE (mode 0600) or printed, with its public JWK.',
  usage: 'tenant-proxy keys generate [--alg ES256|HS256] [--out FILE [--force]] [--json]',
  help: `ES256: a PKCS#8 private key PEM for TENANT_PROXY_DESCRIPTOR_KEYS(_FILE) and the public JWK apps
verify with (also served at /.well-known/tenant-proxy/jwks.json on the ops listener).
HS256: a random 32-byte secret to share with exactly one app, as hs256:<secret> (the form
TENANT_PROXY_DESCRIPTOR_KEYS(_FILE) takes; the app gets the secret without the prefix).
--out FILE writes the key to FILE only, created readable by its owner alone (mode 0600; a shell
redirect would create it with the umask's mode, usually 0644), and prints the public JWK. An
existing FILE is never replaced without --force. Without --out the key is printed; on a terminal
a warning says it is a secret.`,
  options: { alg: { type: 'string' }, json: { type: 'boolean' }, out: { type: 'string' }, force: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const alg = str(args, 'alg') ?? 'ES256'
    if (alg !== 'ES256' && alg !== 'HS256') throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--alg must be ES256 or HS256, got ${JSON.stringify(alg)}`])
    const out = str(args, 'out')
    if (out === '') throw tpError('TENANT_PROXY_ERR_CLI_USAGE', ['--out needs a file name'])
    if (flag(args, 'force') && out === undefined) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', ['--force only applies to --out FILE'])
    const key = generateKey(alg)
    // What tenant-proxy reads: the PEM, or the secret with the prefix that says it is one.
    const keyText = alg === 'ES256' ? key.key.trimEnd() + '\n' : `${HS256_PREFIX}${key.key}\n`
    const publicJwk = key.publicJwk ?? null

    if (out !== undefined) {
      writeKeyFile(out, keyText, flag(args, 'force'))
      if (flag(args, 'json')) {
        ctx.io.out(JSON.stringify({ alg: key.alg, kid: key.kid, out, publicJwk }, null, 2) + '\n')
        return 0
      }
      ctx.io.out(`# kid: ${key.kid}  alg: ${key.alg}\n`)
      ctx.io.out(alg === 'ES256'
        ? `# Private key written to ${out} (mode 0600): give it to tenant-proxy as TENANT_PROXY_DESCRIPTOR_KEYS_FILE=${out}.\n# Public JWK for the app:\n${JSON.stringify(publicJwk)}\n`
        : `# Secret written to ${out} (mode 0600) as ${HS256_PREFIX}<secret>: give the file to tenant-proxy as TENANT_PROXY_DESCRIPTOR_KEYS_FILE=${out},\n# and the secret without the ${HS256_PREFIX} prefix to the one app that verifies it.\n`)
      return 0
    }

    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ alg: key.alg, kid: key.kid, key: key.key, publicJwk }, null, 2) + '\n')
    } else {
      ctx.io.out(`# kid: ${key.kid}  alg: ${key.alg}\n`)
      ctx.io.out(alg === 'ES256'
        ? `# Private key: keep it secret; give it to tenant-proxy as TENANT_PROXY_DESCRIPTOR_KEYS_FILE=<file>.\n${keyText}# Public JWK for the app:\n${JSON.stringify(publicJwk)}\n`
        : `# Shared secret: give this line to tenant-proxy as it is (TENANT_PROXY_DESCRIPTOR_KEYS, or the file TENANT_PROXY_DESCRIPTOR_KEYS_FILE names),\n# and the secret without the ${HS256_PREFIX} prefix to the one app that verifies it.\n${keyText}`)
    }
    if (ctx.io.outIsTerminal === true) {
      ctx.io.err(`tenant-proxy: warning: the ${alg === 'ES256' ? 'private key' : 'secret'} above is secret and is now on this terminal and in its scrollback; ` +
        'write the next one with --out FILE (created with mode 0600, readable by its owner only)\n')
    }
    return 0
  }
}

/**
 * Writes a key file readable by its owner only (mode 0600 from the open on, see file-write.ts);
 * with `force`, a new file is renamed over the old one, so the old file's mode is not kept.
 */
function writeKeyFile (path: string, text: string, force: boolean): void {
  try {
    if (force) replaceAtomically(path, text, 0o600)
    else createExclusive(path, text, 0o600)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error'
    if (code === 'EEXIST' && !force) throw tpError('TENANT_PROXY_ERR_CLI_CONFIRM', [`--out ${path} exists; keys generate replaces a key file only with --force`])
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--out ${path}: cannot create it (${code})`], err)
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
