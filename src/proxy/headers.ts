/**
 * Pure header rules of the data path: which request headers of the client reach the app, which
 * forwarding headers the proxy sets, and what is removed from the app's response.
 *
 * Header maps here are Node's and undici's: lower-case names, duplicates joined (set-cookie
 * excepted).
 */
import { FORWARDING_HEADER_SET } from './forwarding-headers.js'

/** Header map as Node and undici use it: lower-case names. */
export type HeaderMap = Record<string, string | string[] | number | undefined>

/** How request headers are filtered; built once from the configuration. */
export interface HeaderPolicy {
  /** The descriptor header, lower case. */
  readonly descriptorHeader: string
  /** Keep header names containing '_' (traffic.allowUnderscoresInHeaders). */
  readonly allowUnderscores: boolean
  /** Forwarding headers believed from trusted peers (traffic.trustedForwardedHeaders), lower case. */
  readonly trustedForwarded: ReadonlySet<string>
}

/** What the proxy knows about one request when it builds the upstream headers. */
export interface ForwardingContext {
  /** The peer's address (IPv4-mapped IPv6 already unwrapped). */
  readonly peer: string
  /** Whether the peer is a configured trusted proxy. */
  readonly trusted: boolean
  /** The authority the client addressed: the absolute-form target's, else the Host header. */
  readonly host: string
  /** Host header to send instead (upstream.hostHeader), or null to keep `host`. */
  readonly hostHeader: string | null
  /** Request id chosen for this request. */
  readonly requestId: string
}

/** True when `name` would be read as the descriptor header by some server or framework. */
export function isDescriptorHeaderName (name: string, descriptorHeader: string): boolean {
  // Rack, CGI and many frameworks map '_' to '-' (or the reverse) and ignore case, so
  // X_Tenant_Descriptor would reach a Rails app as HTTP_X_TENANT_DESCRIPTOR: strip every spelling.
  if (name.length !== descriptorHeader.length) return false
  return name.toLowerCase().replaceAll('_', '-') === descriptorHeader
}

/**
 * The headers the app receives for a client's request, in one pass over the client's:
 *
 * - dropped: headers nominated in Connection (first, so a client cannot nominate the headers the
 *   proxy adds afterwards, RFC 9110 section 7.6.1), hop-by-hop headers, every spelling of the
 *   descriptor header, names with '_' (see below), and every forwarding header
 *   (src/proxy/forwarding-headers.ts) except, from a trusted peer, the ones it is trusted for;
 * - set: Host, X-Forwarded-For/-Proto/-Host/-Port and X-Request-Id, always, and consistently:
 *   from an untrusted peer they describe the connection to this proxy; from a trusted peer they
 *   keep what the peer is trusted for (X-Forwarded-For gets the peer appended; a trusted
 *   `Forwarded` gets a `for=` element) and fill in the rest. X-Forwarded-Host names the host the
 *   tenant was chosen for: `ctx.host`, or the trusted hop's when the policy trusts it (only with
 *   traffic.hostFromForwardedHost). Lists are reduced to the entry the nearest trusted hop wrote
 *   (the last), because frameworks disagree about which entry counts (Rack takes the last
 *   X-Forwarded-Host, Express the first). X-Forwarded-Port follows the host's port, else the
 *   scheme's default, unless a trusted hop set it: Rack builds URLs from it.
 *
 * Names with '_': CGI-style servers (Rack under Puma or Unicorn, WSGI, PHP) turn '-' into '_', so
 * `X_Forwarded_Host` reaches the app as HTTP_X_FORWARDED_HOST, a second spelling no filter here
 * would catch (CVE-2024-45614 in Puma). They are dropped like nginx does (underscores_in_headers
 * off); with `allowUnderscores` only the spellings of headers the proxy controls are.
 *
 * The descriptor header itself is not set here: the caller adds it last.
 */
export function upstreamRequestHeaders (inbound: HeaderMap, policy: HeaderPolicy, ctx: ForwardingContext): HeaderMap {
  const nominated = nominatedBy(inbound.connection)
  const out: HeaderMap = {}
  let xff: string | undefined
  let xfp: string | undefined
  let xfh: string | undefined
  let xfport: string | undefined
  let forwarded: string | undefined
  for (const name in inbound) {
    const value = inbound[name]
    if (value === undefined || dropped(name, policy, nominated)) continue
    if (FORWARDING_HEADER_SET.has(name)) {
      if (!ctx.trusted || !policy.trustedForwarded.has(name)) continue
      const text = Array.isArray(value) ? value.join(', ') : String(value)
      switch (name) {
        case 'x-forwarded-for': xff = text; break
        case 'x-forwarded-proto': xfp = text; break
        case 'x-forwarded-host': xfh = text; break
        case 'x-forwarded-port': xfport = text; break
        case 'forwarded': forwarded = text; break
        default: out[name] = value
      }
      continue
    }
    out[name] = value
  }

  out.host = ctx.hostHeader ?? ctx.host
  out['x-forwarded-for'] = xff !== undefined && xff.trim() !== '' ? `${xff}, ${ctx.peer}` : ctx.peer
  const proto = xfp === undefined ? '' : lastListEntry(xfp).toLowerCase()
  const scheme = proto === 'https' ? 'https' : 'http'
  out['x-forwarded-proto'] = scheme
  const forwardedHost = xfh === undefined ? '' : lastListEntry(xfh)
  const host = forwardedHost !== '' ? forwardedHost : ctx.host
  out['x-forwarded-host'] = host
  const port = xfport === undefined ? '' : lastListEntry(xfport)
  out['x-forwarded-port'] = /^\d{1,5}$/.test(port) ? port : authorityPort(host) ?? (scheme === 'https' ? '443' : '80')
  if (forwarded !== undefined) out.forwarded = forwarded.trim() === '' ? `for=${forwardedNode(ctx.peer)}` : `${forwarded}, for=${forwardedNode(ctx.peer)}`
  out['x-request-id'] = ctx.requestId
  return out
}

/**
 * An upstream response's raw headers (undici's [name, value, …] buffers) as the client gets them,
 * flat for ServerResponse.writeHead: without hop-by-hop headers, which describe the
 * proxy-upstream connection only (RFC 9110 section 7.6.1; copying `Connection: keep-alive` would
 * override a client's `Connection: close`), without Transfer-Encoding (Node frames the body
 * itself), without any spelling of the descriptor header (never echoed), with the request id,
 * and with `Connection: close` while draining.
 */
export function clientResponseHeaders (raw: readonly Buffer[], descriptorHeader: string, requestId: string, close: boolean): string[] {
  const names: string[] = []
  let connection: string | null = null
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1').toLowerCase()
    names.push(name)
    if (name === 'connection') connection = connection === null ? (raw[i + 1] as Buffer).toString('latin1') : `${connection}, ${(raw[i + 1] as Buffer).toString('latin1')}`
  }
  const nominated = nominatedBy(connection ?? undefined)
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const name = names[i >> 1] as string
    if (name === 'x-request-id' || droppedFromResponse(name, descriptorHeader, nominated)) continue
    out.push(name, (raw[i + 1] as Buffer).toString('latin1'))
  }
  out.push('x-request-id', requestId)
  if (close) out.push('connection', 'close')
  return out
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/

/** True for an inbound X-Request-Id worth keeping (from a trusted hop): short, no spaces or controls. */
export function isWellFormedRequestId (value: unknown): value is string {
  return typeof value === 'string' && REQUEST_ID.test(value)
}

/** The last entry of a comma-separated forwarding header: the one the nearest (trusted) hop added. */
export function lastListEntry (value: string): string {
  const i = value.lastIndexOf(',')
  return (i === -1 ? value : value.slice(i + 1)).trim()
}

/** The peer address as a socket reports it, with IPv4-mapped IPv6 (dual-stack listeners) unwrapped. */
export function peerAddress (address: string | undefined): string {
  if (address === undefined) return ''
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address
}

/**
 * Request header names the proxy controls: with underscores allowed, their '_' spellings are still
 * dropped, since a CGI-style app would read them as the real thing.
 */
const CONTROLLED = new Set([
  ...FORWARDING_HEADER_SET, 'host', 'x-request-id', 'content-length', 'transfer-encoding',
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'upgrade', 'expect'
])

function dropped (name: string, policy: HeaderPolicy, nominated: ReadonlySet<string> | null): boolean {
  const length = name.length
  if (length === policy.descriptorHeader.length && isDescriptorHeaderName(name, policy.descriptorHeader)) return true
  if (isHopByHop(name, length, false)) return true
  if (nominated !== null && nominated.has(name)) return true
  // The proxy sets these itself.
  if (name === 'host' || name === 'x-request-id') return true
  if (name.includes('_')) return !policy.allowUnderscores || CONTROLLED.has(name.replaceAll('_', '-'))
  return false
}

function droppedFromResponse (name: string, descriptorHeader: string, nominated: ReadonlySet<string> | null): boolean {
  const length = name.length
  return (length === descriptorHeader.length && isDescriptorHeaderName(name, descriptorHeader)) ||
    isHopByHop(name, length, true) ||
    (nominated !== null && nominated.has(name.toLowerCase()))
}

/** The header names a Connection value nominates (lower case), or null for none. */
function nominatedBy (connection: HeaderMap[string]): ReadonlySet<string> | null {
  // The common values nominate nothing beyond the hop-by-hop list: skip the parsing.
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return null
  const names = new Set<string>()
  for (const value of Array.isArray(connection) ? connection : [String(connection)]) {
    for (const token of value.split(',')) {
      const name = token.trim().toLowerCase()
      if (name !== '') names.add(name)
    }
  }
  return names.size === 0 ? null : names
}

/**
 * Hop-by-hop headers (RFC 9110 section 7.6.1) that never cross a proxy, plus the legacy
 * Proxy-Connection that some clients still send, Transfer-Encoding, and Expect on requests;
 * switched on length so most names cost one test.
 */
function isHopByHop (name: string, length: number, response: boolean): boolean {
  switch (length) {
    case 2: return name === 'te'
    // Expect (requests only): Node already answered 100-continue to the client; forwarded, undici
    // refuses the request outright.
    case 6: return !response && name === 'expect'
    case 7: return name === 'trailer' || name === 'upgrade'
    case 10: return name === 'connection' || name === 'keep-alive'
    case 16: return name === 'proxy-connection'
    // Each side frames its own body: Node towards the client, undici towards the app (which
    // refuses the header outright).
    case 17: return name === 'transfer-encoding'
    case 19: return name === 'proxy-authorization'
    default: return false
  }
}

/** The port of an authority (`host:port`, `[v6]:port`), or null when it names none. */
function authorityPort (authority: string): string | null {
  const colon = authority.lastIndexOf(':')
  if (colon === -1 || authority.indexOf(']', colon) !== -1) return null
  const port = authority.slice(colon + 1)
  return /^\d{1,5}$/.test(port) ? port : null
}

/** A node of RFC 7239 section 6: IPv6 addresses bracketed and quoted. */
function forwardedNode (address: string): string {
  return address.includes(':') ? `"[${address}]"` : address
}
