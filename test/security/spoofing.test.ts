/**
 * Forged descriptor headers, in every spelling a client could try, over raw sockets to a running
 * proxy. The upstream records raw headers and trailers: it must see exactly one descriptor, the
 * proxy's own (it verifies, for the right tenant and host), or no request at all (a 400).
 *
 * Guards: src/proxy/headers.ts isDescriptorHeaderName (case and `_` spellings), nominatedBy and
 * dropped (Connection-nominated names), and src/proxy/app.ts upstreamHeaders, which scrubs first
 * and sets `headers[headerName] = tp.descriptor` last. Remove any of these and a forged or second
 * descriptor reaches the upstream, which fails the "exactly one, verified" assertion.
 */
import t from 'tap'
import { rawRequest } from '../helpers/raw-http.js'
import { startUpstream, type SeenRequest } from '../helpers/upstream.js'
import { startTestProxy, testConfig, testRegistry } from '../helpers/proxy.js'
import { descriptorValues, startRig, verifySeen } from './support.js'

const FORGED = 'eyJhbGciOiJub25lIiwidHlwIjoidGVuYW50LWRiK2p3dCJ9.eyJzdWIiOiJnbG9iZXgifQ.'

const VARIANTS: Record<string, string> = {
  'exact name': `X-Tenant-Descriptor: ${FORGED}\r\n`,
  'lower case': `x-tenant-descriptor: ${FORGED}\r\n`,
  'upper case': `X-TENANT-DESCRIPTOR: ${FORGED}\r\n`,
  'underscores (Rack/CGI read it as HTTP_X_TENANT_DESCRIPTOR)': `X_Tenant_Descriptor: ${FORGED}\r\n`,
  'one underscore': `x-tenant_descriptor: ${FORGED}\r\n`,
  'underscores, upper case': `X_TENANT_DESCRIPTOR: ${FORGED}\r\n`,
  duplicates: `X-Tenant-Descriptor: ${FORGED}\r\nX-Tenant-Descriptor: ${FORGED}\r\n`,
  'duplicates in two spellings': `X-Tenant-Descriptor: ${FORGED}\r\nx_tenant_descriptor: ${FORGED}\r\n`,
  'Connection-nominated': `Connection: X-Tenant-Descriptor\r\nX-Tenant-Descriptor: ${FORGED}\r\n`,
  'Connection-nominated, upper case, in a list': `Connection: keep-alive, X-TENANT-DESCRIPTOR\r\nX-Tenant-Descriptor: ${FORGED}\r\n`,
  'obs-fold continuation line': `X-Tenant-Descriptor: ${FORGED}\r\n ${FORGED}\r\n`,
  'obs-fold with a tab': `X-Tenant-Descriptor:\r\n\t${FORGED}\r\n`,
  'empty value': 'X-Tenant-Descriptor: \r\n',
  'value with a comma': `X-Tenant-Descriptor: ${FORGED}, ${FORGED}\r\n`,
  'space before the colon': `X-Tenant-Descriptor : ${FORGED}\r\n`,
  'tab before the colon': `X-Tenant-Descriptor\t: ${FORGED}\r\n`,
  'header after a folded one': `X-Other: a\r\n b\r\nX-Tenant-Descriptor: ${FORGED}\r\n`
}

t.test('forged descriptor headers: the upstream sees exactly one descriptor, the proxy\'s', async (t) => {
  const rig = await startRig(t)
  for (const [name, lines] of Object.entries(VARIANTS)) {
    const before = rig.upstream.seen.length
    const res = await rawRequest(rig.port, `GET /spoof HTTP/1.1\r\nHost: acme.example.com\r\n${lines}Connection: close\r\n\r\n`)
    const seen = rig.upstream.seen.slice(before)
    if (seen.length === 0) {
      // Refused by the proxy's HTTP parser or router: acceptable, nothing reached the app.
      t.ok(res.status === 400 || Number.isNaN(res.status), `${name}: refused (${res.status})`)
      continue
    }
    t.equal(seen.length, 1, `${name}: one request upstream`)
    const first = seen[0] as SeenRequest
    t.equal(descriptorValues(first).length, 1, `${name}: exactly one descriptor upstream`)
    const d = await verifySeen(rig, first)
    t.match(d, { tenant: 'acme', host: 'acme.example.com' }, `${name}: it is the proxy's (verifies for acme)`)
    t.notMatch(JSON.stringify(first.rawHeaders), FORGED.slice(0, 20), `${name}: no forged value anywhere upstream`)
    t.equal(res.headers['x-tenant-descriptor'], undefined, `${name}: never echoed to the client`)
  }
})

t.test('a descriptor in a chunked trailer never reaches the upstream', async (t) => {
  // An upstream that keeps rawTrailers (the rig's echo upstream does not read them).
  const trailers: string[][] = []
  const up = await startUpstream(t, (req, res) => {
    req.resume()
    req.on('end', () => {
      trailers.push(req.rawTrailers)
      res.writeHead(200).end('ok')
    })
  })
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const proxy = await startTestProxy(t, testConfig(registry.url, up.origin))
  const body = `3\r\nabc\r\n0\r\nX-Tenant-Descriptor: ${FORGED}\r\nx_tenant_descriptor: ${FORGED}\r\n\r\n`
  const res = await rawRequest(proxy.traffic.port, `POST /t HTTP/1.1\r\nHost: acme.example.com\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tenant-Descriptor\r\nConnection: close\r\n\r\n${body}`)
  t.ok(res.status === 200 || res.status === 400, `answered (${res.status})`)
  const seen = up.seen[0]
  if (seen !== undefined) {
    t.equal(descriptorValues({ ...seen, rawTrailers: trailers[0] ?? [] }).length, 1, 'headers and trailers together carry exactly one descriptor (the proxy\'s header)')
    t.notMatch(JSON.stringify(trailers), FORGED.slice(0, 20), 'the forged trailer was not forwarded')
  }
})

t.test('responses: a careless app echoing the header does not leak it to the client', async (t) => {
  // Guards scrubOutbound (src/proxy/app.ts rewriteHeaders): the test upstream answers with x-tenant-descriptor.
  const rig = await startRig(t)
  const res = await rawRequest(rig.port, 'GET / HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.equal(res.status, 200)
  t.notMatch(res.head.toLowerCase(), /x.tenant.descriptor/, 'no descriptor header in the response')
})
