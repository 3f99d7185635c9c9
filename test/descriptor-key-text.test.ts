/**
 * Key texts (TENANT_PROXY_DESCRIPTOR_KEYS, its _FILE, the verifier kit's string form): the three
 * explicit forms are read, and every text that fits none of them is refused naming its source,
 * never quoting it. The real binary runs these in test/security/broken-keys.test.ts.
 */
import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { keysFromText } from '../src/descriptor/key-text.js'
import { generateKey } from '../src/descriptor/generate.js'
import { isTpError } from '../src/errors.js'

const pem = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const SOURCE = 'TENANT_PROXY_DESCRIPTOR_KEYS_FILE (/run/secrets/keys.pem)'

function refusal (text: string): string {
  try {
    keysFromText(text, SOURCE)
  } catch (err) {
    if (isTpError(err, 'TENANT_PROXY_ERR_KEY_INVALID')) return err.message
    throw err
  }
  return ''
}

t.test('the three forms', async (t) => {
  const a = pem()
  const b = pem()
  const secret = generateKey('HS256').key
  const generated = generateKey('ES256')
  t.same(keysFromText(a, SOURCE), [{ key: a.trim() }], 'one PEM')
  t.same(keysFromText(`${a}\n${b}`, SOURCE), [{ key: a.trim() }, { key: b.trim() }], 'several PEM blocks, in order')
  t.same(keysFromText(a.trim().replaceAll('\n', '\\n'), SOURCE), [{ key: a.trim() }], 'a PEM with escaped newlines (Docker env files)')
  const keysGenerateOutput = `# kid: ${generated.kid}  alg: ES256\n# Private key: keep it secret\n${generated.key}# Public JWK for the app:\n${JSON.stringify(generated.publicJwk)}\n`
  t.same(keysFromText(keysGenerateOutput, SOURCE), [{ key: generated.key.trim() }], 'the whole `keys generate` output: comments and the public JWK line are skipped')
  const params = '-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n'
  t.same(keysFromText(params + a, SOURCE), [{ key: a.trim() }], 'openssl ecparam output: the EC PARAMETERS block carries no key')
  t.same(keysFromText(`hs256:${secret}`, SOURCE), [{ alg: 'HS256', key: secret }], 'hs256:<secret>')
  t.same(keysFromText(`# shared with the billing app\nHS256:${secret}\n`, SOURCE), [{ alg: 'HS256', key: secret }], 'the prefix in any case, after comment lines, with a trailing newline')
  t.same(keysFromText(JSON.stringify([{ key: a }, { alg: 'HS256', key: secret, kid: 'hs' }]), SOURCE), [{ key: a }, { alg: 'HS256', key: secret, kid: 'hs' }], 'a JSON list')
})

t.test('every other text is refused, naming the source and never quoting the text', async (t) => {
  const a = pem()
  const secret = 'Secret-material-'.padEnd(40, 'm')
  const body = a.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))
  const cases: Array<[string, string, RegExp]> = [
    ['empty', '  \n', /is empty/],
    ['a bare secret', secret, /holds no PEM key; an HS256 secret must be marked as one: hs256:<secret>/],
    ['BEGIN line with four dashes', a.replace('-----BEGIN', '----BEGIN'), /has damaged PEM armour at line 1/],
    ['BEGIN line cut short', a.replace('-----BEGIN PRIVATE KEY-----', '-----BEGIN PRIVATE KEY'), /has damaged PEM armour at line 1/],
    ['END line missing', a.replace(/-----END PRIVATE KEY-----\s*$/, ''), /has damaged PEM armour at line 1/],
    ['END label differs from BEGIN', a.replace('-----END PRIVATE KEY-----', '-----END EC PRIVATE KEY-----'), /has damaged PEM armour/],
    ['the second key damaged', `${pem()}\n${a.replace('-----END', '----END')}`, /has damaged PEM armour at line 7/],
    ['escaped newlines, damaged armour', a.trim().replace('-----BEGIN', '---BEGIN').replaceAll('\n', '\\n'), /has damaged PEM armour at line 1/],
    ['no armour at all', body.join('\n'), /holds no PEM key/],
    ['a secret line beside a PEM', `${a}\n${secret}\n`, /line 7 is not part of a PEM block/],
    ['an hs256: line beside a PEM', `${a}\nhs256:${secret}\n`, /line 7 is not part of a PEM block/],
    ['two hs256: lines', `hs256:${secret}\nhs256:${secret}x`, /an hs256: secret is one line; line 2 is more/],
    ['an empty hs256: secret', 'hs256:  ', /the hs256: secret is empty/],
    ['malformed JSON list', `[{"key": "${secret}"`, /is not valid JSON \(error at character \d+\); a JSON key text is a list/],
    ['JSON V8 would quote', `[{"key": ${secret}}]`, /is not valid JSON; a JSON key text is a list/],
    ['a single key object', JSON.stringify({ key: a }), /is a single JSON object; descriptor keys are a list/],
    ['a single HS256 object', JSON.stringify({ alg: 'HS256', key: secret }), /is a single JSON object/],
    ['a private JWK line beside a PEM', `${a}${JSON.stringify({ kty: 'EC', d: 'private' })}\n`, /line 6 is not part of a PEM block/]
  ]
  for (const [name, text, expected] of cases) {
    const message = refusal(text)
    t.match(message, expected, name)
    t.ok(message.startsWith(`descriptor key ${SOURCE}: `), `${name}: names the source`)
    for (const chunk of [secret, secret.slice(0, 12), ...body.filter((l) => l.length >= 16)]) t.notOk(message.includes(chunk), `${name}: no key material in the message`)
  }
})

t.test('the verifier kit reads a key string the same way', async (t) => {
  const { createVerifier } = await import('@tenant-proxy/verify')
  const secret = generateKey('HS256').key
  const opts = { issuer: 'tenant-proxy', audience: 'app' }
  t.ok(createVerifier({ keys: `hs256:${secret}` }, opts), 'hs256:<secret>')
  t.ok(createVerifier({ keys: pem() }, opts), 'a PEM')
  t.throws(() => createVerifier({ keys: secret }, opts), { code: 'TENANT_PROXY_ERR_KEY_INVALID', message: /^descriptor key createVerifier keys: holds no PEM key/ }, 'a bare secret is refused, not taken for HS256')
})
