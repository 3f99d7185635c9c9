/**
 * Host confusion over raw sockets: for every way to name a host, the proxy either routes to the
 * right tenant (and the descriptor it adds verifies for the Host the upstream sees) or answers
 * 400/404 with nothing upstream. Never the wrong tenant.
 *
 * Guards: src/proxy/app.ts route() (absolute-form authority first, X-Forwarded-Host never, unless
 * traffic.hostFromForwardedHost and a trusted hop, hasDuplicateHost, canonicalHost before lookup)
 * and src/routing/host.ts canonicalHost (test/security/forwarding-headers.test.ts has the trusted
 * hop cases). Reading X-Forwarded-Host routes the X-Forwarded-Host case to globex;
 * dropping hasDuplicateHost lets the duplicate-Host case through; dropping canonicalization
 * makes the case/trailing-dot/port cases 404.
 */
import t from 'tap'
import { rawRequest } from '../helpers/raw-http.js'
import { startRig, verifySeen } from './support.js'

type Expect = { tenant: string, host: string } | 'refused'

const req = (target: string, headers: string): string => `GET ${target} HTTP/1.1\r\n${headers}Connection: close\r\n\r\n`
const CASES: Array<[string, string, Expect]> = [
  ['plain', req('/', 'Host: acme.example.com\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['upper case', req('/', 'Host: ACME.EXAMPLE.COM\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['trailing dot', req('/', 'Host: acme.example.com.\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['two trailing dots', req('/', 'Host: acme.example.com..\r\n'), 'refused'],
  ['port', req('/', 'Host: acme.example.com:8080\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['empty port', req('/', 'Host: acme.example.com:\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['port out of range', req('/', 'Host: acme.example.com:65536\r\n'), 'refused'],
  ['two ports', req('/', 'Host: acme.example.com:80:80\r\n'), 'refused'],
  ['non-numeric port', req('/', 'Host: acme.example.com:http\r\n'), 'refused'],
  ['userinfo in Host', req('/', 'Host: acme.example.com@globex.example.com\r\n'), 'refused'],
  ['missing Host', req('/', ''), 'refused'],
  ['empty Host', req('/', 'Host: \r\n'), 'refused'],
  ['duplicate Host (acme, globex)', req('/', 'Host: acme.example.com\r\nHost: globex.example.com\r\n'), 'refused'],
  ['duplicate Host, same value', req('/', 'Host: acme.example.com\r\nHost: acme.example.com\r\n'), 'refused'],
  ['Host list', req('/', 'Host: acme.example.com, globex.example.com\r\n'), 'refused'],
  ['untrusted X-Forwarded-Host', req('/', 'Host: acme.example.com\r\nX-Forwarded-Host: globex.example.com\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['untrusted X-Forwarded-Host list', req('/', 'Host: acme.example.com\r\nX-Forwarded-Host: evil.example, globex.example.com\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['X-Host / X-Original-Host ignored', req('/', 'Host: acme.example.com\r\nX-Host: globex.example.com\r\nX-Original-Host: globex.example.com\r\nForwarded: host=globex.example.com\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['absolute-form, same host as Host', req('http://acme.example.com/x', 'Host: acme.example.com\r\n'), { tenant: 'acme', host: 'acme.example.com' }],
  ['absolute-form, unknown host', req('http://unknown.example.com/x', 'Host: acme.example.com\r\n'), 'refused'],
  ['absolute-form, IP literal', req('http://127.0.0.1/x', 'Host: acme.example.com\r\n'), 'refused'],
  ['punycode', req('/', 'Host: xn--bcher-kva.example\r\n'), { tenant: 'buecher', host: 'xn--bcher-kva.example' }],
  ['punycode, upper case', req('/', 'Host: XN--BCHER-KVA.EXAMPLE\r\n'), { tenant: 'buecher', host: 'xn--bcher-kva.example' }],
  ['invalid punycode', req('/', 'Host: xn--zz.example\r\n'), 'refused'],
  ['IPv4 literal', req('/', 'Host: 127.0.0.1\r\n'), 'refused'],
  ['IPv4 literal with port', req('/', 'Host: 127.0.0.1:80\r\n'), 'refused'],
  ['IPv6 literal', req('/', 'Host: [::1]\r\n'), 'refused'],
  ['IPv6 literal with port', req('/', 'Host: [::1]:80\r\n'), 'refused'],
  ['decimal IP', req('/', 'Host: 2130706433\r\n'), 'refused'],
  ['numeric TLD', req('/', 'Host: acme.example.123\r\n'), 'refused'],
  ['whitespace inside', req('/', 'Host: acme .example.com\r\n'), 'refused'],
  ['percent-encoded', req('/', 'Host: acme%2eexample.com\r\n'), 'refused'],
  ['backslash', req('/', 'Host: acme.example.com\\globex.example.com\r\n'), 'refused'],
  // routing.wwwFallback (default on): www.<domain> is the same tenant, and the claim names the www host.
  ['www. of a tenant domain', req('/', 'Host: www.acme.example.com\r\n'), { tenant: 'acme', host: 'www.acme.example.com' }],
  ['other subdomain of a tenant', req('/', 'Host: api.acme.example.com\r\n'), 'refused'],
  ['suffix trick', req('/', 'Host: acme.example.com.globex.example.com\r\n'), 'refused'],
  ['label over 63 bytes', req('/', `Host: ${'a'.repeat(64)}.example.com\r\n`), 'refused']
]

t.test('host confusion: the right tenant or a refusal, never the wrong tenant', async (t) => {
  const rig = await startRig(t)
  for (const [name, payload, expect] of CASES) {
    const before = rig.upstream.seen.length
    const res = await rawRequest(rig.port, payload)
    const seen = rig.upstream.seen.slice(before)
    if (expect === 'refused') {
      t.ok(res.status === 400 || res.status === 404 || Number.isNaN(res.status), `${name}: refused (${res.status})`)
      t.equal(seen.length, 0, `${name}: nothing upstream`)
      continue
    }
    t.equal(res.status, 200, `${name}: routed`)
    t.equal(seen.length, 1, `${name}: one request upstream`)
    const s = seen[0]
    if (s === undefined) continue
    const d = await verifySeen(rig, s)
    // The descriptor must name the expected tenant, and verify for the Host the app sees.
    t.match(d, expect, `${name}: descriptor for ${expect.tenant}, verified against the upstream's Host ${String(s.headers.host)}`)
  }
})

const ABSOLUTE: Array<[string, string]> = [
  ['absolute-form target names another tenant than Host', req('http://globex.example.com/x', 'Host: acme.example.com\r\n')],
  ['absolute-form, upper case scheme and host', req('HTTP://GLOBEX.EXAMPLE.COM/x', 'Host: acme.example.com\r\n')],
  ['absolute-form with userinfo', req('http://acme.example.com@globex.example.com/x', 'Host: acme.example.com\r\n')],
  ['absolute-form https', req('https://globex.example.com/x', 'Host: acme.example.com\r\n')]
]

// Guards src/proxy/app.ts upstreamHeaders: route() resolves the tenant from the absolute-form
// authority and signs the descriptor for it, so the forwarded Host and X-Forwarded-Host must be
// that authority too (RFC 9112 section 3.2.2), not the client's Host header. Found by this suite.
t.test('absolute-form target: the upstream sees the authority as Host, consistent with the descriptor', async (t) => {
  const rig = await startRig(t)
  for (const [name, payload] of ABSOLUTE) {
    const before = rig.upstream.seen.length
    const res = await rawRequest(rig.port, payload)
    const s = rig.upstream.seen[before]
    if (res.status !== 200 || s === undefined) {
      t.ok(res.status === 400, `${name}: refused (${res.status})`)
      continue
    }
    t.equal(s.headers.host, 'globex.example.com', `${name}: Host is the target's authority`)
    t.equal(s.headers['x-forwarded-host'], 'globex.example.com', `${name}: X-Forwarded-Host too`)
    t.match(await verifySeen(rig, s), { tenant: 'globex', host: 'globex.example.com' }, `${name}: the descriptor verifies for the Host the app sees`)
  }
})

t.test('absolute-form target: never a descriptor that verifies for the wrong tenant', async (t) => {
  // What holds today despite the bug above: whatever Host the app sees, a verifying descriptor is for that host.
  const rig = await startRig(t)
  for (const [name, payload] of ABSOLUTE) {
    const before = rig.upstream.seen.length
    await rawRequest(rig.port, payload)
    const s = rig.upstream.seen[before]
    if (s === undefined) continue
    const d = await verifySeen(rig, s)
    t.ok(typeof d === 'string' || d.host === String(s.headers.host).toLowerCase(), `${name}: ${typeof d === 'string' ? `refused by the verifier (${d})` : `verifies for ${d.host}`}`)
  }
})

t.test('Unicode Host: the punycode tenant or a refusal, never another', async (t) => {
  const rig = await startRig(t)
  // Raw UTF-8 bytes in the Host value (obs-text for the HTTP parser).
  const payload = Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nHost: '), Buffer.from('bücher.example', 'utf8'), Buffer.from('\r\nConnection: close\r\n\r\n')]).toString('latin1')
  const res = await rawRequest(rig.port, payload)
  const seen = rig.upstream.seen
  if (seen.length === 0) {
    t.ok(res.status === 400 || res.status === 404, `refused (${res.status})`)
    return
  }
  const s = seen[0]
  if (s === undefined) return
  const d = await verifySeen(rig, s)
  t.ok(typeof d === 'string' || d.tenant === 'buecher', `never another tenant (${typeof d === 'string' ? d : d.tenant})`)
})
