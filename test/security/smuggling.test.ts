/**
 * Request smuggling shapes over raw sockets: each is refused (400) or the connection is closed,
 * and nothing reaches the upstream (so no request, smuggled or not, arrives with a descriptor).
 * Each payload hides a second request for another tenant after the ambiguous framing.
 *
 * Guards: the strict HTTP/1.1 parser of the traffic listener (src/proxy/app.ts serverFactory:
 * createServer without `insecureHTTPParser`, and Node's default of no lenient flags). With
 * insecureHTTPParser: true, CL+TE, bare LF and obs-fold framing are accepted and these fail.
 */
import t from 'tap'
import { rawRequest } from '../helpers/raw-http.js'
import { startRig } from './support.js'

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: globex.example.com\r\nX-Tenant-Descriptor: forged\r\n\r\n'
const HEAD = 'POST /front HTTP/1.1\r\nHost: acme.example.com\r\n'

const SHAPES: Record<string, string> = {
  'CL + TE (CL.TE)': `${HEAD}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'TE + CL (TE.CL)': `${HEAD}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n${SMUGGLED}\r\n0\r\n\r\n`,
  'duplicate Content-Length, different values': `${HEAD}Content-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
  'duplicate Content-Length, same value': `${HEAD}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc${SMUGGLED}`,
  'Content-Length list': `${HEAD}Content-Length: 3, 3\r\n\r\nabc`,
  'Content-Length with a sign': `${HEAD}Content-Length: +3\r\n\r\nabc`,
  'bare LF line endings': `POST /front HTTP/1.1\nHost: acme.example.com\nContent-Length: 0\n\n${SMUGGLED}`,
  'bare LF inside the header block': `${HEAD}X-A: 1\nContent-Length: 0\r\n\r\n`,
  'bare CR': `${HEAD}X-A: 1\rContent-Length: 0\r\n\r\n`,
  'invalid chunk size (hex prefix)': `${HEAD}Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n`,
  'invalid chunk size (negative)': `${HEAD}Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n`,
  'invalid chunk size (not hex)': `${HEAD}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`,
  'chunk size overflow': `${HEAD}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n`,
  'chunk data longer than its size': `${HEAD}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n${SMUGGLED}`,
  'TE: chunked with obs-fold': `${HEAD}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'TE: chunked, not last': `${HEAD}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'TE: xchunked': `${HEAD}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'TE with a space before the colon': `${HEAD}Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n`,
  'two TE headers': `${HEAD}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'NUL in a header value': `${HEAD}X-A: a\u0000b\r\nContent-Length: 0\r\n\r\n`,
  'request line with bare LF': `POST /front HTTP/1.1\nHost: acme.example.com\r\nContent-Length: 0\r\n\r\n`
}

t.test('smuggling shapes: 400 or a closed connection, and nothing reaches the upstream', async (t) => {
  const rig = await startRig(t)
  for (const [name, payload] of Object.entries(SHAPES)) {
    const before = rig.upstream.seen.length
    const res = await rawRequest(rig.port, payload)
    const seen = rig.upstream.seen.slice(before)
    t.ok(res.status === 400 || Number.isNaN(res.status), `${name}: refused (${Number.isNaN(res.status) ? 'connection closed' : res.status})`)
    t.same(seen.map((s) => s.url), [], `${name}: nothing reached the upstream`)
  }
  // The connection the proxy kept for a legitimate request is not poisoned by an earlier refusal.
  const ok = await rawRequest(rig.port, 'GET /after HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.equal(ok.status, 200, 'a well-formed request afterwards is served')
  t.notOk(rig.upstream.seen.some((s) => s.url === '/smuggled'), 'the smuggled request never reached the upstream')
})
