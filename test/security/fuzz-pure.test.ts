/**
 * Property tests (fast-check, fixed seed so runs are reproducible) over the host canonicalizer and
 * the header rules; read-only use of src/routing/host.ts and src/proxy/headers.ts.
 *
 * Guards: canonicalHost's checkName (RFC 1035/1123 shape of every accepted output) and its
 * never-throwing slow path; the dropped() rules of upstreamRequestHeaders and scrubOutbound.
 * Weaken any and a property fails.
 */
import fc from 'fast-check'
import t from 'tap'
import { domainToASCII } from 'node:url'
import { FORWARDING_HEADER_SET } from '../../src/proxy/forwarding-headers.js'
import { clientResponseHeaders, upstreamRequestHeaders, type ForwardingContext, type HeaderMap, type HeaderPolicy } from '../../src/proxy/headers.js'
import { canonicalHost } from '../../src/routing/host.js'

const SEED = 20_260_427
const RUNS = 3000
const NAME = 'x-tenant-descriptor'
/** Output shape of a canonical host: lower-case LDH labels, no trailing dot, non-numeric TLD. */
const CANONICAL = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?$/)
const hostish = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.tuple(fc.array(label, { minLength: 1, maxLength: 5 }), fc.constantFrom('', '.', '..'), fc.constantFrom('', ':', ':80', ':65535', ':65536', ':x', ':8080:1'))
    .map(([labels, dot, port]) => labels.join('.') + dot + port),
  fc.constantFrom('bücher.example', 'BÜCHER.example', 'xn--bcher-kva.example', 'xn--zz.example', '[::1]:80', '127.0.0.1', 'a..b', '-a.b', 'a-.b', 'ａｃｍｅ．example', 'acme.example.com.')
)

t.test('canonicalHost: never throws; output canonical and idempotent', async (t) => {
  fc.assert(fc.property(hostish, (input) => {
    const r = canonicalHost(input)
    if (!r.ok) return typeof r.reason === 'string' && r.reason !== ''
    const again = canonicalHost(r.host)
    return CANONICAL.test(r.host) && !/^\d+$/.test(r.host.split('.').pop() ?? '') && again.ok && again.host === r.host
  }), { seed: SEED, numRuns: RUNS })
  t.pass('property held')
})

t.test('canonicalHost: accepts exactly the RFC-shaped names (any case, one trailing dot, a valid port)', async (t) => {
  const name = fc.array(label, { minLength: 2, maxLength: 4 }).filter((ls) => !/^\d+$/.test(ls[ls.length - 1] ?? '') && ls.every((l) => !l.toLowerCase().startsWith('xn--')))
  fc.assert(fc.property(name, fc.constantFrom('', '.'), fc.option(fc.integer({ min: 0, max: 65535 })), (labels, dot, port) => {
    const plain = labels.join('.')
    const r = canonicalHost(plain + dot + (port === null ? '' : `:${port}`))
    return r.ok && r.host === plain.toLowerCase()
  }), { seed: SEED, numRuns: RUNS })
  fc.assert(fc.property(fc.array(label, { minLength: 1, maxLength: 3 }), fc.constantFrom(' ', '_', '/', '@', '\\', '%', '*', '\t', '\u0000'), (labels, bad) => {
    return !canonicalHost(`${labels.join('.')}${bad}x.example`).ok
  }), { seed: SEED, numRuns: RUNS })
  // Unicode names map to exactly their IDNA A-label, as the registry stores them.
  fc.assert(fc.property(fc.constantFrom('bücher', 'münchen', 'ñandú', 'straße', 'δοκιμή'), fc.constantFrom('example', 'example.com'), (l, tld) => {
    const r = canonicalHost(`${l}.${tld}`)
    return r.ok && r.host === domainToASCII(`${l}.${tld}`)
  }), { seed: SEED, numRuns: 50 })
  t.pass('properties held')
})

const HOP = ['connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-connection', 'proxy-authorization']
const descriptorSpelling = fc.tuple(fc.array(fc.boolean(), { minLength: NAME.length, maxLength: NAME.length }), fc.array(fc.boolean(), { minLength: 2, maxLength: 2 }))
  .map(([upper, underscore]) => {
    let dash = 0
    return [...NAME].map((c, i) => c === '-' ? (underscore[dash++] === true ? '_' : '-') : upper[i] === true ? c.toUpperCase() : c).join('')
  })
const headerName = fc.oneof(
  fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
  descriptorSpelling,
  fc.constantFrom(...HOP, 'transfer-encoding', 'content-length', 'host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-ssl', 'forwarded', 'x-real-ip', 'x_forwarded_host', 'x-request-id', 'cookie', 'set-cookie')
)
const headerValue = fc.oneof(fc.string({ maxLength: 30 }), fc.array(fc.string({ maxLength: 10 }), { maxLength: 3 }))
const headers = fc.dictionary(headerName, headerValue, { maxKeys: 12 }).chain((h) =>
  // Sometimes nominate some of the present headers in Connection.
  fc.subarray(Object.keys(h)).map((nominated) => nominated.length > 0 && !('connection' in h) ? { ...h, connection: nominated.join(', ') } : h))

const isDescriptor = (n: string): boolean => n.toLowerCase().replaceAll('_', '-') === NAME
const nominatedIn = (h: HeaderMap): Set<string> => new Set(String(Array.isArray(h.connection) ? h.connection.join(',') : h.connection ?? '').split(',').map((s) => s.trim().toLowerCase()).filter((s) => s !== ''))

const POLICY: HeaderPolicy = { descriptorHeader: NAME, allowUnderscores: false, trustedForwarded: new Set(['x-forwarded-for', 'x-forwarded-proto']) }
const CTX: ForwardingContext = { peer: '198.51.100.7', trusted: false, host: 'acme.example', hostHeader: null, requestId: 'r' }
const OURS = ['host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-request-id']

t.test('upstreamRequestHeaders: never throws, input untouched, nothing forbidden survives, the rest untouched, ours always set', async (t) => {
  fc.assert(fc.property(headers, fc.boolean(), (h: HeaderMap, trusted) => {
    const input = structuredClone(h)
    const out = upstreamRequestHeaders(h, POLICY, { ...CTX, trusted })
    const nominated = nominatedIn(h)
    if (JSON.stringify(h) !== JSON.stringify(input)) return false // the input map itself is never modified
    const forbidden = (n: string): boolean => isDescriptor(n) || HOP.includes(n) || n === 'transfer-encoding' || nominated.has(n.toLowerCase()) || n.includes('_') ||
      (FORWARDING_HEADER_SET.has(n) && !(trusted && POLICY.trustedForwarded.has(n)))
    for (const n of Object.keys(out)) {
      if (!OURS.includes(n) && forbidden(n)) return false
    }
    for (const [n, v] of Object.entries(h)) {
      if (!forbidden(n) && !OURS.includes(n) && !FORWARDING_HEADER_SET.has(n) && out[n] !== v) return false
    }
    if (out['x-forwarded-for'] === undefined || !String(out['x-forwarded-for']).endsWith(CTX.peer)) return false
    if (out['x-forwarded-proto'] !== 'http' && out['x-forwarded-proto'] !== 'https') return false
    return out.host === CTX.host && out['x-forwarded-host'] === CTX.host && out['x-request-id'] === CTX.requestId
  }), { seed: SEED, numRuns: RUNS })
  t.pass('properties held')
})

t.test('clientResponseHeaders: never throws, nothing forbidden survives, the rest untouched and in order', async (t) => {
  fc.assert(fc.property(headers, (h: HeaderMap) => {
    const pairs: Buffer[] = []
    for (const [n, v] of Object.entries(h)) {
      for (const value of Array.isArray(v) ? v : [String(v)]) pairs.push(Buffer.from(n, 'latin1'), Buffer.from(value, 'latin1'))
    }
    const out = clientResponseHeaders(pairs, NAME, 'r', false)
    const nominated = nominatedIn(h)
    const forbidden = (n: string): boolean => isDescriptor(n) || HOP.includes(n) || nominated.has(n) || n === 'transfer-encoding' || n === 'x-request-id'
    const expected: string[] = []
    for (let i = 0; i < pairs.length; i += 2) {
      const n = (pairs[i] as Buffer).toString('latin1').toLowerCase()
      if (!forbidden(n)) expected.push(n, (pairs[i + 1] as Buffer).toString('latin1'))
    }
    expected.push('x-request-id', 'r')
    return JSON.stringify(out) === JSON.stringify(expected)
  }), { seed: SEED, numRuns: RUNS })
  t.pass('properties held')
})
