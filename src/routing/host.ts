/**
 * Host canonicalization: the one function that turns a Host header or a CLI hostname into the
 * registry's form. The CLI uses it when writing domains and the proxy on every request, so a
 * domain is found exactly when it was written the same way.
 */
import { domainToASCII, domainToUnicode } from 'node:url'
import { tpError } from '../errors.js'

export type CanonicalHost = { ok: true, host: string } | { ok: false, reason: string }

/** Canonical registry form of a Host header value or CLI hostname; never throws. */
export function canonicalHost (input: string): CanonicalHost {
  if (input.length === 0) return fail('empty host')
  // Fast path: already lower-case ASCII letters, digits, dots and hyphens, maybe with a port.
  let i = 0
  const n = input.length
  for (; i < n; i++) {
    const c = input.charCodeAt(i)
    if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 || c === 46)) break
  }
  if (i === n) return checkName(input)
  if (input.charCodeAt(i) === 58 /* ':' */ && isPort(input, i + 1)) return checkName(input.slice(0, i))
  return slowPath(input)
}

/** Same, but throws the catalogue error TENANT_PROXY_ERR_HOST_INVALID (for the CLI). */
export function requireCanonicalHost (input: string): string {
  const r = canonicalHost(input)
  if (!r.ok) throw tpError('TENANT_PROXY_ERR_HOST_INVALID', [JSON.stringify(input), r.reason])
  return r.host
}

function slowPath (input: string): CanonicalHost {
  for (let i = 0; i < input.length; i++) {
    const c = input.charCodeAt(i)
    // RFC 9110 field values may not carry controls; whitespace is never part of a host.
    if (c <= 0x20 || c === 0x7f) return fail(c === 0x20 || c === 0x09 ? 'whitespace in host' : 'control character in host')
  }
  if (input.includes('@')) return fail('userinfo is not allowed')
  let host = input
  if (host.startsWith('[')) {
    // RFC 3986 IP-literal: "[" IPv6address "]" with an optional port.
    const close = host.indexOf(']')
    if (close === -1) return fail('unclosed IPv6 literal')
    const rest = host.slice(close + 1)
    if (rest !== '' && !(rest.startsWith(':') && isPort(rest, 1))) return fail('invalid port')
    return fail('IP literal')
  }
  const colon = host.lastIndexOf(':')
  if (colon !== -1) {
    if (host.indexOf(':') !== colon) return fail('IP literal')
    if (!isPort(host, colon + 1)) return fail('invalid port')
    host = host.slice(0, colon)
  }
  if (host === '') return fail('empty host')
  let ascii = host
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(host)) {
    // IDNA (RFC 5890) via WHATWG UTS #46 processing: maps case and full-width dots, then punycode.
    ascii = domainToASCII(host)
    if (ascii === '') return fail('invalid internationalized name')
  }
  return checkName(ascii.toLowerCase())
}

/** Checks a lower-case ASCII name (port already removed) against RFC 1035/1123 rules. */
function checkName (raw: string): CanonicalHost {
  // One trailing dot is the fully-qualified spelling of the same name.
  const name = raw.endsWith('.') ? raw.slice(0, -1) : raw
  if (name === '') return fail('empty host')
  if (name.length > 253) return fail('name longer than 253 bytes')
  let labelStart = 0
  let allNumericLast = true
  let labels = 0
  for (let i = 0; i <= name.length; i++) {
    const c = i === name.length ? 46 : name.charCodeAt(i)
    if (c === 46) {
      const len = i - labelStart
      if (len === 0) return fail('empty label')
      if (len > 63) return fail('label longer than 63 bytes')
      if (name.charCodeAt(labelStart) === 45 || name.charCodeAt(i - 1) === 45) return fail('label starts or ends with a hyphen')
      labels++
      allNumericLast = true
      for (let j = labelStart; j < i; j++) {
        const d = name.charCodeAt(j)
        if (d < 48 || d > 57) { allNumericLast = false; break }
      }
      labelStart = i + 1
      continue
    }
    if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45)) return fail(`invalid character ${JSON.stringify(String.fromCharCode(c))}`)
  }
  // An A-label must decode (RFC 5891 section 5.4), or two spellings could name one registry row.
  if (name.includes('xn--') && domainToUnicode(name) === '') return fail('invalid punycode label')
  if (allNumericLast) {
    // RFC 1123 section 2.1: a top-level label is never all-numeric, so such a name is an address.
    return fail(labels === 4 && /^\d{1,3}(\.\d{1,3}){3}$/.test(name) ? 'IP literal' : labels === 1 ? 'IP literal' : 'numeric top-level label')
  }
  return { ok: true, host: name }
}

/** RFC 3986 port: digits (none is allowed: "host:" means the default port), at most 65535. */
function isPort (s: string, from: number): boolean {
  if (from === s.length) return true
  if (s.length - from > 5) return false
  let value = 0
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 48 || c > 57) return false
    value = value * 10 + (c - 48)
  }
  return value <= 65_535
}

function fail (reason: string): CanonicalHost {
  return { ok: false, reason }
}
