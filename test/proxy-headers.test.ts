import t from 'tap'
import { isDescriptorHeaderName, scrubInbound, scrubOutbound, setForwardingHeaders, type HeaderMap } from '../src/proxy/headers.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { rawRequest } from './helpers/raw-http.js'
import { startUpstream, type SeenRequest } from './helpers/upstream.js'

const NAME = 'x-tenant-descriptor'

t.test('isDescriptorHeaderName: every spelling a framework could read as the header', async (t) => {
  for (const name of ['x-tenant-descriptor', 'X-Tenant-Descriptor', 'X_TENANT_DESCRIPTOR', 'x_tenant-descriptor', 'X-TENANT_DESCRIPTOR']) t.ok(isDescriptorHeaderName(name, NAME), name)
  for (const name of ['x-tenant-descriptors', 'x-tenant', 'tenant-descriptor', 'x-tenant descriptor', 'x.tenant.descriptor']) t.notOk(isDescriptorHeaderName(name, NAME), name)
})

t.test('scrubInbound: Connection-nominated first, hop-by-hop, every descriptor spelling', async (t) => {
  const headers: HeaderMap = {
    connection: 'keep-alive, X-Forwarded-For, x-secret-thing',
    'keep-alive': 'timeout=5',
    'x-forwarded-for': '1.2.3.4',
    'x-secret-thing': 'drop me',
    'x-tenant-descriptor': 'a, b',
    x_tenant_descriptor: 'c',
    'X_Tenant-Descriptor': 'd',
    'proxy-connection': 'keep-alive',
    upgrade: 'h2c',
    te: 'trailers',
    accept: 'text/html',
    cookie: 'kept=1'
  }
  const scrubbed = scrubInbound(headers, NAME)
  t.same(scrubbed, { accept: 'text/html', cookie: 'kept=1' })
  // Forwarding headers added after the scrub survive whatever Connection said.
  setForwardingHeaders(scrubbed, { peer: '10.1.1.1', trusted: false, host: 'acme.example.com', requestId: 'r1' })
  t.equal(scrubbed['x-forwarded-for'], '10.1.1.1')
})

t.test('scrub returns the same object when nothing has to go, a copy otherwise', async (t) => {
  const clean: HeaderMap = { host: 'a.example', accept: '*/*', 'content-length': '3' }
  t.equal(scrubInbound(clean, NAME), clean)
  t.equal(scrubOutbound(clean, NAME), clean)
  const dirty: HeaderMap = { 'content-type': 'text/plain', connection: 'keep-alive', 'keep-alive': 'timeout=5' }
  const out = scrubOutbound(dirty, NAME)
  t.not(out, dirty)
  t.same(out, { 'content-type': 'text/plain' })
  // A nominated name goes whatever case the Connection value spells it in.
  t.same(scrubInbound({ connection: 'X-Private', 'x-private': '1', te: 'trailers', accept: 'a' }, NAME), { accept: 'a' })
})

t.test('scrubOutbound removes hop-by-hop headers and descriptor spellings from responses', async (t) => {
  t.same(scrubOutbound({
    'x-tenant-descriptor': 'x',
    x_tenant_descriptor: 'y',
    'content-type': 'text/plain',
    connection: 'keep-alive, x-upstream-private',
    'keep-alive': 'timeout=5',
    'x-upstream-private': '1',
    'transfer-encoding': 'chunked',
    'set-cookie': ['a=1', 'b=2']
  }, NAME), { 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] })
})

t.test('setForwardingHeaders: append for trusted hops, replace for clients', async (t) => {
  const trusted: HeaderMap = { 'x-forwarded-for': '203.0.113.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example' }
  setForwardingHeaders(trusted, { peer: '10.0.0.2', trusted: true, host: 'internal', requestId: 'r' })
  t.same(trusted, { 'x-forwarded-for': '203.0.113.1, 10.0.0.2', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example', 'x-request-id': 'r' })
  const client: HeaderMap = { 'x-forwarded-for': '203.0.113.1', 'x-forwarded-proto': 'gopher', 'x-forwarded-host': 'evil.example' }
  setForwardingHeaders(client, { peer: '198.51.100.7', trusted: false, host: 'acme.example', requestId: 'r' })
  t.same(client, { 'x-forwarded-for': '198.51.100.7', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'acme.example', 'x-request-id': 'r' })
})

t.test('spoofed descriptors never reach the upstream (real sockets)', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const base = 'GET /spoof HTTP/1.1\r\nHost: acme.example.com\r\n'
  const variants: Record<string, string> = {
    'exact name': 'X-Tenant-Descriptor: forged\r\n',
    'lower case': 'x-tenant-descriptor: forged\r\n',
    'upper case': 'X-TENANT-DESCRIPTOR: forged\r\n',
    underscores: 'X_Tenant_Descriptor: forged\r\n',
    'mixed underscore': 'x-tenant_descriptor: forged\r\n',
    duplicates: 'X-Tenant-Descriptor: forged1\r\nX-Tenant-Descriptor: forged2\r\nx_tenant_descriptor: forged3\r\n',
    'Connection-nominated': 'Connection: X-Tenant-Descriptor, X-Forwarded-For, X-Request-Id\r\nX-Tenant-Descriptor: forged\r\n',
    'on a pass-through-looking path': 'X-Tenant-Descriptor: forged\r\nX-Forwarded-Host: other.example\r\n'
  }
  for (const [label, extra] of Object.entries(variants)) {
    const r = await rawRequest(proxy.traffic.port, `${base}${extra}Connection: close\r\n\r\n`)
    t.equal(r.status, 200, label)
    const s = JSON.parse(r.body) as SeenRequest
    const descriptorLines: string[] = []
    for (let i = 0; i < s.rawHeaders.length; i += 2) {
      if (isDescriptorHeaderName(s.rawHeaders[i] ?? '', NAME)) descriptorLines.push(s.rawHeaders[i + 1] ?? '')
    }
    t.equal(descriptorLines.length, 1, `${label}: exactly one descriptor header upstream`)
    t.notMatch(descriptorLines[0] ?? '', /forged/, `${label}: it is the proxy's`)
    t.equal(descriptorLines[0]?.split('.').length, 3, `${label}: a compact JWS`)
    t.equal(s.headers['x-forwarded-for'], '127.0.0.1', `${label}: the proxy's X-Forwarded-For survives`)
    t.ok(typeof s.headers['x-request-id'] === 'string' && s.headers['x-request-id'] !== '', `${label}: request id set`)
    t.notOk('x-tenant-descriptor' in r.headers, `${label}: not echoed to the client`)
  }
})
