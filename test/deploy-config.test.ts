/**
 * The deploy kit's Kamal and Compose files: valid YAML whose tenant-proxy settings are real
 * configuration keys with valid values (loaded through the proxy's own config loader), with the
 * ports, paths, host names and secrets that must agree across files agreeing. The Compose sample
 * app is then run for real next to the proxy (without Docker) to show the two verify each other.
 */
import { spawn } from 'node:child_process'
import { createServer, request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { parse } from 'yaml'
import { loadConfig, type Config } from '../src/config/load.js'
import { CLI } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { es256Pem, startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const KAMAL = path.join(ROOT, 'deploy/kamal')

/** A YAML document as plain data; the tests narrow what they read with `at`. */
type Yaml = Record<string, unknown>

async function yamlFile (file: string): Promise<Yaml> {
  // merge: Compose files use `<<:` merge keys (YAML 1.1), as Docker Compose does.
  return parse(await readFile(file, 'utf8'), { merge: true }) as Yaml
}

/** The value at a dotted path, or undefined. */
function at (doc: unknown, dotted: string): unknown {
  let node: unknown = doc
  for (const key of dotted.split('.')) {
    if (typeof node !== 'object' || node === null) return undefined
    node = (node as Record<string, unknown>)[key]
  }
  return node
}

function strings (value: unknown): string[] {
  return Array.isArray(value) ? value.map(String) : []
}

/** Placeholder values for secrets, valid enough for the config loader. */
const SECRET_PLACEHOLDERS: Readonly<Record<string, string>> = {
  REGISTRY_DATABASE_URL: 'postgres://tenant_proxy_ro:placeholder@registry-db.internal:5432/tenant_registry',
  RAILS_MASTER_KEY: 'placeholder',
  TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: 'placeholder-token-of-at-least-32-characters'
}

/** Loads the config an env section describes; key files read as a fresh PEM, other files do not exist. */
function configFrom (env: Record<string, string>, keyFiles: string[]): Config {
  const pem = es256Pem()
  return loadConfig({
    env,
    readFile: (p) => {
      if (keyFiles.includes(p)) return pem
      throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' })
    }
  })
}

/** `env: { clear, secret }` of a Kamal file as one environment, secrets as placeholders. */
function kamalEnv (section: unknown): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries((at(section, 'clear') ?? {}) as Record<string, unknown>)) env[k] = String(v)
  for (const name of strings(at(section, 'secret'))) env[name] = SECRET_PLACEHOLDERS[name] ?? 'placeholder'
  return env
}

/** Names a .kamal/secrets file defines, checking every value is a reference, not a literal secret. */
async function secretsFile (t: Test, file: string): Promise<Set<string>> {
  const names = new Set<string>()
  for (const line of (await readFile(file, 'utf8')).split('\n')) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim())
    if (m === null) continue
    names.add(m[1] ?? '')
    t.match(m[2], /^\$/, `${path.relative(ROOT, file)}: ${m[1] ?? ''} is a placeholder ($VAR or $(command)), not a value`)
  }
  return names
}

/**
 * Kamal's configuration keys the fragments may use, with the first Kamal release that accepts each:
 * Kamal validates deploy.yml against the examples in lib/kamal/configuration/docs/*.yml and
 * refuses unknown keys, so a key that a release's docs lack fails there. Checked tag by tag in
 * basecamp/kamal. `*` stands for a role or accessory name, `[]` for a list entry.
 */
const KAMAL_KEYS: Readonly<Record<string, string>> = {
  minimum_version: '2.0.0', service: '2.0.0', image: '2.0.0', volumes: '2.0.0', drain_timeout: '2.0.0',
  servers: '2.0.0', 'servers.*': '2.0.0', 'servers.*.hosts': '2.0.0', 'servers.*.options': '2.0.0', 'servers.*.labels': '2.0.0',
  // stop_timeout: basecamp/kamal#1813.
  stop_timeout: '2.12.0', 'servers.*.stop_timeout': '2.12.0',
  env: '2.0.0', 'env.clear': '2.0.0', 'env.secret': '2.0.0',
  proxy: '2.0.0', 'proxy.host': '2.0.0', 'proxy.hosts': '2.1.0', 'proxy.app_port': '2.0.0', 'proxy.ssl': '2.0.0', 'proxy.response_timeout': '2.0.0',
  'proxy.healthcheck': '2.0.0', 'proxy.healthcheck.path': '2.0.0', 'proxy.healthcheck.interval': '2.0.0', 'proxy.healthcheck.timeout': '2.0.0',
  'proxy.forward_headers': '2.0.0', 'proxy.buffering': '2.0.0', 'proxy.buffering.requests': '2.0.0', 'proxy.buffering.responses': '2.0.0',
  'proxy.buffering.memory': '2.0.0', 'proxy.buffering.max_request_body': '2.0.0', 'proxy.buffering.max_response_body': '2.0.0',
  accessories: '2.0.0', 'accessories.*': '2.0.0', 'accessories.*.image': '2.0.0', 'accessories.*.host': '2.0.0', 'accessories.*.hosts': '2.0.0',
  'accessories.*.cmd': '2.0.0', 'accessories.*.port': '2.0.0', 'accessories.*.options': '2.0.0', 'accessories.*.labels': '2.0.0',
  'accessories.*.env': '2.0.0', 'accessories.*.env.clear': '2.0.0', 'accessories.*.env.secret': '2.0.0',
  'accessories.*.volumes': '2.0.0', 'accessories.*.directories': '2.0.0', 'accessories.*.files': '2.0.0',
  // files: as { local, remote, mode, owner }: basecamp/kamal#1724.
  'accessories.*.files[].local': '2.10.0', 'accessories.*.files[].remote': '2.10.0', 'accessories.*.files[].mode': '2.10.0', 'accessories.*.files[].owner': '2.10.0',
  // proxy: on an accessory: basecamp/kamal#981. Its keys are those of the root proxy.
  'accessories.*.proxy': '2.4.0'
}
/** Keys below which any name may appear (variable names, docker options, labels). */
const KAMAL_FREE = new Set(['env.clear', 'accessories.*.env.clear', 'servers.*.options', 'accessories.*.options', 'servers.*.labels', 'accessories.*.labels'])
/**
 * Kamal 2.0 passed proxy options to kamal-proxy as `--name value`, which kamal-proxy's boolean
 * flags cannot take: any proxy option set to false needs 2.1.0 (`--name=false`; basecamp/kamal#1017,
 * fixed by #1018).
 */
const FALSE_PROXY_OPTION = '2.1.0'

function newer (a: string, b: string): string {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) > (pb[i] ?? 0) ? a : b
  return a
}

/** The oldest Kamal 2 that accepts `doc`, and the keys no Kamal release knows (with why each version is needed). */
function kamalRequirement (doc: Yaml): { version: string, unknown: string[], because: string[] } {
  let version = '2.0.0'
  const unknown: string[] = []
  const because: string[] = []
  const need = (v: string, why: string): void => {
    if (v !== '2.0.0') because.push(`${why} (${v})`)
    version = newer(version, v)
  }
  const walk = (node: unknown, key: string, inProxy: boolean): void => {
    // An accessory's proxy takes the root proxy's keys.
    const known = KAMAL_KEYS[key] ?? KAMAL_KEYS[key.replace(/^accessories\.\*\.proxy/, 'proxy')]
    if (known === undefined) { unknown.push(key); return }
    need(known, key)
    if (inProxy && node === false) need(FALSE_PROXY_OPTION, `${key}: false`)
    if (KAMAL_FREE.has(key)) return
    if (Array.isArray(node)) {
      for (const entry of node as unknown[]) if (typeof entry === 'object' && entry !== null) for (const [k, v] of Object.entries(entry)) walk(v, `${key}[].${k}`, inProxy)
    } else if (typeof node === 'object' && node !== null) {
      for (const [k, v] of Object.entries(node)) {
        const named = (key === 'servers' || key === 'accessories') ? '*' : k
        walk(v, key === '' ? named : `${key}.${named}`, inProxy || k === 'proxy')
      }
    }
  }
  for (const [k, v] of Object.entries(doc)) walk(v, k, k === 'proxy')
  return { version, unknown, because }
}

t.test('kamalRequirement: finds the Kamal release a configuration needs, and keys Kamal refuses', async (t) => {
  t.same(kamalRequirement({ service: 's', proxy: { app_port: 80 } }), { version: '2.0.0', unknown: [], because: [] })
  t.equal(kamalRequirement({ proxy: { forward_headers: false } }).version, '2.1.0', 'a false proxy option')
  t.equal(kamalRequirement({ proxy: { buffering: { responses: false } } }).version, '2.1.0')
  t.equal(kamalRequirement({ proxy: { forward_headers: true } }).version, '2.0.0')
  t.equal(kamalRequirement({ stop_timeout: 30 }).version, '2.12.0')
  t.equal(kamalRequirement({ servers: { web: { hosts: [], stop_timeout: 30 } } }).version, '2.12.0', 'per role')
  t.equal(kamalRequirement({ accessories: { a: { proxy: { app_port: 80 } } } }).version, '2.4.0')
  t.equal(kamalRequirement({ accessories: { a: { files: ['a:/b'] } } }).version, '2.0.0', 'files as strings')
  t.equal(kamalRequirement({ accessories: { a: { files: [{ local: 'a', remote: '/b', mode: '0400' }] } } }).version, '2.10.0', 'files with mode')
  t.same(kamalRequirement({ proxy: { drain_timeout: 30 }, accessories: { a: { stop_timeout: 3 } } }).unknown, ['proxy.drain_timeout', 'accessories.*.stop_timeout'])
  t.same(kamalRequirement({ env: { clear: { ANYTHING: 1 } }, servers: { web: { options: { 'stop-timeout': 30 } } } }).unknown, [], 'free-form sections')
})

/** The `Requirements: Kamal X or later` line of a fragment's header, and its minimum_version. */
async function checkRequirements (t: Test, file: string, deploy: Yaml): Promise<string> {
  const { version, unknown, because } = kamalRequirement(deploy)
  t.same(unknown, [], `${path.relative(ROOT, file)}: every key is one Kamal knows`)
  t.equal(deploy.minimum_version, version, `minimum_version is the oldest Kamal that accepts the fragment: ${because.join(', ')}`)
  t.match(await readFile(file, 'utf8'), new RegExp(`^# Requirements: Kamal ${version.replaceAll('.', '\\.')} or later`, 'm'), 'and the header says so')
  return version
}

t.test('Kamal, in-image topology', async (t) => {
  const dir = path.join(KAMAL, 'in-image')
  const file = path.join(dir, 'deploy.yml')
  const deploy = await yamlFile(file)
  const env = kamalEnv(deploy.env)
  const keyFile = env.TENANT_PROXY_DESCRIPTOR_KEYS_FILE ?? ''
  const config = configFrom(env, [keyFile])
  await checkRequirements(t, file, deploy)

  t.equal(at(deploy, 'proxy.app_port'), config.traffic.port, 'kamal-proxy sends traffic to tenant-proxy\'s traffic port')
  t.equal(at(deploy, 'proxy.healthcheck.path'), config.traffic.healthPath, 'kamal-proxy health-checks tenant-proxy\'s /up')
  t.equal(at(deploy, 'proxy.host'), undefined, 'no host: every tenant domain reaches the service')
  t.ok(strings(deploy.volumes).some((v) => v.split(':')[1] === keyFile), 'the key file is mounted where TENANT_PROXY_DESCRIPTOR_KEYS_FILE points')
  t.equal(config.upstream.urls[0], 'http://127.0.0.1:3000', 'the default upstream is the app on loopback')
  t.equal(env.APP_PORT, '3000', 'the entry script\'s APP_PORT matches')
  t.ok(config.traffic.trustedProxies.length > 0, 'kamal-proxy\'s forwarded headers are believed ...')
  t.equal(at(deploy, 'proxy.forward_headers'), false, '... which is right only when kamal-proxy sets them itself instead of passing the client\'s through')

  // Kamal stops the old container with `docker stop` and no -t (10 s) unless stop_timeout is set;
  // kamal-proxy has drained it before that (drain_timeout), so the budget is for the proxy's own
  // drain delay and grace plus the app's stop. The entry script test runs it for real.
  const stopBudgetMs = Number(deploy.stop_timeout ?? 10) * 1000
  const proxyStopMs = config.shutdown.drainDelayMs + config.shutdown.graceMs
  t.equal(config.shutdown.drainDelayMs, 0, 'no drain delay: kamal-proxy sends the old container nothing once Kamal stops it')
  t.ok(proxyStopMs + 3000 <= stopBudgetMs, `drain delay + grace (${proxyStopMs} ms) leave the app at least 3 s of the ${stopBudgetMs} ms stop timeout`)
  for (const role of Object.values((deploy.servers ?? {}) as Record<string, unknown>)) {
    t.notMatch(JSON.stringify(at(role, 'options') ?? {}), /publish|"p"/, 'no port published on the app containers: the next deploy would find it allocated')
  }

  const secrets = await secretsFile(t, path.join(dir, '.kamal/secrets'))
  for (const name of strings(at(deploy, 'env.secret'))) t.ok(secrets.has(name), `.kamal/secrets defines ${name}`)

  const fragment = await readFile(path.join(dir, 'Dockerfile.fragment'), 'utf8')
  const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(fragment)?.[1] ?? '[]') as string[]
  const entrypointCopy = /^COPY (?:--chmod=0755 )?bin\/tenant-proxy-entrypoint (\S+)$/m.exec(fragment)?.[1]
  t.equal(cmd[0], entrypointCopy, 'CMD runs the entry script where the fragment copies it')
  t.same(cmd.slice(-2), ['./bin/rails', 'server'], 'CMD ends in ./bin/rails server, so Rails\' docker-entrypoint still runs db:prepare')
  t.match(fragment, /^ENTRYPOINT \["\/usr\/bin\/tini", "--", /m, 'tini is PID 1')
  t.same(/^EXPOSE (.*)$/m.exec(fragment)?.[1]?.split(/\s+/), [String(config.traffic.port), String(config.ops.port)], 'the image exposes the traffic port and the ops port (for Docker service discovery; never published)')
  t.match(fragment, /^COPY --from=tenant-proxy \/app \/opt\/tenant-proxy$/m, 'tenant-proxy lands where the entry script looks (PROXY_MAIN default)')
  const script = await readFile(path.join(dir, 'bin/tenant-proxy-entrypoint'), 'utf8')
  t.match(script, /PROXY_MAIN:=\/opt\/tenant-proxy\/dist\/src\/main\.js/)
  t.ok(existsSync(path.join(ROOT, 'dist/src/main.js')), 'dist/src/main.js is what the image ships')

  const prometheus = at(deploy, 'accessories.prometheus')
  t.ok(prometheus, 'a Prometheus accessory next to the app ...')
  t.ok(strings(at(prometheus, 'volumes')).some((v) => v.startsWith('/var/run/docker.sock:')), '... with the Docker socket, for service discovery')
  t.same(strings(at(prometheus, 'files')).map((f) => path.basename(f.split(':')[0] ?? '')).sort(), ['alerts.yml', 'prometheus.yml'], '... and the files of deploy/prometheus')
})

t.test('Kamal, accessory topology', async (t) => {
  const dir = path.join(KAMAL, 'accessory')
  const file = path.join(dir, 'deploy.yml')
  const deploy = await yamlFile(file)
  const accessory = at(deploy, 'accessories.tenant-proxy')
  t.ok(accessory, 'a tenant-proxy accessory')
  const env = kamalEnv(at(accessory, 'env'))
  const keyFile = env.TENANT_PROXY_DESCRIPTOR_KEYS_FILE ?? ''
  const config = configFrom(env, [keyFile])
  await checkRequirements(t, file, deploy)

  t.equal(env.TENANT_PROXY_UPSTREAM_URLS, 'http://kamal-proxy:80')
  t.same(config.upstream.urls.map((u) => new URL(u).origin), [new URL('http://kamal-proxy:80').origin], 'forwards back through kamal-proxy on port 80')
  const appHost = at(deploy, 'proxy.host')
  t.type(appHost, 'string', 'the app has an internal route')
  t.equal(config.upstream.hostHeader, appHost, 'with Host rewritten to the app\'s route (no loop through the catch-all)')
  t.equal(at(accessory, 'proxy.host'), undefined, 'the accessory\'s route has no host: the catch-all')
  t.equal(at(accessory, 'proxy.hosts'), undefined)
  t.equal(at(accessory, 'proxy.app_port'), config.traffic.port, 'kamal-proxy reaches the accessory on its traffic port')
  t.equal(at(accessory, 'proxy.healthcheck.path'), config.traffic.healthPath)
  t.match(String(at(accessory, 'port')), new RegExp(`^\\d+\\.\\d+\\.\\d+\\.\\d+:${config.ops.port}:${config.ops.port}$`), 'the ops port is published on one (private) address only')
  const files = (at(accessory, 'files') ?? []) as Array<Record<string, unknown>>
  t.ok(files.some((f) => f.remote === keyFile && f.mode === '0400' && f.owner === '1000:1000'), 'the key file is uploaded where TENANT_PROXY_DESCRIPTOR_KEYS_FILE points, readable by the image user only')
  t.ok(config.traffic.trustedProxies.length > 0, 'kamal-proxy\'s forwarded headers are believed ...')
  t.equal(at(accessory, 'proxy.forward_headers'), false, '... on the catch-all route, where kamal-proxy sets them itself')
  t.equal(at(deploy, 'proxy.forward_headers'), true, 'the app\'s route keeps what tenant-proxy set')
  t.ok(config.shutdown.drainDelayMs + config.shutdown.graceMs + 1000 <= 10_000, '`kamal accessory stop` gives the accessory Docker\'s 10 s: drain delay + grace fit with a second to spare')

  const secrets = await secretsFile(t, path.join(dir, '.kamal/secrets'))
  for (const name of [...strings(at(accessory, 'env.secret')), ...strings(at(deploy, 'env.secret'))]) t.ok(secrets.has(name), `.kamal/secrets defines ${name}`)
})

/**
 * A stand-in for kamal-proxy's forwarding of one request, following its source: Go's
 * httputil.ReverseProxy (Rewrite mode) deletes the client's Forwarded, X-Forwarded-For,
 * X-Forwarded-Host and X-Forwarded-Proto and the hop-by-hop headers, then kamal-proxy's
 * Target.forwardHeaders (basecamp/kamal-proxy internal/server/target.go) either sets its own
 * (SetXForwarded: the peer's address, the request's Host, http or https by its TLS) or, with
 * forward_headers on, puts the client's back (its X-Forwarded-For with the peer appended, its
 * X-Forwarded-Proto and X-Forwarded-Host when present). Every other header passes unchanged.
 * Plain HTTP, as on the fragments' routes (no host, so no TLS).
 */
async function standInKamalProxy (t: Test, target: string, forwardHeaders: boolean): Promise<number> {
  const hopByHop = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'])
  const stripped = new Set(['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto'])
  const server = createServer((req, res) => {
    const headers: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined && !hopByHop.has(name) && !stripped.has(name)) headers[name] = value
    }
    const peer = req.socket.remoteAddress ?? ''
    const clientXff = req.headers['x-forwarded-for'] === undefined ? undefined : String(req.headers['x-forwarded-for'])
    headers['x-forwarded-for'] = forwardHeaders && clientXff !== undefined ? `${clientXff}, ${peer}` : peer
    headers['x-forwarded-host'] = forwardHeaders && req.headers['x-forwarded-host'] !== undefined ? req.headers['x-forwarded-host'] : req.headers.host ?? ''
    headers['x-forwarded-proto'] = forwardHeaders && req.headers['x-forwarded-proto'] !== undefined ? req.headers['x-forwarded-proto'] : 'http'
    const out = httpRequest(`${target}${req.url ?? '/'}`, { method: req.method, headers }, (upstream) => {
      res.writeHead(upstream.statusCode ?? 502, upstream.headers)
      upstream.pipe(res)
    })
    out.once('error', () => { res.writeHead(502); res.end() })
    req.pipe(out)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return (server.address() as AddressInfo).port
}

/** What the app saw of a client's forged request sent through kamal-proxy (stand-in) and tenant-proxy. */
async function forgedThroughKamalProxy (t: Test, forwardHeaders: boolean): Promise<{ tenant: string, xff: string, proto: string, host: string }> {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'victim', domains: ['victim.example.com'] }])
  const app = await startUpstream(t)
  // 127.0.0.1 stands for the kamal network: kamal-proxy is the one trusted peer.
  const proxy = await startTestProxy(t, testConfig(registry.url, app.origin, { TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.1/32' }))
  const kamalProxy = await standInKamalProxy(t, proxy.url, forwardHeaders)
  const res = await request(`http://127.0.0.1:${kamalProxy}/`, {
    headers: { host: 'acme.example.com', 'x-forwarded-host': 'victim.example.com', 'x-forwarded-for': '203.0.113.66', 'x-forwarded-proto': 'https' }
  })
  t.equal(res.statusCode, 200)
  const seen = await res.body.json() as { headers: Record<string, string> }
  const descriptor = seen.headers['x-tenant-descriptor'] ?? ''
  const claims = JSON.parse(Buffer.from(descriptor.split('.')[1] ?? '', 'base64url').toString()) as { sub: string }
  return { tenant: claims.sub, xff: seen.headers['x-forwarded-for'] ?? '', proto: seen.headers['x-forwarded-proto'] ?? '', host: seen.headers['x-forwarded-host'] ?? '' }
}

t.test('Kamal fragments: a client\'s forged X-Forwarded-* through kamal-proxy (stand-in) and tenant-proxy, with the fragments\' forward_headers', async (t) => {
  const inImage = await yamlFile(path.join(KAMAL, 'in-image/deploy.yml'))
  const accessory = await yamlFile(path.join(KAMAL, 'accessory/deploy.yml'))
  const routes: Array<[string, unknown]> = [['in-image proxy', at(inImage, 'proxy.forward_headers')], ['accessory catch-all proxy', at(accessory, 'accessories.tenant-proxy.proxy.forward_headers')]]
  for (const [route, forwardHeaders] of routes) {
    t.type(forwardHeaders, 'boolean', `${route}: forward_headers is set, not left to kamal-proxy's TLS-dependent default`)
    const seen = await forgedThroughKamalProxy(t, forwardHeaders === true)
    t.same(seen, { tenant: 'acme', xff: '127.0.0.1, 127.0.0.1', proto: 'http', host: 'acme.example.com' },
      `${route}: the app gets the Host's tenant, the client's real address (then kamal-proxy's), the real scheme and host; none of the forged values`)
  }
  // Why: with forward_headers on (kamal-proxy's default without TLS), the same request gets the
  // client's values past kamal-proxy, and a trusted kamal-proxy makes tenant-proxy keep them.
  const open = await forgedThroughKamalProxy(t, true)
  t.ok(open.xff.includes('203.0.113.66') && open.proto === 'https', 'with forward_headers on, the forged address and scheme reach the app')
})

const compose = await yamlFile(path.join(ROOT, 'deploy/docker-compose.yml'))
const services = (compose.services ?? {}) as Record<string, Yaml>

/** A Compose service's environment as a map (mapping or KEY=VALUE list form). */
function composeEnv (service: Yaml | undefined): Record<string, string> {
  const env = service?.environment
  if (Array.isArray(env)) return Object.fromEntries(env.map((e) => String(e).split(/=(.*)/s).slice(0, 2) as [string, string]))
  return Object.fromEntries(Object.entries((env ?? {}) as Record<string, unknown>).map(([k, v]) => [k, String(v)]))
}

t.test('docker-compose.yml', async (t) => {
  t.same(Object.keys(services).sort(), ['app', 'keys', 'registry', 'seed', 'tenant-proxy'])
  const proxy = services['tenant-proxy']
  const app = services.app
  const registry = services.registry

  const built = Object.entries(services).filter(([, s]) => s.build !== undefined)
  t.ok(built.length > 0)
  for (const [name, s] of built) {
    t.ok(existsSync(path.join(ROOT, 'deploy', String(at(s, 'build.context')), String(at(s, 'build.dockerfile')))), `${name} is built from the repository's Dockerfile`)
    t.equal(s.image, 'tenant-proxy:local', `${name} runs the tenant-proxy image`)
  }
  t.ok(proxy?.build, 'tenant-proxy is built from the Dockerfile')

  const proxyEnv = composeEnv(proxy)
  const keyFile = proxyEnv.TENANT_PROXY_DESCRIPTOR_KEYS_FILE ?? ''
  const config = configFrom(proxyEnv, [keyFile])
  const url = new URL(config.registry.databaseUrl ?? '')
  const pgEnv = composeEnv(registry)
  t.equal(url.hostname, 'registry', 'the registry URL names the registry service')
  t.same([url.username, url.password, url.pathname.slice(1)], [pgEnv.POSTGRES_USER, pgEnv.POSTGRES_PASSWORD, pgEnv.POSTGRES_DB], 'with its user, password and database')
  t.same(composeEnv(services.seed).REGISTRY_DATABASE_URL, proxyEnv.REGISTRY_DATABASE_URL, 'seed writes the registry the proxy reads')
  configFrom(composeEnv(services.seed), [])

  const ports = strings(proxy?.ports)
  t.ok(ports.includes(`${config.traffic.port}:${config.traffic.port}`), 'traffic port published')
  t.ok(ports.includes(`127.0.0.1:${config.ops.port}:${config.ops.port}`), 'ops port published on loopback only')

  t.equal(app?.network_mode, 'service:tenant-proxy', 'the app shares the proxy\'s network namespace')
  const appEnv = composeEnv(app)
  const appConfig = configFrom(appEnv, [appEnv.TENANT_PROXY_DESCRIPTOR_KEYS_FILE ?? ''])
  t.equal(config.upstream.urls[0], `http://127.0.0.1:${appEnv.PORT ?? ''}`, 'the proxy forwards to the app\'s port')
  t.equal(appConfig.deploymentId, config.deploymentId, 'the app pins the proxy\'s issuer')
  t.equal(appConfig.descriptor.audience, config.descriptor.audience, 'and its audience')
  t.equal(appEnv.TENANT_PROXY_DESCRIPTOR_KEYS_FILE, keyFile, 'and reads the same key')

  const volumes = Object.keys(compose.volumes ?? {})
  for (const [name, s] of Object.entries(services)) {
    for (const v of strings(s.volumes)) {
      const source = v.split(':')[0] ?? ''
      if (source.startsWith('.')) t.ok(existsSync(path.join(ROOT, 'deploy', source)), `${name}: ${source} exists`)
      else t.ok(volumes.includes(source), `${name}: volume ${source} is declared`)
    }
  }
})

t.test('the Compose sample app verifies what the proxy signs (run without Docker)', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-compose-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'descriptor.pem')
  // What the keys service writes: `keys generate --out` (a PEM file, mode 0600).
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'keys', 'generate', '--out', keyFile, '--force'], { stdio: ['ignore', 'ignore', 'inherit'] })
    child.once('exit', (code) => { if (code === 0) resolve(); else reject(new Error(`keys generate exited ${String(code)}`)) })
  })
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.localhost'], databaseName: 'acme_production' }])
  const appPort = await freePort()
  const trafficPort = await freePort()
  // The Compose environments, with host paths and free ports in place of the container ones.
  const local = { TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile }
  const appEnv = { ...composeEnv(services.app), ...local, PORT: String(appPort), APP_DIST: path.join(ROOT, 'dist') }
  const proxyEnv = {
    ...composeEnv(services['tenant-proxy']),
    ...local,
    REGISTRY_DATABASE_URL: registry.url,
    TENANT_PROXY_UPSTREAM_URLS: `http://127.0.0.1:${appPort}`,
    TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
    TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
    TENANT_PROXY_OPS_HOST: '127.0.0.1',
    TENANT_PROXY_OPS_PORT: String(await freePort()),
    TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0'
  }
  const start = async (args: string[], env: Record<string, string>, ready: string): Promise<() => Promise<number | null>> => {
    const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    t.teardown(async () => { if (child.exitCode === null) child.kill('SIGKILL'); await exited })
    let out = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "${ready}" within 30 s: ${out}`)), 30_000)
      const onData = (c: Buffer): void => { out += c.toString(); if (out.includes(ready)) { clearTimeout(timer); resolve() } }
      child.stdout.on('data', onData)
      child.stderr.on('data', onData)
      void exited.then((code) => { clearTimeout(timer); reject(new Error(`exited with ${String(code)}: ${out}`)) })
    })
    return async () => { child.kill('SIGTERM'); return await exited }
  }
  const stopApp = await start([path.join(ROOT, 'deploy/compose/echo-app.mjs')], appEnv, 'echo app listening')
  const stopProxy = await start([CLI, 'serve'], proxyEnv, 'tenant-proxy listening')

  const res = await request(`http://127.0.0.1:${trafficPort}/`, { headers: { host: 'acme.localhost' } })
  const body = await res.body.json() as Record<string, unknown>
  t.equal(res.statusCode, 200)
  t.match(body, { verified: true, tenant: 'acme', database: { name: 'acme_production' } }, 'the sample app verified the descriptor')
  t.equal(await stopProxy(), 0)
  t.equal(await stopApp(), 0, 'the sample app stops cleanly on SIGTERM')
})
