import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { jwtVerify, importJWK } from 'jose'
import t from 'tap'
import { keysFromText } from '../src/descriptor/key-text.js'
import { loadKeyring } from '../src/descriptor/keyring.js'
import { DescriptorCache } from '../src/descriptor/sign.js'
import { runCli } from './helpers/cli.js'

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
