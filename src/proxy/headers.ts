/**
 * Pure header rules of the data path: what is stripped from a client's request before anything
 * is added, and which forwarding headers the proxy sets.
 */

/** Header map as Node and undici use it: lower-case names. */
export type HeaderMap = Record<string, string | string[] | number | undefined>

/**
 * Hop-by-hop headers (RFC 9110 section 7.6.1) that never cross a proxy, plus the legacy
 * Proxy-Connection that some clients still send.
 */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'upgrade']

/** True when `name` would be read as the descriptor header by some server or framework. */
export function isDescriptorHeaderName (name: string, descriptorHeader: string): boolean {
  // Rack, CGI and many frameworks map '_' to '-' (or the reverse) and ignore case, so
  // X_Tenant_Descriptor would reach a Rails app as HTTP_X_TENANT_DESCRIPTOR: strip every spelling.
  if (name.length !== descriptorHeader.length) return false
  return name.toLowerCase().replaceAll('_', '-') === descriptorHeader
}

/**
 * Removes, in place, every header a client must not control: the ones nominated in Connection
 * (processed first, so a client cannot nominate headers the proxy adds afterwards, RFC 9110
 * section 7.6.1), hop-by-hop headers, and every spelling of the descriptor header.
 */
export function scrubInbound (headers: HeaderMap, descriptorHeader: string): void {
  dropHopByHop(headers)
  dropDescriptor(headers, descriptorHeader)
}

/**
 * Cleans an upstream response for the client: hop-by-hop headers describe the proxy-upstream
 * connection only (RFC 9110 section 7.6.1; copying `Connection: keep-alive` would override a
 * client's `Connection: close`), Node frames the body itself, and the descriptor is never echoed.
 */
export function scrubOutbound (headers: HeaderMap, descriptorHeader: string): HeaderMap {
  dropHopByHop(headers)
  if (headers['transfer-encoding'] !== undefined) delete headers['transfer-encoding']
  dropDescriptor(headers, descriptorHeader)
  return headers
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

function dropHopByHop (headers: HeaderMap): void {
  const connection = headers.connection
  // The common values nominate nothing beyond the hop-by-hop list below: skip the parsing.
  if (connection !== undefined && connection !== 'keep-alive' && connection !== 'close') {
    for (const value of Array.isArray(connection) ? connection : [String(connection)]) {
      for (const token of value.split(',')) {
        const name = token.trim().toLowerCase()
        if (name !== '') delete headers[name]
      }
    }
  }
  // Delete only what is there: deleting a property turns the object into a slow dictionary.
  for (const name of HOP_BY_HOP) if (headers[name] !== undefined) delete headers[name]
}

function dropDescriptor (headers: HeaderMap, descriptorHeader: string): void {
  for (const name of Object.keys(headers)) {
    if (isDescriptorHeaderName(name, descriptorHeader)) delete headers[name]
  }
}
