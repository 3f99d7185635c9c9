import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { loadKeyring, MIN_HS256_BYTES } from '../src/descriptor/keyring.js'
import { generateKey } from '../src/descriptor/generate.js'
import { isTpError } from '../src/errors.js'

const pem = (curve = 'P-256'): string => generateKeyPairSync('ec', { namedCurve: curve }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const publicPem = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString()

function refusal (keys: Parameters<typeof loadKeyring>[0]): string {
  try {
    loadKeyring(keys)
  } catch (err) {
    if (isTpError(err, 'TENANT_PROXY_ERR_KEY_INVALID')) return err.message
    throw err
  }
  return ''
}

t.test('refusals name descriptor.keys[i] and never contain key material', async (t) => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const secret31 = 's'.repeat(MIN_HS256_BYTES - 1)
  const good = pem()
  const cases: Array<[Parameters<typeof loadKeyring>[0], RegExp]> = [
    [[], /descriptor\.keys: at least one signing key is required/],
    [[{ key: secret31 }], /descriptor\.keys\[0\]: HS256 secret is 31 bytes; at least 32 are required/],
    [[{ key: '-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----' }], /descriptor\.keys\[0\]: not a readable PEM key/],
    [[{ key: rsa }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got rsa/],
    [[{ key: pem('P-384') }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got ec secp384r1/],
    [[{ key: publicPem() }], /descriptor\.keys\[0\]: the first key signs/],
    [[{ key: good, kid: 'a' }, { key: pem(), kid: 'a' }], /descriptor\.keys\[1\]: duplicate kid "a"/],
    [[{ key: good, alg: 'HS256' }], /descriptor\.keys\[0\]: alg HS256 needs a shared secret/],
    [[{ key: 'x'.repeat(40), alg: 'ES256' }], /descriptor\.keys\[0\]: alg ES256 needs an EC P-256 key/]
  ]
  for (const [keys, expected] of cases) {
    const message = refusal(keys)
    t.match(message, expected)
    for (const k of keys) {
      for (const line of k.key.split('\n').filter((l) => l.length > 20)) t.notOk(message.includes(line), 'no key material in the message')
    }
  }
  t.notOk(refusal([{ key: secret31 }]).includes(secret31))
})

t.test('HS256: 32 bytes accepted; secrets never published', async (t) => {
  const ring = loadKeyring([{ key: 'k'.repeat(32) }])
  t.equal(ring.signer.alg, 'HS256')
  t.same(ring.jwks(), { keys: [] })
})

t.test('ES256: kid defaults to the RFC 7638 thumbprint; public keys verify and are published', async (t) => {
  const signing = pem()
  const retired = publicPem()
  const ring = loadKeyring([{ key: signing }, { key: retired, kid: 'retired-2026' }, { key: 'h'.repeat(32), kid: 'hs' }])
  t.match(ring.signer.kid, /^[A-Za-z0-9_-]{43}$/)
  t.equal(ring.signer.alg, 'ES256')
  t.same([...ring.verificationKeys.keys()], [ring.signer.kid, 'retired-2026', 'hs'])
  const jwks = ring.jwks()
  t.equal(jwks.keys.length, 2, 'both EC keys, not the HS256 secret')
  t.match(jwks.keys[0], { kty: 'EC', crv: 'P-256', kid: ring.signer.kid, alg: 'ES256', use: 'sig' })
  t.notOk('d' in (jwks.keys[0] as object), 'no private part')
  t.equal(loadKeyring([{ key: signing }]).signer.kid, ring.signer.kid, 'the thumbprint is stable')
})

t.test('SEC1 ("BEGIN EC PRIVATE KEY") keys load too', async (t) => {
  const sec1 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }).toString()
  t.equal(loadKeyring([{ key: sec1 }]).signer.alg, 'ES256')
})

t.test('generateKey makes usable keys', async (t) => {
  const es = generateKey('ES256')
  t.match(es.key, /-----BEGIN PRIVATE KEY-----/)
  t.equal(es.publicJwk?.kid, es.kid)
  const hs = generateKey('HS256')
  t.match(hs.key, /^[A-Za-z0-9_-]{43}$/)
  t.equal(loadKeyring([{ key: hs.key }]).signer.kid, hs.kid)
})
