import { execFile } from 'node:child_process'
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { jwtVerify, importJWK } from 'jose'
import t from 'tap'
import { keysFromText } from '../src/descriptor/key-text.js'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache } from '../src/descriptor/sign.js'
import { CLI, runCli, type CliResult } from './helpers/cli.js'

/** Runs a shell command line with NODE and CLI set (for a umask of the test's choosing). */
async function runCliShell (command: string): Promise<CliResult> {
  return await new Promise((resolve) => {
    execFile('/bin/sh', ['-c', command], { env: { PATH: process.env.PATH ?? '', NODE: process.execPath, CLI }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

t.test('keys generate: ES256 key + public JWK that verifies what the key signs', async (t) => {
  const r = await runCli(['keys', 'generate', '--json'])
  t.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout) as { alg: string, kid: string, key: string, publicJwk: Record<string, string> }
  t.equal(out.alg, 'ES256')
  t.match(out.key, /^-----BEGIN PRIVATE KEY-----/)
  t.match(out.publicJwk, { kty: 'EC', crv: 'P-256', kid: out.kid, alg: 'ES256' })
  const ring = loadKeyring([{ key: out.key }])
  t.equal(ring.signer.kid, out.kid)
  const token = new DescriptorCache({ keyring: ring, issuer: 'i', audience: 'a', ttlS: 60, refreshMarginS: 20 }).get({ slug: 's', epoch: 1, db: { name: 'd', host: 'h', port: 5432 } }, 's.example')
  const { payload } = await jwtVerify(token, await importJWK(out.publicJwk, 'ES256'), { issuer: 'i', audience: 'a' })
  t.equal(payload.sub, 's')

  const text = await runCli(['keys', 'generate'])
  t.match(text.stdout, /# kid: \S+ {2}alg: ES256\n# Private key[^\n]*\n-----BEGIN PRIVATE KEY-----/)
})

t.test('keys generate --alg HS256 prints a 32-byte secret; a bad --alg is refused', async (t) => {
  const r = await runCli(['keys', 'generate', '--alg', 'HS256', '--json'])
  const out = JSON.parse(r.stdout) as { key: string, publicJwk: unknown }
  t.match(out.key, /^[A-Za-z0-9_-]{43}$/)
  t.equal(out.publicJwk, null)
  // The text output is a key text as it is: its secret line carries the hs256: marker.
  const text = await runCli(['keys', 'generate', '--alg', 'HS256'])
  t.match(text.stdout, /\nhs256:[A-Za-z0-9_-]{43}\n$/)
  const [parsed] = keysFromText(text.stdout, 'keys generate output')
  t.equal(parsed?.alg, 'HS256')
  t.equal(loadKeyring(parsed === undefined ? [] : [parsed]).signer.alg, 'HS256')
  const bad = await runCli(['keys', 'generate', '--alg', 'RS256'])
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--alg must be ES256 or HS256, got "RS256" \(TENANT_PROXY_ERR_CLI_USAGE\)/)
})

t.test('keys generate --out writes the key readable by its owner only, never over an existing file without --force', async (t) => {
  const dir = t.testdir({})
  const file = path.join(dir, 'descriptor.pem')
  // umask 000: a shell redirect would create a world-readable file; --out must not.
  const generate = async (args: string[]): Promise<CliResult> => await runCliShell(`umask 000; exec "$NODE" "$CLI" keys generate ${args.join(' ')}`)
  const r = await generate(['--out', file])
  t.equal(r.code, 0, r.stderr)
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600 whatever the umask')
  const text = readFileSync(file, 'utf8')
  t.match(text, /^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/, 'the file holds the PEM, nothing else')
  const kid = /# kid: (\S+)/.exec(r.stdout)?.[1]
  t.equal(loadKeyring(keysFromText(text, file)).signer.kid, kid, 'the key in the file is the one announced')
  t.match(r.stdout, /# Private key written to .*descriptor\.pem \(mode 0600\)[^\n]*\n# Public JWK for the app:\n\{"kty":"EC"/, 'stdout: where the key is, and the public JWK')
  t.notMatch(r.stdout + r.stderr, /PRIVATE KEY-----|"d":/, 'the private key is not printed')

  chmodSync(file, 0o644)
  const again = await generate(['--out', file])
  t.equal(again.code, 2, 'an existing file is refused')
  t.match(again.stderr, /--out .*descriptor\.pem exists; keys generate replaces a key file only with --force \(TENANT_PROXY_ERR_CLI_CONFIRM\)/)
  t.equal(readFileSync(file, 'utf8'), text, 'and left as it was')
  const forced = await generate(['--out', file, '--force'])
  t.equal(forced.code, 0, forced.stderr)
  t.not(readFileSync(file, 'utf8'), text, '--force replaces it')
  t.equal(statSync(file).mode & 0o777, 0o600, 'with mode 0600, not the old file\'s 0644')
  t.same(readdirSync(dir), ['descriptor.pem'], 'no temporary file left behind')

  // A symlink planted where the key goes is not followed.
  const elsewhere = path.join(dir, 'elsewhere.pem')
  const link = path.join(dir, 'link.pem')
  symlinkSync(elsewhere, link)
  const linked = await generate(['--out', link])
  t.equal(linked.code, 2)
  t.notOk(existsSync(elsewhere), 'the symlink target was not created')

  const hsFile = path.join(dir, 'hs.key')
  const hs = await generate(['--alg', 'HS256', '--out', hsFile, '--json'])
  t.equal(hs.code, 0, hs.stderr)
  t.equal(statSync(hsFile).mode & 0o777, 0o600)
  const hsText = readFileSync(hsFile, 'utf8')
  t.match(hsText, /^hs256:[A-Za-z0-9_-]{43}\n$/, 'an HS256 file holds hs256:<secret>')
  const json = JSON.parse(hs.stdout) as Record<string, unknown>
  t.same(Object.keys(json).sort(), ['alg', 'kid', 'out', 'publicJwk'], '--json with --out: no key in the output')
  t.notOk(hs.stdout.includes(hsText.slice('hs256:'.length, 20)), 'the secret is not printed')
  t.equal(loadKeyring(keysFromText(hsText, hsFile)).signer.kid, json.kid)

  const missingDir = await generate(['--out', path.join(dir, 'no', 'such', 'dir.pem')])
  t.equal(missingDir.code, 2)
  t.match(missingDir.stderr, /cannot create it \(ENOENT\)/)
})

const hasScript = await new Promise<boolean>((resolve) => execFile('script', ['--version'], (err) => resolve(err === null)))
t.test('keys generate printing a key to a terminal warns on stderr that it is a secret', { skip: hasScript ? false : 'script(1) from util-linux is not installed' }, async (t) => {
  const dir = t.testdir({})
  const errFile = path.join(dir, 'stderr.txt')
  // script(1) runs the command on a pseudo-terminal (stdout is a TTY); stderr goes to a file.
  const onTerminal = await new Promise<{ code: number, stdout: string }>((resolve) => {
    execFile('script', ['-q', '-e', '-c', `"${process.execPath}" "${CLI}" keys generate 2>"${errFile}"`, '/dev/null'], { timeout: 30_000 }, (err, stdout) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout })
    })
  })
  t.equal(onTerminal.code, 0)
  t.match(onTerminal.stdout, /-----BEGIN PRIVATE KEY-----/, 'the key is printed')
  t.match(readFileSync(errFile, 'utf8'), /^tenant-proxy: warning: the private key above is secret and is now on this terminal and in its scrollback; write the next one with --out FILE \(created with mode 0600, readable by its owner only\)\n$/)
  const piped = await runCli(['keys', 'generate'])
  t.equal(piped.stderr, '', 'no warning when stdout is not a terminal')
})

t.test('descriptor decode shows claims and verifies with a key file, a secret, a JWKS or the configured keys', async (t) => {
  const dir = t.testdir({})
  const gen = JSON.parse((await runCli(['keys', 'generate', '--json'])).stdout) as { key: string, publicJwk: Record<string, string> }
  const keyFile = path.join(dir, 'key.pem')
  await writeFile(keyFile, gen.key)
  const jwksFile = path.join(dir, 'jwks.json')
  await writeFile(jwksFile, JSON.stringify({ keys: [gen.publicJwk] }))
  const ring = loadKeyring([{ key: gen.key }])
  const token = new DescriptorCache({ keyring: ring, issuer: 'tenant-proxy', audience: 'app', ttlS: 60, refreshMarginS: 20 }).get({ slug: 'acme', epoch: 2, db: { name: 'acme', host: 'db', port: 5432 } }, 'acme.example.com')

  const plain = await runCli(['descriptor', 'decode', token])
  t.equal(plain.code, 0, plain.stderr)
  t.match(plain.stdout, /"sub": "acme"/)
  t.match(plain.stdout, /signature: NOT verified/)

  for (const args of [['--key', keyFile], ['--jwks', jwksFile], ['--configured-keys']]) {
    const r = await runCli(['descriptor', 'decode', token, ...args, '--host', 'acme.example.com', '--json'], { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile })
    t.equal(r.code, 0, `${args[0] ?? ''}: ${r.stderr}`)
    t.match(JSON.parse(r.stdout), { verified: true, claims: { sub: 'acme', epoch: 2 }, header: { alg: 'ES256', typ: 'tenant-db+jwt' } })
  }

  const wrongHost = await runCli(['descriptor', 'decode', token, '--key', keyFile, '--host', 'globex.example.com'])
  t.equal(wrongHost.code, 1)
  t.match(wrongHost.stderr, /host claim "acme\.example\.com" does not match the request host "globex\.example\.com" \(TENANT_PROXY_ERR_DESCRIPTOR_INVALID\)/)

  const hsToken = new DescriptorCache({ keyring: loadKeyring([{ key: 's'.repeat(32), alg: 'HS256' }]), issuer: 'tenant-proxy', audience: 'app', ttlS: 60, refreshMarginS: 20 }).get({ slug: 'acme', epoch: 1, db: { name: 'a', host: 'h', port: 1 } }, 'acme.test')
  t.equal((await runCli(['descriptor', 'decode', hsToken, '--secret', 's'.repeat(32)])).code, 0)
  const badSecret = await runCli(['descriptor', 'decode', hsToken, '--secret', 't'.repeat(32)])
  t.equal(badSecret.code, 1)
  t.match(badSecret.stderr, /bad signature/)

  const garbage = await runCli(['descriptor', 'decode', 'not-a-token'])
  t.equal(garbage.code, 1)
  t.match(garbage.stderr, /descriptor rejected: not a compact JWS/)
  const missingFile = await runCli(['descriptor', 'decode', token, '--key', path.join(dir, 'nope.pem')])
  t.equal(missingFile.code, 2)
  t.match(missingFile.stderr, /--key .*nope\.pem: ENOENT/)
})
