/**
 * Forwarding headers as the app's framework reads them. A client (or a trusted hop passing a
 * client's headers through) sends every forwarding header of src/proxy/forwarding-headers.ts,
 * forged, in '-' and '_' spellings; what reaches the app is then read by real Rack (Ruby, Debian's
 * ruby-rack), real Django (Debian's python3-django) and a real Express app: each must see the
 * scheme, host, port and client address of the actual connection, never the forged ones.
 *
 * Guards: src/proxy/headers.ts upstreamRequestHeaders (the forwarding family dropped from
 * untrusted peers and from trusted ones beyond traffic.trustedForwardedHeaders; '_' names
 * dropped; X-Forwarded-Port consistent with the scheme) and src/proxy/app.ts route() (the tenant
 * from Host only). Before the fix, `X-Forwarded-Ssl: on` from a plain-http client made Rack
 * report https, ssl? true and port 443.
 */
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import express from 'express'
import t, { type Test } from 'tap'
import { FORWARDING_HEADERS } from '../../src/proxy/forwarding-headers.js'
import { startTestProxy, testConfig, testRegistry } from '../helpers/proxy.js'
import { rawRequest } from '../helpers/raw-http.js'
import { startUpstream, type SeenRequest } from '../helpers/upstream.js'

const FIXTURES = fileURLToPath(new URL('../fixtures/frameworks/', import.meta.url))
const EVIL_IP = '203.0.113.66'

/** A forged value per forwarding header, each chosen to flip what a framework believes. */
const FORGED: Record<string, string> = {
  forwarded: `for=${EVIL_IP};proto=https;host=globex.example.com`,
  'x-forwarded-host': 'globex.example.com',
  'x-forwarded-proto': 'https',
  'x-forwarded-port': '8443',
  'x-forwarded-ssl': 'on',
  'x-forwarded-scheme': 'https',
  'x-forwarded-protocol': 'https',
  'x-forwarded-prefix': '/evil',
  'x-forwarded-uri': '/evil',
  'front-end-https': 'on',
  'x-arr-ssl': 'on',
  'x-url-scheme': 'https',
  'x-original-host': 'globex.example.com',
  'x-original-url': '/evil',
  'x-rewrite-url': '/evil',
  'x-forwarded-client-cert': 'forged-cert',
  'x-client-cert': 'forged-cert',
  'x-ssl-client-cert': 'forged-cert',
  'x-arr-clientcert': 'forged-cert',
  'x-forwarded-by': EVIL_IP,
  'x-forwarded-server': 'globex.example.com'
}
const forged = (name: string): string => FORGED[name] ?? EVIL_IP
const MARKERS = [EVIL_IP, 'globex', '8443', '/evil', 'forged-cert']

/** Every forwarding header, forged, once as written and once in its '_' spelling. */
function forgedHeaderLines (): string {
  let lines = ''
  for (const name of FORWARDING_HEADERS) {
    lines += `${name}: ${forged(name)}\r\n`
    lines += `${name.replaceAll('-', '_').toUpperCase()}: ${forged(name)}\r\n`
  }
  return lines
}

interface Run { code: number, stdout: string, stderr: string }

async function run (file: string, args: string[], input: string): Promise<Run> {
  return await new Promise((resolve) => {
    const child = execFile(file, args, { timeout: 60_000, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr })
    })
    child.stdin?.end(input)
  })
}

/** Runs a framework view script on the raw headers the app received; null (with a skip) when the framework is missing. */
async function view (t: Test, framework: 'rack' | 'django', rawHeaders: string[]): Promise<Record<string, unknown> | null> {
  const [bin, script, install] = framework === 'rack'
    ? ['ruby', 'rack_view.rb', 'apt-get install ruby ruby-rack']
    : ['/usr/bin/python3', 'django_view.py', 'apt-get install python3-django']
  const r = await run(bin, [`${FIXTURES}${script}`], JSON.stringify(rawHeaders))
  if (r.code !== 0) {
    t.pass(`${framework}'s view`, { skip: `${framework} is not available (${install}): ${r.stderr.split('\n').filter((l) => l !== '').pop() ?? r.code}` })
    return null
  }
  return JSON.parse(r.stdout) as Record<string, unknown>
}

/** A real Express app reporting what it believes (trust proxy: loopback, i.e. the tenant-proxy in front). */
async function startExpress (t: Test): Promise<{ origin: string }> {
  const app = express()
  app.set('trust proxy', 'loopback')
  app.use((req, res) => {
    res.json({ protocol: req.protocol, secure: req.secure, hostname: req.hostname, ip: req.ip, ips: req.ips })
  })
  const server = app.listen(0, '127.0.0.1')
  await new Promise<void>((resolve) => server.once('listening', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
}

const TENANTS = [{ slug: 'acme', domains: ['acme.example.com'] }, { slug: 'globex', domains: ['globex.example.com'] }]
const request = (): string => `GET / HTTP/1.1\r\nHost: acme.example.com\r\n${forgedHeaderLines()}Connection: close\r\n\r\n`

t.test('an untrusted client: every framework sees the real connection (plain http, acme, port 80, the client address)', async (t) => {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const res = await rawRequest(proxy.traffic.port, request(), { from: '127.0.0.5' })
  t.equal(res.status, 200)
  const seen = upstream.seen[0] as SeenRequest
  const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())
  t.same(names.filter((n) => n.includes('_')), [], 'no header name with an underscore reaches the app')
  t.same(names.filter((n) => (FORWARDING_HEADERS as readonly string[]).includes(n)).sort(), ['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-proto'], 'only the proxy\'s own forwarding headers')
  for (const marker of MARKERS) t.notMatch(JSON.stringify(seen.rawHeaders), marker, `nothing forged (${marker}) reaches the app`)
  t.match(seen.headers, { 'x-forwarded-for': '127.0.0.5', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'acme.example.com', 'x-forwarded-port': '80' })

  const rack = await view(t, 'rack', seen.rawHeaders)
  if (rack !== null) t.match(rack, { scheme: 'http', ssl: false, host: 'acme.example.com', port: 80, ip: '127.0.0.5', base_url: 'http://acme.example.com' }, `Rack ${String(rack.rack)}`)
  const django = await view(t, 'django', seen.rawHeaders)
  if (django !== null) t.match(django, { secure: false, scheme: 'http', host: 'acme.example.com', port: '80', absolute: 'http://acme.example.com/' }, `Django ${String(django.django)}`)

  const app = await startExpress(t)
  const viaExpress = await startTestProxy(t, testConfig(registry.url, app.origin))
  const e = await rawRequest(viaExpress.traffic.port, request(), { from: '127.0.0.5' })
  t.equal(e.status, 200)
  t.match(JSON.parse(e.body), { protocol: 'http', secure: false, hostname: 'acme.example.com', ip: '127.0.0.5', ips: ['127.0.0.5'] }, 'Express')
})

t.test('a trusted hop (kamal-proxy with TLS) passing a client\'s headers through: its own X-Forwarded-For/-Proto count, nothing else', async (t) => {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  // kamal-proxy sets X-Forwarded-For/-Proto/-Host itself and copies every other header from the
  // client: the proxy in front of the app must not believe those.
  const hop = (lines: string): string => `GET / HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: 198.51.100.20\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: acme.example.com\r\n${lines}Connection: close\r\n\r\n`
  const passedThrough = forgedHeaderLines().split('\r\n').filter((l) => !/^x-forwarded-(for|proto|host):/i.test(l)).join('\r\n')
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.2' }))
  const res = await rawRequest(proxy.traffic.port, hop(passedThrough), { from: '127.0.0.2' })
  t.equal(res.status, 200)
  const seen = upstream.seen[0] as SeenRequest
  for (const marker of MARKERS) t.notMatch(JSON.stringify(seen.rawHeaders), marker, `nothing the client forged (${marker}) reaches the app`)
  t.match(seen.headers, { 'x-forwarded-for': '198.51.100.20, 127.0.0.2', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'acme.example.com', 'x-forwarded-port': '443' })

  const rack = await view(t, 'rack', seen.rawHeaders)
  if (rack !== null) t.match(rack, { scheme: 'https', ssl: true, host: 'acme.example.com', port: 443, ip: '198.51.100.20', base_url: 'https://acme.example.com' }, `Rack ${String(rack.rack)}`)
  const django = await view(t, 'django', seen.rawHeaders)
  if (django !== null) t.match(django, { secure: true, host: 'acme.example.com', port: '443', absolute: 'https://acme.example.com/' }, `Django ${String(django.django)}`)

  const app = await startExpress(t)
  const viaExpress = await startTestProxy(t, testConfig(registry.url, app.origin, { TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.2' }))
  const e = await rawRequest(viaExpress.traffic.port, hop(passedThrough), { from: '127.0.0.2' })
  t.match(JSON.parse(e.body), { protocol: 'https', secure: true, hostname: 'acme.example.com', ip: '198.51.100.20' }, 'Express')

  // The same request from any other address is a client's: its X-Forwarded-Proto is not believed.
  const before = upstream.seen.length
  await rawRequest(proxy.traffic.port, hop(passedThrough), { from: '127.0.0.3' })
  t.match(upstream.seen[before]?.headers, { 'x-forwarded-for': '127.0.0.3', 'x-forwarded-proto': 'http', 'x-forwarded-port': '80' }, 'not trusted from another address')
})

t.test('a trusted hop passing a client\'s X-Forwarded-Host through cannot choose the tenant', async (t) => {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '127.0.0.0/8' }))
  for (const xfh of ['globex.example.com', 'acme.example.com, globex.example.com']) {
    const before = upstream.seen.length
    const res = await rawRequest(proxy.traffic.port, `GET / HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-Host: ${xfh}\r\nConnection: close\r\n\r\n`)
    t.equal(res.status, 200)
    const seen = upstream.seen[before] as SeenRequest
    const claims = JSON.parse(Buffer.from(String(seen.headers['x-tenant-descriptor']).split('.')[1] ?? '', 'base64url').toString()) as { sub: string, host: string }
    t.match(claims, { sub: 'acme', host: 'acme.example.com' }, `X-Forwarded-Host: ${xfh} → still acme`)
    t.equal(seen.headers['x-forwarded-host'], 'acme.example.com', 'and the app is told acme\'s host')
  }
})

t.test('traffic.allowUnderscoresInHeaders keeps other names with \'_\', never a spelling of a header the proxy controls', async (t) => {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_ALLOW_UNDERSCORES_IN_HEADERS: 'true' }))
  const res = await rawRequest(proxy.traffic.port, `GET / HTTP/1.1\r\nHost: acme.example.com\r\nX_Legacy_Token: keep-me\r\n${forgedHeaderLines()}X_Tenant_Descriptor: forged-cert\r\nX_Request_Id: forged-cert\r\nTransfer_Encoding: chunked\r\nConnection: close\r\n\r\n`)
  t.equal(res.status, 200)
  const seen = upstream.seen[0] as SeenRequest
  const underscored = seen.rawHeaders.filter((n, i) => i % 2 === 0 && n.includes('_'))
  t.same(underscored, ['x_legacy_token'], 'only the app\'s own underscore header is kept')
  for (const marker of MARKERS) t.notMatch(JSON.stringify(seen.rawHeaders), marker, `nothing forged (${marker}) reaches the app`)
  const rack = await view(t, 'rack', seen.rawHeaders)
  if (rack !== null) t.match(rack, { scheme: 'http', ssl: false, host: 'acme.example.com', port: 80 }, 'Rack')
})

t.test('docs/operations.md lists exactly the forwarding headers the proxy filters', async (t) => {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8')
  const block = /<!-- forwarding-headers -->([\s\S]*?)<!-- \/forwarding-headers -->/.exec(doc)?.[1] ?? ''
  const documented = [...block.matchAll(/`([^`]+)`/g)].map((m) => (m[1] ?? '').toLowerCase())
  t.same(documented, [...FORWARDING_HEADERS], 'same names, same order')
})
