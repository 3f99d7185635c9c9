/**
 * Pure header rules of the data path: what is stripped from a client's request before anything
 * is added, and which forwarding headers the proxy sets.
 */

/** Header map as Node and undici use it: lower-case names. */
export type HeaderMap = Record<string, string | string[] | number | undefined>

/** True when `name` would be read as the descriptor header by some server or framework. */
export function isDescriptorHeaderName (name: string, descriptorHeader: string): boolean {
  // Rack, CGI and many frameworks map '_' to '-' (or the reverse) and ignore case, so
  // X_Tenant_Descriptor would reach a Rails app as HTTP_X_TENANT_DESCRIPTOR: strip every spelling.
  if (name.length !== descriptorHeader.length) return false
  return name.toLowerCase().replaceAll('_', '-') === descriptorHeader
}

/**
 * The client's headers without any it must not control: the ones nominated in Connection
 * (processed first, so a client cannot nominate headers the proxy adds afterwards, RFC 9110
 * section 7.6.1), hop-by-hop headers, and every spelling of the descriptor header. Returns
 * `headers` itself when nothing had to go, else a filtered copy.
 */
export function scrubInbound (headers: HeaderMap, descriptorHeader: string): HeaderMap {
  return scrub(headers, descriptorHeader, false)
}

/**
 * Cleans an upstream response for the client: hop-by-hop headers describe the proxy-upstream
 * connection only (RFC 9110 section 7.6.1; copying `Connection: keep-alive` would override a
 * client's `Connection: close`), Node frames the body itself, and the descriptor is never echoed.
 * Returns `headers` itself when nothing had to go, else a filtered copy.
 */
export function scrubOutbound (headers: HeaderMap, descriptorHeader: string): HeaderMap {
  return scrub(headers, descriptorHeader, true)
}

/** Inputs of the forwarding headers for one request. */
export interface ForwardingContext {
  /** The peer's address as the socket reports it. */
  readonly peer: string
  /** Whether the peer is a configured trusted proxy. */
  readonly trusted: boolean
  /** The host the request was resolved for (as the client sent it). */
  readonly host: string
  /** Request id chosen for this request. */
  readonly requestId: string
}

/**
 * Sets X-Forwarded-For/-Proto/-Host and X-Request-Id: a trusted hop's values are kept (and the
 * peer appended to X-Forwarded-For); an untrusted client's are replaced, so an app never acts on a
 * forged client address or scheme.
 */
export function setForwardingHeaders (headers: HeaderMap, ctx: ForwardingContext): void {
  const xff = headers['x-forwarded-for']
  headers['x-forwarded-for'] = ctx.trusted && typeof xff === 'string' && xff !== '' ? `${xff}, ${ctx.peer}` : ctx.peer
  const proto = headers['x-forwarded-proto']
  if (!(ctx.trusted && (proto === 'http' || proto === 'https'))) headers['x-forwarded-proto'] = 'http'
  const xfh = headers['x-forwarded-host']
  if (!(ctx.trusted && typeof xfh === 'string' && xfh !== '')) headers['x-forwarded-host'] = ctx.host
  headers['x-request-id'] = ctx.requestId
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

/**
 * One pass to find out whether anything must go (usually: the upstream's Connection and
 * Keep-Alive), then a copy without it. Copying beats `delete`, which turns the object into a slow
 * dictionary for everything that iterates it afterwards (reply-from, undici, Fastify).
 */
function scrub (headers: HeaderMap, descriptorHeader: string, framing: boolean): HeaderMap {
  const nominated = nominatedBy(headers.connection)
  let drop = false
  for (const name in headers) {
    if (dropped(name, descriptorHeader, framing, nominated)) { drop = true; break }
  }
  if (!drop) return headers
  const kept: HeaderMap = {}
  for (const name in headers) {
    if (!dropped(name, descriptorHeader, framing, nominated)) kept[name] = headers[name]
  }
  return kept
}

function dropped (name: string, descriptorHeader: string, framing: boolean, nominated: ReadonlySet<string> | null): boolean {
  const length = name.length
  return (length === descriptorHeader.length && isDescriptorHeaderName(name, descriptorHeader)) ||
    isHopByHop(name, length, framing) ||
    (nominated !== null && nominated.has(name.toLowerCase()))
}

/** The header names a Connection value nominates, or null for none. */
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
 * Proxy-Connection that some clients still send, and Expect on requests; switched on length so
 * most names cost one test.
 */
function isHopByHop (name: string, length: number, framing: boolean): boolean {
  // Names from Node and undici are lower-case already; others (tests, hand-built maps) may not be.
  switch (length) {
    case 2: return name === 'te'
    // Expect (requests only): Node already answered 100-continue to the client; forwarded, undici
    // refuses the request outright.
    case 6: return !framing && name === 'expect'
    case 7: return name === 'trailer' || name === 'upgrade'
    case 10: return name === 'connection' || name === 'keep-alive'
    case 16: return name === 'proxy-connection'
    case 17: return framing && name === 'transfer-encoding'
    case 19: return name === 'proxy-authorization'
    default: return false
  }
}
