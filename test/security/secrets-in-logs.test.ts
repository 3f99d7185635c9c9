/**
 * No secret in any log line at any level: `tenant-proxy serve` runs as a real process at `trace`
 * with a password in REGISTRY_DATABASE_URL (a throwaway role; pg_hba may be trust, the password
 * is in the URL all the same), an ES256 key file and an HS256 key, takes normal, refused, forged
 * and failing-upstream requests, stops; then fails to start twice (unreachable registry, bad key).
 * Every byte of stdout and stderr is scanned for the password, the key material and the
 * descriptors it issued.
 *
 * Guards: src/log.ts (redact paths, no config or URL logged), src/registry/connect.ts (messages
 * without the URL's password), src/descriptor/keyring.ts (key errors never quote the key) and the
 * proxy never logging the descriptor header. Log the config or the URL and this fails.
 */
import { spawn } from 'node:child_process'
import { createPrivateKey, randomBytes } from 'node:crypto'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { request } from 'undici'
import { CLI } from '../helpers/cli.js'
import { databaseUrl, testServerUrl } from '../helpers/postgres.js'
import { es256Pem } from '../helpers/proxy.js'
import { migrate } from '../../src/registry/migrate.js'
import { RegistryStore } from '../../src/registry/store.js'
import { startUpstream } from '../helpers/upstream.js'

interface Run { stdout: string, stderr: string, code: number | null }

/** Runs `tenant-proxy serve`; `drive` gets the ports once it listens; resolves with all output after exit. */
async function serve (env: Record<string, string>, drive?: (ports: { traffic: number }) => Promise<void>): Promise<Run> {
  const child = spawn(process.execPath, [CLI, 'serve'], {
    env: { PATH: process.env.PATH ?? '', TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1', TENANT_PROXY_TRAFFIC_PORT: '0', TENANT_PROXY_OPS_HOST: '127.0.0.1', TENANT_PROXY_OPS_PORT: '0', TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0', TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '', TENANT_PROXY_LOG_LEVEL: 'trace', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { clearTimeout(killer); resolve(code) }))
  let driving: Promise<void> | null = null
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString()
    const m = /"traffic":"[^"]*:(\d+)"[^\n]*"msg":"tenant-proxy listening"/.exec(stdout)
    if (m !== null && driving === null && drive !== undefined) {
      driving = drive({ traffic: Number(m[1]) }).finally(() => child.kill('SIGTERM'))
    }
  })
  const code = await exited
  await (driving as Promise<void> | null)
  return { stdout, stderr, code }
}

t.test('no secret in any log line, at trace level, in normal, refused, failing and startup-error paths', async (t) => {
  const admin = await testServerUrl()
  const suffix = `${process.pid}_${randomBytes(4).toString('hex')}`
  const role = `tp_sec_${suffix}`
  const password = `Pw-${randomBytes(12).toString('hex')}`
  const database = `tp_sec_${suffix}`
  const adminClient = new pg.Client({ connectionString: admin })
  await adminClient.connect()
  await adminClient.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`)
  await adminClient.query(`CREATE DATABASE ${database} OWNER ${role}`)
  await adminClient.end()
  t.teardown(async () => {
    const c = new pg.Client({ connectionString: admin })
    await c.connect()
    await c.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    await c.query(`DROP ROLE IF EXISTS ${role}`)
    await c.end()
  })
  const url = new URL(databaseUrl(admin, database))
  url.username = role
  url.password = password
  const registryUrl = url.toString()

  const pool = new pg.Pool({ connectionString: registryUrl, max: 1 })
  await migrate(pool, 'tenant_proxy')
  const store = new RegistryStore(pool, 'tenant_proxy')
  const tenant = { databaseHost: null, databasePort: null, state: 'active' as const, settings: {} }
  await store.addTenant({ ...tenant, slug: 'acme', domains: ['acme.example.com'], databaseName: 'acme', upstream: null })
  await store.addTenant({ ...tenant, slug: 'dead', domains: ['dead.example.com'], databaseName: 'dead', upstream: 'dead' })
  await pool.end()

  const pem = es256Pem()
  const hsSecret = randomBytes(32).toString('base64url')
  const dir = await mkdtemp(join(tmpdir(), 'tp-secrets-'))
  const keyFile = join(dir, 'keys.json')
  await writeFile(keyFile, JSON.stringify([{ key: pem }, { key: hsSecret }]), { mode: 0o600 })
  const upstream = await startUpstream(t)

  const run = await serve({
    REGISTRY_DATABASE_URL: registryUrl,
    TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile,
    TENANT_PROXY_UPSTREAM_URLS: upstream.origin,
    TENANT_PROXY_UPSTREAM_POOLS: JSON.stringify({ dead: ['http://127.0.0.1:1'] })
  }, async ({ traffic }) => {
    const send = async (path: string, headers: Record<string, string>): Promise<void> => {
      const r = await request(`http://127.0.0.1:${traffic}${path}`, { headers })
      await r.body.dump()
    }
    await send('/ok?password=x', { host: 'acme.example.com', authorization: 'Bearer client-secret', cookie: 'session=client-secret' })
    await send('/', { host: 'unknown.example.com' })
    await send('/', { host: 'dead.example.com' })
    await send('/', { host: '127.0.0.1' })
    await send('/up', { host: 'acme.example.com' })
    await send('/forged', { host: 'acme.example.com', 'x-tenant-descriptor': 'forged.forged.forged' })
  })
  t.equal(run.code, 0, 'serve stopped cleanly on SIGTERM')
  const tokens = upstream.seen.map((s) => String(s.headers['x-tenant-descriptor']))
  t.ok(tokens.length >= 2 && tokens.every((x) => x.split('.').length === 3), 'descriptors were issued')

  // Startup failures print the most detailed errors: the registry unreachable, a key unreadable.
  const unreachable = new URL(registryUrl)
  unreachable.port = '1'
  const failedRegistry = await serve({ REGISTRY_DATABASE_URL: unreachable.toString(), TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile, TENANT_PROXY_UPSTREAM_URLS: upstream.origin, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '2000' })
  t.not(failedRegistry.code, 0, 'unreachable registry: serve fails')
  const pemLines = pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))
  const corrupt = pem.replace(pemLines[1] ?? '', (pemLines[1] ?? '').split('').reverse().join(''))
  const failedKey = await serve({ REGISTRY_DATABASE_URL: registryUrl, TENANT_PROXY_DESCRIPTOR_KEYS: corrupt, TENANT_PROXY_UPSTREAM_URLS: upstream.origin })
  t.not(failedKey.code, 0, 'unreadable key: serve fails')
  const failedUrl = await serve({ REGISTRY_DATABASE_URL: `${registryUrl}?sslmode=bogus`, TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile, TENANT_PROXY_UPSTREAM_URLS: upstream.origin })

  const d = String(createPrivateKey(pem).export({ format: 'jwk' }).d)
  const secrets: Array<[string, string]> = [
    ['database password', password],
    ['database password (URL-encoded)', encodeURIComponent(password)],
    ['HS256 secret', hsSecret],
    ['private key d', d],
    ...pemLines.map((l, i): [string, string] => [`PEM line ${i}`, l]),
    ...pemLines.map((l, i): [string, string] => [`corrupt PEM line ${i}`, corrupt.split('\n').filter((x) => x !== '' && !x.startsWith('-----'))[i] ?? l]),
    ...tokens.map((x, i): [string, string] => [`descriptor ${i}`, x]),
    ['client bearer token', 'client-secret']
  ]
  const all = [run, failedRegistry, failedKey, failedUrl].map((r) => r.stdout + r.stderr).join('\n')
  t.ok(all.split('\n').length > 20, `scanned ${all.split('\n').length} lines`)
  // At trace nothing is filtered out; the error paths wrote their detailed lines (err objects with causes).
  t.match(run.stdout, /upstream request failed/, 'the failing upstream was logged with its error')
  t.match(failedRegistry.stdout + failedRegistry.stderr, /TENANT_PROXY_ERR_REGISTRY_UNREACHABLE|ECONNREFUSED/, 'the registry failure was reported')
  t.match(failedKey.stdout + failedKey.stderr, /TENANT_PROXY_ERR_KEY_INVALID/, 'the key failure was reported')
  for (const [name, secret] of secrets) t.notOk(all.includes(secret), `no ${name} in any log line`)
  t.notMatch(all, /PRIVATE KEY/, 'no PEM header')
})
