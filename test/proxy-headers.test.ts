import t from 'tap'
import { clientResponseHeaders, isDescriptorHeaderName, peerAddress, upstreamRequestHeaders, type ForwardingContext, type HeaderMap, type HeaderPolicy } from '../src/proxy/headers.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { rawRequest } from './helpers/raw-http.js'
import { startUpstream, type SeenRequest } from './helpers/upstream.js'

const NAME = 'x-tenant-descriptor'

t.test('isDescriptorHeaderName: every spelling a framework could read as the header', async (t) => {
  for (const name of ['x-tenant-descriptor', 'X-Tenant-Descriptor', 'X_TENANT_DESCRIPTOR', 'x_tenant-descriptor', 'X-TENANT_DESCRIPTOR']) t.ok(isDescriptorHeaderName(name, NAME), name)
  for (const name of ['x-tenant-descriptors', 'x-tenant', 'tenant-descriptor', 'x-tenant descriptor', 'x.tenant.descriptor']) t.notOk(isDescriptorHeaderName(name, NAME), name)
})

const POLICY: HeaderPolicy = { descriptorHeader: NAME, allowUnderscores: false, trustedForwarded: new Set(['x-forwarded-for', 'x-forwarded-proto']) }
const CLIENT: ForwardingContext = { peer: '198.51.100.7', trusted: false, host: 'acme.example', hostHeader: null, requestId: 'r' }
const HOP: ForwardingContext = { ...CLIENT, peer: '10.0.0.2', trusted: true }
/** Our own headers for an untrusted client of acme.example over plain http. */
const OURS = { host: 'acme.example', 'x-forwarded-for': '198.51.100.7', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'acme.example', 'x-forwarded-port': '80', 'x-request-id': 'r' }

t.test('upstreamRequestHeaders: Connection-nominated first, hop-by-hop, every descriptor spelling', async (t) => {
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
  const input = structuredClone(headers)
  // Forwarding headers added by the proxy survive whatever Connection said.
  t.same(upstreamRequestHeaders(headers, POLICY, CLIENT), { accept: 'text/html', cookie: 'kept=1', ...OURS })
  t.same(headers, input, 'the client\'s map is not modified')
  t.same(upstreamRequestHeaders({ connection: 'X-Private', 'x-private': '1', te: 'trailers', accept: 'a' }, POLICY, CLIENT), { accept: 'a', ...OURS },
    'a nominated name goes whatever case the Connection value spells it in')
})

// Every row: the client's headers, the peer, and what the app receives (besides the unchanged rest).
const CASES: Array<[string, HeaderMap, ForwardingContext, Record<string, string | undefined>, HeaderPolicy?]> = [
  ['untrusted: every forwarding header replaced or dropped', {
    'x-forwarded-for': '203.0.113.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', 'x-forwarded-port': '443',
    'x-forwarded-ssl': 'on', 'x-forwarded-scheme': 'https', 'x-forwarded-prefix': '/admin', forwarded: 'for=1.1.1.1;proto=https;host=evil.example',
    'front-end-https': 'on', 'x-url-scheme': 'https', 'x-real-ip': '1.1.1.1', 'client-ip': '1.1.1.1', 'true-client-ip': '1.1.1.1',
    'x-original-url': '/admin', 'x-forwarded-client-cert': 'Hash=abc', accept: '*/*'
  }, CLIENT, { ...OURS, accept: '*/*', 'x-forwarded-ssl': undefined, 'x-forwarded-scheme': undefined, 'x-forwarded-prefix': undefined, forwarded: undefined, 'front-end-https': undefined, 'x-url-scheme': undefined, 'x-real-ip': undefined, 'client-ip': undefined, 'true-client-ip': undefined, 'x-original-url': undefined, 'x-forwarded-client-cert': undefined }],
  ['trusted: X-Forwarded-For appended, X-Forwarded-Proto kept, the rest as for a client', {
    'x-forwarded-for': '203.0.113.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', 'x-forwarded-ssl': 'on', 'x-forwarded-port': '8443', forwarded: 'proto=https'
  }, HOP, { host: 'acme.example', 'x-forwarded-for': '203.0.113.1, 10.0.0.2', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'acme.example', 'x-forwarded-port': '443', 'x-forwarded-ssl': undefined, forwarded: undefined, 'x-request-id': 'r' }],
  ['trusted: only the last entry of a proto list counts', { 'x-forwarded-proto': 'http, https' }, HOP, { 'x-forwarded-proto': 'https', 'x-forwarded-port': '443' }],
  ['trusted: an unknown scheme becomes http', { 'x-forwarded-proto': 'gopher' }, HOP, { 'x-forwarded-proto': 'http', 'x-forwarded-port': '80' }],
  ['trusted, but the hop set nothing: the connection to us', {}, HOP, { 'x-forwarded-for': '10.0.0.2', 'x-forwarded-proto': 'http', 'x-forwarded-port': '80' }],
  ['trusted, empty X-Forwarded-For', { 'x-forwarded-for': ' ' }, HOP, { 'x-forwarded-for': '10.0.0.2' }],
  ['untrusted: the port comes from Host', {}, { ...CLIENT, host: 'acme.example:8080' }, { 'x-forwarded-host': 'acme.example:8080', 'x-forwarded-port': '8080' }],
  ['upstream.hostHeader: Host rewritten, the original in X-Forwarded-Host', {}, { ...CLIENT, hostHeader: 'app.internal' }, { host: 'app.internal', 'x-forwarded-host': 'acme.example' }],
  ['trusted hop for X-Forwarded-Host (hostFromForwardedHost): its last entry', { 'x-forwarded-host': 'evil.example, acme.example', 'x-forwarded-proto': 'https' },
    { ...HOP, host: 'internal' }, { host: 'internal', 'x-forwarded-host': 'acme.example', 'x-forwarded-port': '443' },
    { ...POLICY, trustedForwarded: new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']) }],
  ['trusted for X-Forwarded-Port and Forwarded', { 'x-forwarded-port': '8443', forwarded: 'for=203.0.113.1;proto=https' },
    HOP, { 'x-forwarded-port': '8443', forwarded: 'for=203.0.113.1;proto=https, for=10.0.0.2' },
    { ...POLICY, trustedForwarded: new Set(['x-forwarded-port', 'forwarded']) }],
  ['trusted Forwarded from an IPv6 hop', { forwarded: 'for=203.0.113.1' }, { ...HOP, peer: '2001:db8::2' }, { forwarded: 'for=203.0.113.1, for="[2001:db8::2]"', 'x-forwarded-for': '2001:db8::2' },
    { ...POLICY, trustedForwarded: new Set(['forwarded']) }],
  ['trusted X-Forwarded-Port that is not a port', { 'x-forwarded-port': '443x' }, HOP, { 'x-forwarded-port': '80' },
    { ...POLICY, trustedForwarded: new Set(['x-forwarded-port']) }],
  ['underscores dropped by default (CGI would read them as dashes)', { x_forwarded_host: 'evil.example', transfer_encoding: 'chunked', x_custom: '1', 'x-custom': '2' }, CLIENT,
    { x_forwarded_host: undefined, transfer_encoding: undefined, x_custom: undefined, 'x-custom': '2' }],
  ['underscores allowed: only the spellings of controlled headers go', { x_forwarded_host: 'evil.example', x_forwarded_ssl: 'on', transfer_encoding: 'chunked', x_request_id: 'mine', x_tenant_descriptor: 'forged', x_custom: '1' }, CLIENT,
    { x_forwarded_host: undefined, x_forwarded_ssl: undefined, transfer_encoding: undefined, x_request_id: undefined, x_tenant_descriptor: undefined, x_custom: '1', 'x-forwarded-host': 'acme.example' },
    { ...POLICY, allowUnderscores: true }],
  ['underscores allowed, trusted hop: still no underscore forwarding header', { x_forwarded_for: '6.6.6.6', x_forwarded_proto: 'https' }, HOP,
    { x_forwarded_for: undefined, x_forwarded_proto: undefined, 'x-forwarded-for': '10.0.0.2', 'x-forwarded-proto': 'http' },
    { ...POLICY, allowUnderscores: true }],
  ['X-Request-Id and Host from the client never pass', { 'x-request-id': 'mine', host: 'evil.example' }, CLIENT, { 'x-request-id': 'r', host: 'acme.example' }]
]

t.test('upstreamRequestHeaders: forwarding headers, trusted hops, underscores (table)', async (t) => {
  for (const [name, inbound, ctx, expect, policy] of CASES) {
    const out = upstreamRequestHeaders(inbound, policy ?? POLICY, ctx)
    for (const [header, value] of Object.entries(expect)) t.equal(out[header], value, `${name}: ${header}`)
  }
})

t.test('peerAddress unwraps IPv4-mapped IPv6 only', async (t) => {
  t.equal(peerAddress('::ffff:10.0.0.1'), '10.0.0.1')
  t.equal(peerAddress('::1'), '::1')
  t.equal(peerAddress('2001:db8::1'), '2001:db8::1')
  t.equal(peerAddress(undefined), '')
})

/** Raw response headers as undici hands them over: [name, value, …] buffers. */
const raw = (...pairs: string[]): Buffer[] => pairs.map((p) => Buffer.from(p, 'latin1'))

t.test('clientResponseHeaders: hop-by-hop, nominated and descriptor spellings removed, the request id set', async (t) => {
  t.same(clientResponseHeaders(raw(
    'X-Tenant-Descriptor', 'x',
    'x_tenant_descriptor', 'y',
    'Content-Type', 'text/plain',
    'Connection', 'keep-alive, X-Upstream-Private',
    'Keep-Alive', 'timeout=5',
    'X-Upstream-Private', '1',
    'Transfer-Encoding', 'chunked',
    'Set-Cookie', 'a=1',
    'Set-Cookie', 'b=2',
    'X-Request-Id', 'the-app-s-own'
  ), NAME, 'r1', false), ['content-type', 'text/plain', 'set-cookie', 'a=1', 'set-cookie', 'b=2', 'x-request-id', 'r1'])
  t.same(clientResponseHeaders(raw('Content-Length', '2'), NAME, 'r2', true), ['content-length', '2', 'x-request-id', 'r2', 'connection', 'close'], 'draining: Connection: close')
  t.same(clientResponseHeaders(raw('Connection', 'x-a', 'Connection', 'x-b', 'X-A', '1', 'X-B', '2', 'X-C', '3'), NAME, 'r3', false), ['x-c', '3', 'x-request-id', 'r3'], 'several Connection fields nominate together')
  t.same(clientResponseHeaders(raw('Location', 'http://caf\xe9.example/'), NAME, 'r4', false), ['location', 'http://caf\xe9.example/', 'x-request-id', 'r4'], 'obs-text bytes pass as latin1, unchanged')
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
