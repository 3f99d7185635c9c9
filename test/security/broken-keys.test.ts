/**
 * Broken key material refuses to start: `tenant-proxy serve` as a real process, given each broken
 * form (damaged PEM armour in a key file, malformed JSON or a single key object in
 * TENANT_PROXY_DESCRIPTOR_KEYS, a bare string without the hs256: marker, …), exits 78 with
 * TENANT_PROXY_ERR_KEY_INVALID naming the variable or the file, and prints no key material. It
 * used to take such text, private key included, as an HS256 secret and start.
 *
 * The registry URL points at a closed port, so a proxy that accepted the key would get past the
 * key and stop on the registry instead (exit 1, not 78) within a second.
 *
 * Every accepted form is checked the same way: `descriptor decode --configured-keys` loads the
 * configuration like serve does and verifies a descriptor signed with that key.
 *
 * Guards: src/descriptor/key-text.ts, src/descriptor/keyring.ts (HS256 only when asked for),
 * src/config/load.ts (keys checked at load, with their source).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { generateKey } from '../../src/descriptor/generate.js'
import { loadKeyring, type KeyConfig } from '../../src/descriptor/keyring.js'
import { DescriptorCache } from '../../src/descriptor/sign.js'
import { runCli } from '../helpers/cli.js'

const CLOSED_REGISTRY = {
  REGISTRY_DATABASE_URL: 'postgres://tenant_proxy@127.0.0.1:1/registry',
  TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '1000',
  TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
  TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
  TENANT_PROXY_TRAFFIC_PORT: '0',
  TENANT_PROXY_OPS_HOST: '127.0.0.1',
  TENANT_PROXY_OPS_PORT: '0'
}

const pem = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
/** The base64 lines of a PEM: key material that must never be printed. */
const bodyOf = (p: string): string[] => p.split('\n').filter((l) => l.length >= 16 && !l.startsWith('-----'))

t.test('serve refuses every broken key form: exit 78, KEY_INVALID, the source named, no key material', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tp-broken-keys-'))
  const file = async (name: string, text: string): Promise<string> => {
    const path = join(dir, name)
    await writeFile(path, text, { mode: 0o600 })
    return path
  }
  const key = pem()
  const next = pem()
  const secret = `Secret-${randomBytes(16).toString('hex')}`
  const material = [...bodyOf(key), ...bodyOf(next), secret, secret.slice(0, 12)]

  const cases: Array<{ name: string, env: Record<string, string>, source: RegExp, reason: RegExp }> = []
  const inFile = async (name: string, text: string, reason: RegExp): Promise<void> => {
    const path = await file(`${cases.length}.pem`, text)
    cases.push({ name, env: { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: path }, source: new RegExp(`TENANT_PROXY_DESCRIPTOR_KEYS_FILE \\(${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\)`), reason })
  }
  const inEnv = (name: string, value: string, reason: RegExp): void => {
    cases.push({ name, env: { TENANT_PROXY_DESCRIPTOR_KEYS: value }, source: /descriptor key (descriptor\.keys\[\d+\] from )?TENANT_PROXY_DESCRIPTOR_KEYS: /, reason })
  }
  await inFile('key file, BEGIN line damaged', key.replace('-----BEGIN', '----BEGIN'), /damaged PEM armour at line 1/)
  await inFile('key file, END line damaged', key.replace('-----END PRIVATE KEY-----', '-----END PRIVATE KEY----'), /damaged PEM armour/)
  await inFile('key file, END label differs', key.replace('-----END PRIVATE KEY-----', '-----END EC PRIVATE KEY-----'), /damaged PEM armour/)
  await inFile('key file, the next key damaged (mid-rotation)', `${key}${next.replace('-----END', '----END')}`, /damaged PEM armour at line 6/)
  await inFile('key file, armour intact, body corrupt', key.replace(bodyOf(key)[1] ?? '', (bodyOf(key)[1] ?? '').split('').reverse().join('')), /descriptor\.keys\[0\] from .*: not a readable PEM key/)
  await inFile('key file with a bare secret', `${secret}\n`, /holds no PEM key; an HS256 secret must be marked as one: hs256:<secret>/)
  await inFile('key file with a PEM and a secret line', `${key}${secret}\n`, /line 6 is not part of a PEM block/)
  inEnv('malformed JSON', `[{"key": "${key.replaceAll('\n', '\\n')}"`, /is not valid JSON/)
  inEnv('JSON V8 would quote', `[{"alg": "HS256", "key": ${secret}}]`, /is not valid JSON/)
  inEnv('a single key object', JSON.stringify({ key }), /is a single JSON object; descriptor keys are a list/)
  inEnv('a single HS256 key object', JSON.stringify({ alg: 'HS256', key: secret }), /is a single JSON object/)
  inEnv('a bare string without hs256:', secret, /holds no PEM key; an HS256 secret must be marked as one/)
  inEnv('escaped PEM with damaged armour', key.trim().replace('-----BEGIN', '---BEGIN').replaceAll('\n', '\\n'), /damaged PEM armour/)
  inEnv('a JSON list entry without alg that is no PEM', JSON.stringify([{ key: secret }]), /not a PEM key; an HS256 secret must say so: "alg": "HS256"/)
  inEnv('a JSON list entry with damaged armour', JSON.stringify([{ key: key.replace('-----BEGIN', '----BEGIN') }]), /not a PEM key/)
  inEnv('hs256: with a PEM on one line', `hs256:${key.replaceAll('\n', '')}`, /alg HS256 needs a shared secret, not a PEM key/)
  const configFile = await file('config.json', JSON.stringify({ descriptor: { keys: [{ key: secret }] } }))
  cases.push({ name: 'config file, an entry without alg that is no PEM', env: { TENANT_PROXY_CONFIG: configFile }, source: /descriptor\.keys\[0\] from config file /, reason: /not a PEM key/ })

  for (const c of cases) {
    const r = await runCli(['serve'], { ...CLOSED_REGISTRY, ...c.env })
    const output = r.stdout + r.stderr
    t.equal(r.code, 78, `${c.name}: exit 78`)
    t.match(r.stderr, /TENANT_PROXY_ERR_KEY_INVALID/, `${c.name}: TENANT_PROXY_ERR_KEY_INVALID`)
    t.match(r.stderr, c.source, `${c.name}: names the variable or file`)
    t.match(r.stderr, c.reason, `${c.name}: says what is wrong`)
    t.equal(r.stdout, '', `${c.name}: nothing started, nothing logged`)
    for (const chunk of material) t.notOk(output.includes(chunk), `${c.name}: no key material in the output`)
    t.notMatch(output, /PRIVATE KEY/, `${c.name}: no PEM armour in the output`)
  }
})

t.test('every explicit form still works (the configuration serve loads verifies a descriptor signed with it)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tp-good-keys-'))
  const es = generateKey('ES256')
  const hs = generateKey('HS256')
  const sec1 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }).toString()
  const generatedText = (await runCli(['keys', 'generate'])).stdout
  const generatedKey = /-----BEGIN PRIVATE KEY-----[\s\S]*?-----END PRIVATE KEY-----/.exec(generatedText)?.[0] ?? ''
  const forms: Array<{ name: string, env: Record<string, string>, signer: KeyConfig }> = [
    { name: 'a PEM in TENANT_PROXY_DESCRIPTOR_KEYS', env: { TENANT_PROXY_DESCRIPTOR_KEYS: es.key }, signer: { key: es.key } },
    { name: 'a PEM with escaped newlines (Kamal/Docker env file)', env: { TENANT_PROXY_DESCRIPTOR_KEYS: es.key.trim().replaceAll('\n', '\\n') }, signer: { key: es.key } },
    { name: 'the whole `keys generate` output in a file', env: { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: join(dir, 'generated.pem') }, signer: { key: generatedKey } },
    { name: 'openssl ecparam -genkey output (EC PARAMETERS + SEC1)', env: { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: join(dir, 'openssl.pem') }, signer: { key: sec1 } },
    { name: 'hs256:<secret> in TENANT_PROXY_DESCRIPTOR_KEYS', env: { TENANT_PROXY_DESCRIPTOR_KEYS: `hs256:${hs.key}` }, signer: { alg: 'HS256', key: hs.key } },
    { name: 'hs256:<secret> in a file with a comment', env: { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: join(dir, 'hs.key') }, signer: { alg: 'HS256', key: hs.key } },
    { name: 'a JSON list with alg HS256', env: { TENANT_PROXY_DESCRIPTOR_KEYS: JSON.stringify([{ alg: 'HS256', key: hs.key, kid: 'hs-1' }]) }, signer: { alg: 'HS256', key: hs.key, kid: 'hs-1' } }
  ]
  await writeFile(join(dir, 'generated.pem'), generatedText)
  await writeFile(join(dir, 'openssl.pem'), `-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n${sec1}`)
  await writeFile(join(dir, 'hs.key'), `# shared with the billing app\nhs256:${hs.key}\n`)
  t.ok(generatedKey !== '', 'keys generate printed a PEM')
  for (const form of forms) {
    const token = new DescriptorCache({ keyring: loadKeyring([form.signer]), issuer: 'tenant-proxy', audience: 'app', ttlS: 60, refreshMarginS: 20 })
      .get({ slug: 'acme', epoch: 1, db: { name: 'acme', host: 'db', port: 5432 } }, 'acme.example.com')
    const r = await runCli(['descriptor', 'decode', token, '--configured-keys', '--host', 'acme.example.com', '--json'], form.env)
    t.equal(r.code, 0, `${form.name}: ${r.stderr}`)
    t.match(JSON.parse(r.stdout || '{}'), { verified: true }, `${form.name}: verified`)
  }
})
