import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { jwkThumbprint, keysFromConfig, loadKeyring, MIN_HS256_BYTES, type KeyConfig } from '../src/descriptor/keyring.js'
import { generateKey } from '../src/descriptor/generate.js'
import { isTpError } from '../src/errors.js'

const pem = (curve = 'P-256'): string => generateKeyPairSync('ec', { namedCurve: curve }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const publicPem = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString()

/** The message of the TENANT_PROXY_ERR_KEY_INVALID error `load` throws ('' when it does not throw). */
function refusal (keys: readonly KeyConfig[], load: (keys: readonly KeyConfig[]) => unknown = loadKeyring): string {
  try {
    load(keys)
  } catch (err) {
    if (isTpError(err, 'TENANT_PROXY_ERR_KEY_INVALID')) return err.message
    throw err
  }
  return ''
}

/** Every run of 16+ characters of a key that could appear in a message. */
function materialOf (key: unknown): string[] {
  if (typeof key !== 'string') return []
  const chunks = key.split(/-----[A-Z ]+-----|\s+/).filter((c) => c.length >= 16)
  return chunks.length > 0 ? chunks : key.length >= 8 ? [key] : []
}

t.test('refusals carry the code, name descriptor.keys[i] and never contain key material', async (t) => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const rsaPkcs1 = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString()
  const ed = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const encrypted = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'pass phrase' }).toString()
  const params = '-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n'
  const secret31 = 'S3cr3t-'.padEnd(MIN_HS256_BYTES - 1, 'q')
  const good = pem()
  const cases: Array<[string, readonly KeyConfig[], RegExp]> = [
    ['empty list', [], /^descriptor key descriptor\.keys: at least one signing key is required; create one with `tenant-proxy keys generate`$/],
    ['HS256 secret of 31 bytes', [{ key: secret31, alg: 'HS256' }], /descriptor\.keys\[0\]: HS256 secret is 31 bytes; at least 32 are required/],
    ['31 bytes counted as UTF-8, not characters', [{ key: 'é'.repeat(15) + 'x', alg: 'HS256' }], /descriptor\.keys\[0\]: HS256 secret is 31 bytes/],
    ['unparsable PEM', [{ key: '-----BEGIN PRIVATE KEY-----\nnot base64 at all, no\n-----END PRIVATE KEY-----' }], /descriptor\.keys\[0\]: not a readable PEM key/],
    ['RSA (PKCS#8)', [{ key: rsa }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got an RSA key/],
    ['RSA (PKCS#1)', [{ key: rsaPkcs1 }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got an RSA key/],
    ['not P-256', [{ key: pem('P-384') }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got ec secp384r1/],
    ['Ed25519', [{ key: ed }], /descriptor\.keys\[0\]: ES256 needs an EC P-256 key, got ed25519/],
    ['encrypted PEM', [{ key: encrypted }], /descriptor\.keys\[0\]: encrypted private keys are not supported/],
    ['EC PARAMETERS alone', [{ key: good }, { key: params }], /descriptor\.keys\[1\]: the PEM holds no key/],
    ['two keys in one entry', [{ key: good + publicPem() }], /descriptor\.keys\[0\]: one PEM key per entry/],
    ['certificate', [{ key: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----' }], /descriptor\.keys\[0\]: a certificate is not a key/],
    ['first key public only', [{ key: publicPem() }, { key: good }], /descriptor\.keys\[0\]: the first key signs, so it must be a private key or secret/],
    ['duplicate kid', [{ key: good, kid: 'a' }, { key: pem(), kid: 'a' }], /descriptor\.keys\[1\]: duplicate kid "a"/],
    ['duplicate default kid (same key twice)', [{ key: good }, { key: good }], /descriptor\.keys\[1\]: duplicate kid "/],
    ['alg HS256 with a PEM', [{ key: good, alg: 'HS256' }], /descriptor\.keys\[0\]: alg HS256 needs a shared secret, not a PEM key/],
    ['alg ES256 with a secret', [{ key: 'x'.repeat(40), alg: 'ES256' }], /descriptor\.keys\[0\]: alg ES256 needs an EC P-256 key in PEM form/],
    ['unknown alg from untyped config', [{ key: good, alg: 'RS256' as KeyConfig['alg'] }], /descriptor\.keys\[0\]: alg must be ES256 or HS256/],
    ['empty kid', [{ key: good, kid: '' }], /descriptor\.keys\[0\]: kid must be a non-empty string/],
    ['key not a string', [{ key: 'k'.repeat(32), alg: 'HS256' }, { key: undefined as unknown as string }], /descriptor\.keys\[1\]: key must be a non-empty string/],
    // HS256 is never implied: a key that is not a PEM, without alg HS256, is refused.
    ['a secret without alg', [{ key: 'Secret-without-alg-'.padEnd(40, 'z') }], /descriptor\.keys\[0\]: not a PEM key; an HS256 secret must say so: "alg": "HS256"/],
    ['damaged BEGIN line, no alg', [{ key: good.replace('-----BEGIN', '----BEGIN') }], /descriptor\.keys\[0\]: not a PEM key; an HS256 secret must say so/],
    ['damaged END line, no alg', [{ key: good.replace('-----END PRIVATE KEY-----', '-----END PRIVATE KEY') }], /descriptor\.keys\[0\]: not a readable PEM key/],
    ['alg HS256 with damaged armour', [{ key: good.replace('-----BEGIN', '----BEGIN'), alg: 'HS256' }], /descriptor\.keys\[0\]: alg HS256 needs a shared secret, not a PEM key/],
    ['alg HS256 with a JWK', [{ key: JSON.stringify({ kty: 'oct', k: 'Jwk-secret-'.padEnd(43, 'j') }), alg: 'HS256' }], /descriptor\.keys\[0\]: alg HS256 needs the secret itself, not JSON/]
  ]
  for (const [name, keys, expected] of cases) {
    const message = refusal(keys)
    t.match(message, expected, name)
    for (const k of keys) {
      for (const chunk of materialOf(k.key)) t.notOk(message.includes(chunk), `${name}: no key material in the message`)
    }
  }
  t.match(refusal([{ key: 'short', alg: 'HS256' }], (k) => loadKeyring(k, 'upstreams.shop.keys')), /upstreams\.shop\.keys\[0\]: HS256 secret is 5 bytes/, 'the path is the caller\'s')
  t.match(refusal([{ key: good }, { key: 'x'.repeat(40) }], (k) => loadKeyring(k, 'descriptor.keys', 'TENANT_PROXY_DESCRIPTOR_KEYS_FILE (/run/keys.pem)')), /^descriptor key descriptor\.keys\[1\] from TENANT_PROXY_DESCRIPTOR_KEYS_FILE \(\/run\/keys\.pem\): not a PEM key/, 'and the source, when given')
})

t.test('HS256: 32 bytes accepted; the UTF-8 bytes are the key; secrets never published', async (t) => {
  const secret = 'k'.repeat(MIN_HS256_BYTES)
  const ring = loadKeyring([{ key: secret, alg: 'HS256' }])
  t.equal(ring.signer.alg, 'HS256')
  t.equal(ring.signer.kid, jwkThumbprint({ kty: 'oct', k: Buffer.from(secret).toString('base64url') }), 'kid is the RFC 7638 thumbprint of the oct JWK')
  t.same(ring.jwks(), { keys: [] })
  const entry = ring.verificationKeys.get(ring.signer.kid)
  t.equal(entry?.alg, 'HS256')
  t.same(entry?.key.export(), Buffer.from(secret, 'utf8'))
  t.same(JSON.parse(Buffer.from(ring.signer.headerB64, 'base64url').toString()), { alg: 'HS256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
})

t.test('ES256: kid defaults to the RFC 7638 thumbprint; public keys verify and are published', async (t) => {
  const signing = pem()
  const retired = publicPem()
  const ring = loadKeyring([{ key: signing }, { key: retired, kid: 'retired-2026' }, { key: 'h'.repeat(32), kid: 'hs', alg: 'HS256' }])
  t.match(ring.signer.kid, /^[A-Za-z0-9_-]{43}$/)
  t.equal(ring.signer.alg, 'ES256')
  t.same(JSON.parse(Buffer.from(ring.signer.headerB64, 'base64url').toString()), { alg: 'ES256', kid: ring.signer.kid, typ: 'tenant-db+jwt' })
  t.same([...ring.verificationKeys.keys()], [ring.signer.kid, 'retired-2026', 'hs'])
  t.equal(ring.verificationKeys.get('retired-2026')?.key.type, 'public')
  t.equal(ring.verificationKeys.get(ring.signer.kid)?.key.type, 'public', 'the private key is not handed to verifiers')
  const jwks = ring.jwks()
  t.equal(jwks.keys.length, 2, 'both EC keys, not the HS256 secret')
  const [first] = jwks.keys
  t.match(first, { kty: 'EC', crv: 'P-256', kid: ring.signer.kid, alg: 'ES256', use: 'sig' })
  t.notOk('d' in (first ?? {}), 'no private part')
  t.equal(first === undefined ? '' : jwkThumbprint(first), ring.signer.kid)
  t.equal(loadKeyring([{ key: signing }]).signer.kid, ring.signer.kid, 'the thumbprint is stable')
  if (first !== undefined) first.kid = 'mutated'
  t.equal(ring.jwks().keys[0]?.kid, ring.signer.kid, 'jwks() hands out copies')
})

t.test('SEC1 keys load, also after the EC PARAMETERS block openssl ecparam writes', async (t) => {
  const sec1 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }).toString()
  t.match(sec1, /BEGIN EC PRIVATE KEY/)
  t.equal(loadKeyring([{ key: sec1 }]).signer.alg, 'ES256')
  const withParams = '-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n' + sec1
  t.equal(loadKeyring([{ key: withParams }]).signer.kid, loadKeyring([{ key: sec1 }]).signer.kid)
})

t.test('keysFromConfig: verification keys only, a public key may come first', async (t) => {
  const pub = publicPem()
  const keys = keysFromConfig([{ key: pub, kid: 'next' }, { key: 'v'.repeat(32), kid: 'hs', alg: 'HS256' }])
  t.same([...keys.entries()].map(([kid, k]) => [kid, k.alg, k.key.type]), [['next', 'ES256', 'public'], ['hs', 'HS256', 'secret']])
  t.match(refusal([], (k) => keysFromConfig(k)), /descriptor key keys: at least one key is required/)
  t.match(refusal([{ key: 'short', alg: 'HS256' }], (k) => keysFromConfig(k, '--secret')), /--secret\[0\]: HS256 secret is 5 bytes/)
})

t.test('generateKey makes usable keys', async (t) => {
  const es = generateKey('ES256')
  t.match(es.key, /^-----BEGIN PRIVATE KEY-----/)
  t.equal(es.alg, 'ES256')
  t.equal(es.publicJwk?.kid, es.kid)
  t.equal(loadKeyring([{ key: es.key }]).signer.kid, es.kid)
  const hs = generateKey('HS256')
  t.match(hs.key, /^[A-Za-z0-9_-]{43}$/)
  t.equal(Buffer.from(hs.key, 'base64url').length, 32, '32 random bytes')
  t.equal(hs.publicJwk, undefined, 'a secret has no public form')
  t.equal(loadKeyring([{ key: hs.key, alg: 'HS256' }]).signer.kid, hs.kid)
  t.not(generateKey('HS256').key, hs.key)
})
