/**
 * Bounded random-request fuzz against a running proxy with a healthy upstream: 2,000 requests
 * from a seeded generator (methods, targets, hosts, headers, bodies, framings) over raw sockets,
 * 8 at a time, under a 90 s budget. The proxy must never crash and never answer 5xx itself (the
 * upstream always answers 200, so any 5xx comes from the proxy), and it still serves afterwards.
 *
 * Guards: the proxy's error handling end to end (src/proxy/app.ts setErrorHandler, route(),
 * isDecodablePath, canonicalHost); an exception escaping any of them shows up as a 500 here.
 */
import fc from 'fast-check'
import t from 'tap'
import { rawRequest, type RawResponse } from '../helpers/raw-http.js'
import { startRig } from './support.js'

const SEED = 4242
const COUNT = 2000
const PARALLEL = 8
const BUDGET_MS = 90_000

const token = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}$/)
const method = fc.oneof(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'PROPFIND', 'get'), token)
const pathChar = fc.constantFrom('a', 'b', '/', '.', '%', '%2e', '%2f', '%00', '%zz', '?', '#', ';', '~', '*', '@', ':', '=', '&', '+', '\\', 'ü', '"', '<')
const safeChar = fc.constantFrom('a', 'b', '/', '-', '_', '.', '~', '?', '=', '&')
const path = fc.oneof(fc.array(safeChar, { maxLength: 25 }), fc.array(safeChar, { maxLength: 25 }), fc.array(pathChar, { maxLength: 25 })).map((cs) => '/' + cs.join(''))
const host = fc.constantFrom('acme.example.com', 'acme.example.com', 'acme.example.com', 'globex.example.com', 'ACME.example.com.', 'globex.example.com:8080', 'xn--bcher-kva.example', 'unknown.example.com', '127.0.0.1', '[::1]', '', 'a..b', 'acme.example.com@x', 'www.acme.example.com')
const target = fc.oneof(path, path, path, path, fc.tuple(fc.constantFrom('http://', 'https://', 'HTTP://', 'ftp://', '//'), host, path).map(([s, h, p]) => s + h + p), fc.constantFrom('*', 'acme.example.com:443', ''))
const headerValue = fc.stringMatching(/^[\x20-\x7e]{0,40}$/)
const header = fc.oneof(
  fc.tuple(token, headerValue),
  fc.tuple(token, headerValue),
  fc.tuple(fc.constantFrom('X-Tenant-Descriptor', 'x_tenant_descriptor', 'Connection', 'Upgrade', 'Expect', 'TE', 'Trailer', 'X-Forwarded-Host', 'X-Forwarded-For', 'X-Request-Id', 'Content-Type', 'Range', 'If-None-Match', 'Accept-Encoding', 'Cookie'), headerValue)
)
const body = fc.string({ maxLength: 200 })
const framing = fc.constantFrom('none', 'length', 'chunked', 'wrong-length')

const request = fc.record({ method, target, host, hostCount: fc.constantFrom(0, 1, 1, 1, 2), headers: fc.array(header, { maxLength: 8 }), body, framing, version: fc.constantFrom('HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2') })
  .map((r) => {
    const lines = [`${r.method} ${r.target} ${r.version}`]
    for (let i = 0; i < r.hostCount; i++) lines.push(`Host: ${r.host}`)
    for (const [n, v] of r.headers) lines.push(`${n}: ${v}`)
    const bytes = Buffer.byteLength(r.body)
    let payload = ''
    if (r.framing === 'length') { lines.push(`Content-Length: ${bytes}`); payload = r.body }
    if (r.framing === 'wrong-length') { lines.push(`Content-Length: ${bytes + 5}`); payload = r.body }
    if (r.framing === 'chunked') { lines.push('Transfer-Encoding: chunked'); payload = (bytes > 0 ? `${bytes.toString(16)}\r\n${r.body}\r\n` : '') + '0\r\n\r\n' }
    lines.push('Connection: close')
    return { text: `${lines.join('\r\n')}\r\n\r\n${payload}`, expect: r.headers.some(([n]) => n.toLowerCase() === 'expect'), stalled: r.framing === 'wrong-length' }
  })

t.test(`random requests (${COUNT}, seed ${SEED}): no crash, no 5xx from the proxy`, async (t) => {
  const rig = await startRig(t)
  const samples = fc.sample(request, { seed: SEED, numRuns: COUNT })
  const deadline = Date.now() + BUDGET_MS
  const statuses = new Map<string, number>()
  const fivexx: string[] = []
  let next = 0
  let done = 0
  async function worker (): Promise<void> {
    while (next < samples.length && Date.now() < deadline) {
      const s = samples[next++]
      if (s === undefined) break
      // A body shorter than its Content-Length leaves the request open: the helper's 10 s socket
      // timeout would bound it, but half-close makes the server see the end at once.
      let res: RawResponse | null
      try {
        res = await rawRequest(rig.port, s.text)
      } catch {
        res = null
      }
      const key = res === null || Number.isNaN(res.status) ? 'closed' : String(res.status)
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      if (res !== null && res.status >= 500) fivexx.push(`${res.status} for ${JSON.stringify(s.text)}: ${res.body.slice(0, 200)}`)
      done++
    }
  }
  await Promise.all(Array.from({ length: PARALLEL }, worker))
  t.equal(done, COUNT, `all ${COUNT} requests ran within ${BUDGET_MS / 1000} s`)
  t.comment(`statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`)
  t.same(fivexx.slice(0, 10), [], 'no 5xx answered by the proxy')
  t.ok((statuses.get('200') ?? 0) > 60, 'a share reached the upstream')
  const after = await rawRequest(rig.port, 'GET /still-alive HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.equal(after.status, 200, 'the proxy still serves afterwards')
})

// Guards src/proxy/headers.ts (Expect dropped on requests): undici refuses any request carrying
// Expect, so forwarding it turned curl's uploads over 1 KiB (Expect: 100-continue, already
// answered by Node) into 502s from a healthy upstream. Found by this suite.
t.test('Expect header: forwarded without it, never a 502 from a healthy upstream', async (t) => {
  const rig = await startRig(t)
  const cases: Record<string, string> = {
    'HTTP/1.1 Expect: 100-continue upload': 'POST /upload HTTP/1.1\r\nHost: acme.example.com\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc',
    'HTTP/1.0 with Expect': 'POST /upload HTTP/1.0\r\nHost: acme.example.com\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc'
  }
  for (const [name, payload] of Object.entries(cases)) {
    const res = await rawRequest(rig.port, payload)
    // The final status (after an interim 100 Continue) is what the client acts on.
    const final = /HTTP\/1\.[01] (\d{3})(?![\s\S]*HTTP\/1\.[01] \d{3})/.exec(res.head + res.body)
    t.equal(Number(final?.[1] ?? res.status), 200, `${name}: 200 from the upstream`)
  }
})

// Guards src/proxy/app.ts upstreamFailed: a client whose body ends before its Content-Length is
// answered 400 (or its connection closes), never a 502 blaming a healthy upstream. Found by this suite.
t.test('stalled request body: not a 5xx blamed on the upstream', async (t) => {
  const rig = await startRig(t)
  const res = await rawRequest(rig.port, 'POST /stall HTTP/1.1\r\nHost: acme.example.com\r\nContent-Length: 5\r\nConnection: close\r\n\r\n').catch(() => null)
  t.ok(res === null || Number.isNaN(res.status) || res.status < 500, `answered ${res === null ? 'nothing (closed)' : res.status}`)
})
