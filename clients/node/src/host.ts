/**
 * The request host as tenant-proxy writes the `host` claim (docs/descriptor.md, check 16): lower
 * case, port removed, one trailing dot removed, internationalized names converted to punycode by
 * UTS #46 processing (Node's url.domainToASCII, the WHATWG URL rules the proxy uses), and only
 * names that follow RFC 1035/1123. IP literals and invalid names have no canonical form: they
 * match no claim. This is the proxy's own rule (its src/routing/host.ts); a property test in the
 * tenant-proxy repository holds the two equal.
 */
import { domainToASCII, domainToUnicode } from 'node:url'

/** The canonical host, or null when `input` is not a routable name (an IP literal, garbage). */
export function canonicalHost (input: string): string | null {
  if (typeof input !== 'string' || input.length === 0) return null
  for (let i = 0; i < input.length; i++) {
    const c = input.charCodeAt(i)
    // RFC 9110 field values carry no controls; whitespace is never part of a host.
    if (c <= 0x20 || c === 0x7f) return null
  }
  if (input.includes('@') || input.startsWith('[')) return null
  let host = input
  const colon = host.lastIndexOf(':')
  if (colon !== -1) {
    // More than one colon is an IPv6 address without brackets.
    if (host.indexOf(':') !== colon || !isPort(host, colon + 1)) return null
    host = host.slice(0, colon)
  }
  if (host === '') return null
  let ascii = host
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(host)) {
    // IDNA (RFC 5890) via UTS #46 processing: maps case and full-width dots, then punycode.
    ascii = domainToASCII(host)
    if (ascii === '') return null
  }
  return checkName(ascii.toLowerCase())
}

/** A lower-case ASCII name (port removed) checked against RFC 1035/1123, without one trailing dot. */
function checkName (raw: string): string | null {
  const name = raw.endsWith('.') ? raw.slice(0, -1) : raw
  if (name === '' || name.length > 253) return null
  const labels = name.split('.')
  for (const label of labels) {
    if (label.length === 0 || label.length > 63) return null
    if (label.startsWith('-') || label.endsWith('-')) return null
    if (!/^[a-z0-9-]+$/.test(label)) return null
  }
  // An A-label must decode (RFC 5891 section 5.4), or two spellings could name one host.
  if (name.includes('xn--') && domainToUnicode(name) === '') return null
  // RFC 1123 section 2.1: a top-level label is never all-numeric, so such a name is an address.
  if (/^\d+$/.test(labels[labels.length - 1] ?? '')) return null
  return name
}

/** RFC 3986 port: digits (none is allowed: "host:" means the default port), at most 65535. */
function isPort (s: string, from: number): boolean {
  const digits = s.slice(from)
  return digits === '' || (/^\d{1,5}$/.test(digits) && Number(digits) <= 65_535)
}
