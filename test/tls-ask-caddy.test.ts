/**
 * On-demand TLS through a real Caddy (Debian's `caddy`): Caddy terminates TLS with certificates
 * from its own local CA (`tls internal { on_demand }`), asks tenant-proxy's ops listener before it
 * issues one (`on_demand_tls { ask … }`) and reverse-proxies to tenant-proxy's traffic listener.
 * A tenant's custom domain, added with the CLI, gets a certificate naming it and a routed answer
 * (the app behind the proxy sees that tenant's descriptor); an unknown domain and a suspended
 * tenant's get no certificate at all (the handshake fails). The Caddyfile is the one
 * docs/operations.md shows, with test ports and a temporary storage directory.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import { connect as netConnect } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { TLS_ASK_PATH } from '../src/proxy/tls-ask.js'
import { runCli } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

/** Why the test cannot run here, or null when `caddy` is on PATH. */
async function caddyMissing (): Promise<string | null> {
  return await new Promise((resolve) => {
    execFile('caddy', ['version'], { timeout: 10_000 }, (err) => {
      resolve(err === null ? null : `caddy is not installed (apt-get install caddy; .ci/run installs it): ${err.message}`)
    })
  })
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** The Caddyfile docs/operations.md shows (between its caddyfile markers). */
async function documentedCaddyfile (): Promise<string> {
  const doc = await readFile(path.join(ROOT, 'docs/operations.md'), 'utf8')
  const block = /<!-- caddyfile -->\n```caddyfile\n([\s\S]*?)```\n<!-- \/caddyfile -->/.exec(doc)?.[1]
  if (block === undefined) throw new Error('docs/operations.md has no caddyfile block between <!-- caddyfile --> markers')
  return block
}

/**
 * The documented Caddyfile for this test, each change applied exactly once (so the docs cannot
 * drift from what runs here): Caddy's local CA instead of a public one, tenant-proxy's test ports,
 * and loopback-only listeners, no admin endpoint, no trust store changes and a private storage.
 */
function forTest (caddyfile: string, o: { storage: string, httpPort: number, httpsPort: number, opsPort: number, trafficPort: number }): string {
  const edits: Array<[string, string]> = [
    ['{\n', `{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\thttp_port ${o.httpPort}\n\thttps_port ${o.httpsPort}\n\tstorage file_system {\n\t\troot ${o.storage}\n\t}\n`],
    [`ask http://127.0.0.1:9394${TLS_ASK_PATH}\n`, `ask http://127.0.0.1:${o.opsPort}${TLS_ASK_PATH}\n`],
    ['https:// {\n', 'https:// {\n\tbind 127.0.0.1\n'],
    ['\ttls {\n', '\ttls internal {\n'],
    ['reverse_proxy 127.0.0.1:8080\n', `reverse_proxy 127.0.0.1:${o.trafficPort}\n`]
  ]
  let out = caddyfile
  for (const [from, to] of edits) {
    const at = out.indexOf(from)
    if (at === -1) throw new Error(`the documented Caddyfile no longer contains ${JSON.stringify(from)}`)
    out = out.slice(0, at) + to + out.slice(at + from.length)
  }
  return out
}

interface RunningCaddy { httpsPort: number, rootCa: string, stderr: () => string }

/** Starts Caddy as a child process and stops it (by its PID) at teardown. */
async function startCaddy (t: Test, opsPort: number, trafficPort: number): Promise<RunningCaddy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-caddy-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const storage = path.join(dir, 'storage')
  const httpsPort = await freePort()
  const config = path.join(dir, 'Caddyfile')
  await writeFile(config, forTest(await documentedCaddyfile(), { storage, httpPort: await freePort(), httpsPort, opsPort, trafficPort }))
  // Everything Caddy would write under the user's home (autosave, default storage) stays in dir.
  const env = { PATH: process.env.PATH ?? '', HOME: dir, XDG_DATA_HOME: path.join(dir, 'data'), XDG_CONFIG_HOME: path.join(dir, 'config') }
  const child: ChildProcess = spawn('caddy', ['run', '--config', config, '--adapter', 'caddyfile'], { env, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { if (stderr.length < 200_000) stderr += chunk.toString() })
  let exited: number | string | null = null
  const exit = new Promise<void>((resolve) => child.once('exit', (code, signal) => { exited = code ?? signal ?? 'exit'; resolve() }))
  t.teardown(async () => {
    if (exited !== null) return
    child.kill('SIGTERM')
    const stopped = await Promise.race([exit.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 10_000).unref())])
    if (!stopped) {
      child.kill('SIGKILL')
      await exit
    }
  })
  const accepting = async (): Promise<boolean> => await new Promise((resolve) => {
    const s = netConnect(httpsPort, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
  const rootPath = path.join(storage, 'pki', 'authorities', 'local', 'root.crt')
  const rootCa = await until(async () => {
    if (exited !== null) throw new Error(`caddy exited (${String(exited)}):\n${stderr}`)
    if (!await accepting()) return undefined
    return await readFile(rootPath, 'utf8').catch(() => undefined)
  }, 'caddy to listen and create its local CA', 30_000)
  return { httpsPort, rootCa, stderr: () => stderr }
}

type Handshake = { ok: true, san: string, authorized: boolean } | { ok: false, error: string }

/** A TLS handshake with SNI `servername`; `ca` pinned when given, else no verification at all. */
async function handshake (port: number, servername: string, ca: string | null): Promise<Handshake> {
  return await new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ...(ca === null ? { rejectUnauthorized: false } : { ca }) })
    socket.setTimeout(15_000, () => socket.destroy(new Error('handshake timed out')))
    socket.once('secureConnect', () => {
      const san = socket.getPeerCertificate().subjectaltname ?? ''
      resolve({ ok: true, san, authorized: socket.authorized })
      socket.end()
    })
    socket.once('error', (err: Error) => resolve({ ok: false, error: err.message }))
  })
}

/** A GET through Caddy for `domain`, certificate verified against Caddy's root; the body as JSON. */
async function get (port: number, domain: string, ca: string, pathname: string, headers: Record<string, string> = {}): Promise<{ status: number, body: { url?: string, headers?: Record<string, string> } }> {
  return await new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, servername: domain, ca, path: pathname, headers: { ...headers, host: domain }, agent: false, timeout: 15_000 }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as { url?: string, headers?: Record<string, string> } }) })
    })
    req.on('timeout', () => req.destroy(new Error('request timed out')))
    req.on('error', reject)
    req.end()
  })
}

async function askCounts (opsUrl: string): Promise<Record<string, number>> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  return Object.fromEntries([...text.matchAll(/^tenant_proxy_tls_ask_total\{result="([a-z]+)"\} (\d+)$/gm)].map((m) => [m[1] as string, Number(m[2])]))
}

const missing = await caddyMissing()

t.test('Caddy with on-demand TLS asks tenant-proxy: a custom domain gets a certificate and its tenant, others no certificate', { skip: missing ?? false }, async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com'] },
    { slug: 'sleepy', domains: ['sleepy.example.com', 'shop.sleepy-corp.com'], state: 'suspended' }
  ])
  const upstream = await startUpstream(t)
  // As docs/operations.md advises behind Caddy on the same host.
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.1' }))
  // The tenant brings its own domain, as an operator would add it.
  const added = await runCli(['domains', 'add', 'acme', 'shop.acme-corp.com', '--wait'], { REGISTRY_DATABASE_URL: registry.url })
  t.equal(added.code, 0, `domains add: ${added.stderr}`)

  const caddy = await startCaddy(t, proxy.ops.port, proxy.traffic.port)
  t.teardown(() => { if (t.passing() === false) t.comment(`caddy's log:\n${caddy.stderr()}`) })

  const good = await handshake(caddy.httpsPort, 'shop.acme-corp.com', caddy.rootCa)
  t.match(good, { ok: true, authorized: true }, 'the custom domain gets a certificate from Caddy\'s CA')
  if (good.ok) t.equal(good.san, 'DNS:shop.acme-corp.com', 'naming exactly the custom domain')

  // A client's own forwarding headers: Caddy replaces them with its own, which the proxy trusts.
  const answer = await get(caddy.httpsPort, 'shop.acme-corp.com', caddy.rootCa, '/orders?page=2', { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'http' })
  t.equal(answer.status, 200, 'routed')
  t.equal(answer.body.url, '/orders?page=2', 'the app got the request')
  const token = answer.body.headers?.['x-tenant-descriptor'] ?? ''
  const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString() || '{}') as { sub?: string, host?: string }
  t.match(claims, { sub: 'acme', host: 'shop.acme-corp.com' }, 'with the descriptor of the tenant that owns the domain')
  t.equal(answer.body.headers?.['x-forwarded-proto'], 'https', 'the app is told the client used https')
  t.notMatch(answer.body.headers?.['x-forwarded-for'] ?? '', /203\.0\.113\.9/, 'and not the client\'s own X-Forwarded-For')
  t.equal(answer.body.headers?.['x-forwarded-host'], 'shop.acme-corp.com')
  t.same(await askCounts(proxy.opsUrl), { allowed: 1, denied: 0, invalid: 0, unavailable: 0 }, 'one ask for the certificate, none for the request on it')

  const seenBefore = upstream.seen.length
  for (const [domain, why] of [['unknown.example.org', 'an unknown domain'], ['shop.sleepy-corp.com', 'a suspended tenant\'s domain'], ['unknown.example.org', 'the unknown domain again']] as const) {
    // No CA pinned: the handshake fails because Caddy has no certificate to offer, not because
    // the client distrusts the one it got.
    const bad = await handshake(caddy.httpsPort, domain, null)
    t.equal(bad.ok, false, `${why}: the handshake fails, no certificate`)
    if (!bad.ok) t.match(bad.error, /alert|socket hang up|ECONNRESET|disconnected/i, `${why}: ${bad.error}`)
  }
  t.equal(upstream.seen.length, seenBefore, 'nothing reached the app for them')
  t.same(await askCounts(proxy.opsUrl), { allowed: 1, denied: 3, invalid: 0, unavailable: 0 }, 'one ask per refused handshake: a refusal is not cached')
})

t.test('the documented Caddyfile is valid as written', { skip: missing ?? false }, async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-caddy-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await writeFile(path.join(dir, 'Caddyfile'), await documentedCaddyfile())
  const env = { PATH: process.env.PATH ?? '', HOME: dir, XDG_DATA_HOME: path.join(dir, 'data'), XDG_CONFIG_HOME: path.join(dir, 'config') }
  const result = await new Promise<{ code: number | null, output: string }>((resolve) => {
    execFile('caddy', ['validate', '--config', path.join(dir, 'Caddyfile')], { env, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, output: stdout + stderr })
    })
  })
  t.equal(result.code, 0, result.output)
  t.match(result.output, /Valid configuration/)
})
