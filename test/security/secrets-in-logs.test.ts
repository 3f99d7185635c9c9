/**
 * No secret in any log line at any level: `tenant-proxy serve` runs as a real process at `trace`
 * with a password in REGISTRY_DATABASE_URL (a throwaway role; pg_hba may be trust, the password
 * is in the URL all the same), an ES256 key file and an HS256 key, takes normal, refused, forged
 * and failing-upstream requests and requests Node's HTTP parser refuses (carrying the client's
 * Authorization, Cookie and a replayed descriptor) on both listeners, calls the ops descriptor API
 * with its token, with a wrong one and with none, stops; then fails to start
 * three times (unreachable registry, bad key, bad URL). Every byte of stdout and stderr is
 * scanned for the password, the key material, the descriptors it issued and the client's
 * credentials, also inside every byte array, serialized Buffer and base64 or hex run it holds.
 *
 * Guards: src/log.ts (redact paths, error serializer without bytes or URL credentials, no config
 * or URL logged), src/proxy/client-error.ts (parser errors logged without err.rawPacket),
 * src/registry/connect.ts (messages without the URL's password), src/descriptor/keyring.ts (key
 * errors never quote the key), src/ops/descriptor-api.ts (a token's fingerprint, never the token
 * or the Authorization header) and the proxy never logging the descriptor header. Log the config,
 * the URL or the received bytes and this fails.
 */
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { createPrivateKey, randomBytes } from 'node:crypto'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { request } from 'undici'
import { CLI } from '../helpers/cli.js'
import { rawRequest } from '../helpers/raw-http.js'
import { createLogger } from '../../src/log.js'
import { databaseUrl, testServerUrl } from '../helpers/postgres.js'
import { es256Pem } from '../helpers/proxy.js'
import { migrate } from '../../src/registry/migrate.js'
import { RegistryStore } from '../../src/registry/store.js'
import { startUpstream } from '../helpers/upstream.js'

interface Run { stdout: string, stderr: string, code: number | null }

/** Runs `tenant-proxy serve`; `drive` gets the ports once it listens; resolves with all output after exit. */
async function serve (env: Record<string, string>, drive?: (ports: { traffic: number, ops: number }) => Promise<void>): Promise<Run> {
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
    const m = /"traffic":"[^"]*:(\d+)","ops":"[^"]*:(\d+)"[^\n]*"msg":"tenant-proxy listening"/.exec(stdout)
    if (m !== null && driving === null && drive !== undefined) {
      driving = drive({ traffic: Number(m[1]), ops: Number(m[2]) }).finally(() => child.kill('SIGTERM'))
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
  await writeFile(keyFile, JSON.stringify([{ key: pem }, { alg: 'HS256', key: hsSecret }]), { mode: 0o600 })
  const upstream = await startUpstream(t)
  const bearer = `Bearer-${randomBytes(16).toString('hex')}`
  const cookie = `session-${randomBytes(16).toString('hex')}`
  const apiToken = randomBytes(32).toString('hex')
  const wrongApiToken = randomBytes(32).toString('hex')
  const apiDescriptors: string[] = []

  const refused: Array<{ listener: string, status: number, body: string }> = []
  const run = await serve({
    REGISTRY_DATABASE_URL: registryUrl,
    TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile,
    TENANT_PROXY_UPSTREAM_URLS: upstream.origin,
    TENANT_PROXY_UPSTREAM_POOLS: JSON.stringify({ dead: ['http://127.0.0.1:1'] }),
    TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: apiToken
  }, async ({ traffic, ops }) => {
    // The ops descriptor API: accepted (descriptor and list), refused (wrong token, none).
    for (const [path, authorization] of [['/v1/tenants/acme/descriptor', `Bearer ${apiToken}`], ['/v1/tenants?limit=10', `Bearer ${apiToken}`], ['/v1/tenants/acme/descriptor', `Bearer ${wrongApiToken}`], ['/v1/tenants/acme/descriptor', undefined]] as const) {
      const r = await request(`http://127.0.0.1:${ops}${path}`, { headers: authorization === undefined ? {} : { authorization } })
      const body = await r.body.json() as { descriptor?: string }
      if (typeof body.descriptor === 'string') apiDescriptors.push(body.descriptor)
    }
    const send = async (path: string, headers: Record<string, string>): Promise<void> => {
      const r = await request(`http://127.0.0.1:${traffic}${path}`, { headers })
      await r.body.dump()
    }
    await send('/ok?password=x', { host: 'acme.example.com', authorization: bearer, cookie })
    await send('/', { host: 'unknown.example.com' })
    await send('/', { host: 'dead.example.com' })
    await send('/', { host: '127.0.0.1' })
    await send('/up', { host: 'acme.example.com' })
    await send('/forged', { host: 'acme.example.com', 'x-tenant-descriptor': 'forged.forged.forged' })
    // Requests Node's parser refuses, carrying the client's credentials and a descriptor it replays:
    // the parser error holds the received bytes (err.rawPacket).
    const replayed = String(upstream.seen[0]?.headers['x-tenant-descriptor'] ?? '')
    const credentials = `Authorization: ${bearer}\r\nCookie: ${cookie}\r\nX-Tenant-Descriptor: ${replayed}\r\n`
    const malformed = [
      `GET / HTTP/1.1\r\nHost: acme.example.com\r\n${credentials}Bad Header: x\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: acme.example.com\r\n${credentials}X-Padding: ${'p'.repeat(20_000)}\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: acme.example.com\r\n${credentials}Content-Length: 1\r\nContent-Length: 2\r\n\r\n`
    ]
    // A body the parser refuses after the request went to the app (traffic only: the ops listener
    // may have answered its 404 before the parser reaches the body, and then must not answer again).
    const badBody = `POST / HTTP/1.1\r\nHost: acme.example.com\r\n${credentials}Transfer-Encoding: chunked\r\n\r\nzz\r\n${bearer}\r\n`
    for (const [listener, port] of [['traffic', traffic], ['ops', ops]] as const) {
      for (const bytes of listener === 'traffic' ? [...malformed, badBody] : malformed) {
        const r = await rawRequest(port, bytes)
        refused.push({ listener, status: r.status, body: r.body })
      }
      // A client that sends part of a request and resets the connection: nothing to answer.
      await new Promise<void>((resolve) => {
        const socket = connect(port, '127.0.0.1', () => {
          socket.write(`GET / HTTP/1.1\r\n${credentials}`)
          socket.resetAndDestroy()
        })
        socket.on('close', () => resolve())
        socket.on('error', () => undefined)
      })
    }
  })
  t.equal(run.code, 0, 'serve stopped cleanly on SIGTERM')
  const tokens = upstream.seen.map((s) => String(s.headers['x-tenant-descriptor']))
  t.ok(tokens.length >= 2 && tokens.every((x) => x.split('.').length === 3), 'descriptors were issued')
  t.equal(apiDescriptors.length, 1, 'the descriptor API issued one')
  t.match(run.stdout, /issued a descriptor outside a request/, 'and logged it')
  t.equal(run.stdout.split('\n').filter((l) => l.includes('ops API call refused')).length, 2, 'and logged the two refusals')
  t.same(refused.map((r) => `${r.listener} ${r.status}`), ['traffic 400', 'traffic 431', 'traffic 400', 'traffic 400', 'ops 400', 'ops 431', 'ops 400'], 'the parser\'s refusals are answered like Node does (400, 431)')
  for (const r of refused) {
    t.match(JSON.parse(r.body), { error: { code: 'TENANT_PROXY_ERR_BAD_REQUEST', status: r.status } }, `${r.listener} ${r.status}: the catalogue's JSON error body`)
  }
  const clientErrors = run.stdout.split('\n').filter((l) => l.includes('client error')).map((l) => JSON.parse(l) as Record<string, unknown>)
  for (const code of ['HPE_INVALID_HEADER_TOKEN', 'HPE_HEADER_OVERFLOW', 'HPE_UNEXPECTED_CONTENT_LENGTH', 'HPE_INVALID_CHUNK_SIZE']) {
    const line = clientErrors.find((l) => l.code === code)
    t.match(line, { bytesParsed: Number, bytes: Number, status: Number }, `${code}: its code, byte offset and length are logged`)
  }

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
    ['client Authorization', bearer],
    ['client Cookie', cookie],
    ['ops API token', apiToken],
    ['ops API token, first half', apiToken.slice(0, 32)],
    ['refused ops API token', wrongApiToken],
    ...apiDescriptors.map((x, i): [string, string] => [`API descriptor ${i}`, x])
  ]
  const all = [run, failedRegistry, failedKey, failedUrl].map((r) => r.stdout + r.stderr).join('\n')
  t.ok(all.split('\n').length > 20, `scanned ${all.split('\n').length} lines`)
  // At trace nothing is filtered out; the error paths wrote their detailed lines (err objects with causes).
  t.match(run.stdout, /upstream request failed/, 'the failing upstream was logged with its error')
  t.match(failedRegistry.stdout + failedRegistry.stderr, /TENANT_PROXY_ERR_REGISTRY_UNREACHABLE|ECONNREFUSED/, 'the registry failure was reported')
  t.match(failedKey.stdout + failedKey.stderr, /TENANT_PROXY_ERR_KEY_INVALID/, 'the key failure was reported')
  const views = decodedViews(all)
  t.ok(views.length > 1, `${views.length} texts scanned (the output and every byte array, Buffer, base64 and hex run in it, decoded)`)
  for (const [name, secret] of secrets) t.notOk(views.some((v) => v.includes(secret)), `no ${name} in any log line, decoded or not`)
  t.notOk(views.some((v) => v.includes('PRIVATE KEY')), 'no PEM header')
})

t.test('the logger\'s error serializer writes lengths for bytes and no URL credentials', async (t) => {
  const lines: string[] = []
  const logger = createLogger('trace', { write: (line: string) => { lines.push(line) } })
  const secret = `s3cret-${randomBytes(8).toString('hex')}`
  const bytes = Buffer.from(`Authorization: Bearer ${secret}\r\n`)
  const err = Object.assign(new Error(`connect to postgres://app:${secret}@db.internal/registry failed`), {
    code: 'HPE_INVALID_HEADER_TOKEN',
    bytesParsed: 12,
    rawPacket: bytes,
    packetJson: bytes.toJSON(),
    byteArray: [...bytes],
    view: new Uint8Array(bytes),
    nested: { chunk: bytes, url: `https://user:${secret}@example.com/` }
  })
  const wrapper = new Error('wrapped', { cause: err })
  logger.warn({ err: wrapper }, 'with a cause')
  logger.warn({ err }, 'direct')
  logger.warn({ error: err }, 'under error')
  logger.error(err)
  t.equal(lines.length, 4)
  const views = decodedViews(lines.join(''))
  t.notOk(views.some((v) => v.includes(secret)), 'the secret is in no line, decoded or not')
  const direct = JSON.parse(lines[1] ?? '{}') as { err: Record<string, unknown> }
  t.match(direct.err, { code: 'HPE_INVALID_HEADER_TOKEN', bytesParsed: 12, rawPacket: `[${bytes.length} bytes]`, packetJson: `[${bytes.length} bytes]`, byteArray: `[${bytes.length} bytes]`, view: `[${bytes.length} bytes]`, nested: { chunk: `[${bytes.length} bytes]`, url: 'https://***@example.com/' } })
  t.match(direct.err.message, /postgres:\/\/\*\*\*@db\.internal\/registry/, 'the URL stays, its credentials do not')
})

/**
 * The output, plus every byte array, serialized Buffer, base64/base64url and hex run in it decoded
 * to text: a secret must not be in any of them.
 */
function decodedViews (output: string): string[] {
  const views = [output]
  for (const m of output.matchAll(/\[\s*(\d{1,3}(?:\s*,\s*\d{1,3}){3,})\s*\]/g)) {
    views.push(Buffer.from((m[1] ?? '').split(',').map((n) => Number(n) & 0xff)).toString('latin1'))
  }
  for (const m of output.matchAll(/[A-Za-z0-9+/_-]{12,}={0,2}/g)) {
    const run = m[0]
    // Any alignment: the run may begin mid-encoding.
    for (let shift = 0; shift < 4; shift++) {
      views.push(Buffer.from(run.slice(shift), 'base64').toString('latin1'))
      views.push(Buffer.from(run.slice(shift), 'base64url').toString('latin1'))
    }
  }
  for (const m of output.matchAll(/(?:[0-9a-fA-F]{2}){8,}/g)) {
    views.push(Buffer.from(m[0], 'hex').toString('latin1'))
    views.push(Buffer.from(m[0].slice(1), 'hex').toString('latin1'))
  }
  return views
}
