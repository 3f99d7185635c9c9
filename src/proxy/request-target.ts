/**
 * The facts of a request that routing decides on, read from what the client sent: which host it
 * names, and whether its target is one the proxy forwards. Pure functions over Node's request.
 */
import type { IncomingMessage } from 'node:http'
import { lastListEntry } from './headers.js'

/** Symbol on the raw request: the authority of an absolute-form request target. */
const kAbsoluteAuthority = Symbol('tenant-proxy.absoluteAuthority')
type RawRequest = IncomingMessage & { [kAbsoluteAuthority]?: string }

/** What decide() needs to know about a request. */
export interface RequestFacts {
  /** The host the tenant is chosen from, as sent; undefined or '' when there is none. */
  readonly host: string | undefined
  /** More than one Host field (RFC 9112 section 3.2: answered with 400; Node keeps the first). */
  readonly duplicateHost: boolean
  /** Why the request target cannot be forwarded, or null. */
  readonly targetProblem: string | null
}

/**
 * Fastify's rewriteUrl: keeps origin-form targets, turns an absolute-form target into origin form
 * and remembers its authority, which wins over Host (RFC 9112 section 3.2.2).
 */
export function originFormTarget (req: IncomingMessage): string {
  const url = req.url ?? '/'
  if (url.charCodeAt(0) === 47 /* '/' */) return url
  if (/^https?:\/\//i.test(url)) {
    try {
      const parsed = new URL(url)
      ;(req as RawRequest)[kAbsoluteAuthority] = parsed.host
      return parsed.pathname + parsed.search
    } catch {
      return url
    }
  }
  return url
}

/** The authority of an absolute-form target (see originFormTarget), or undefined. */
export function absoluteAuthority (req: IncomingMessage): string | undefined {
  return (req as RawRequest)[kAbsoluteAuthority]
}

/**
 * The facts of `req` (its URL already in origin form). The host is the absolute-form target's
 * authority, else Host; a trusted hop's X-Forwarded-Host (its last entry, the one that hop wrote)
 * only when `forwardedHostTrusted` (traffic.hostFromForwardedHost and a trusted peer): trusting a
 * hop for the client's address does not make it trusted to choose the tenant.
 */
export function requestFacts (req: IncomingMessage, url: string, forwardedHostTrusted: boolean): RequestFacts {
  let host = absoluteAuthority(req)
  if (host === undefined) {
    const xfh = forwardedHostTrusted ? req.headers['x-forwarded-host'] : undefined
    host = typeof xfh === 'string' && xfh !== '' ? lastListEntry(xfh) : req.headers.host
  }
  return { host, duplicateHost: hasDuplicateHost(req.rawHeaders), targetProblem: targetProblem(url) }
}

function hasDuplicateHost (rawHeaders: readonly string[]): boolean {
  let seen = false
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (seen) return true
      seen = true
    }
  }
  return false
}

/**
 * Targets the proxy refuses with 400 rather than forward: anything but a path, malformed
 * percent-encoding, and
 * dot-dot segments (also percent-encoded or spelt with backslashes, which some servers read as
 * slashes) that would climb above the root in an app that maps paths to files. The same rules
 * @fastify/http-proxy applies (its validateDestination), kept when forwarding moved to undici.
 * The query must decode too (as before), and is forwarded byte for byte, never re-encoded.
 */
export function targetProblem (url: string): string | null {
  // Origin form is all that is forwarded (absolute form was turned into it): not the asterisk
  // form of server-wide OPTIONS, the authority form of CONNECT, nor another scheme's URL.
  if (url.charCodeAt(0) !== 47 /* '/' */) return 'the request target must be a path (or an http:// or https:// URL)'
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  const encoded = url.includes('%')
  // The common case has nothing to decode or normalise.
  if (!encoded && !path.includes('.') && !path.includes('\\')) return path.startsWith('//') ? 'a request target must not start with //' : null
  if (path.startsWith('//') || path.startsWith('/\\')) return 'a request target must not start with //'
  let decoded = path
  if (encoded) {
    try {
      decodeURIComponent(url)
      decoded = decodeURIComponent(path)
    } catch {
      return 'malformed percent-encoding in the request target'
    }
  }
  if (decoded.replaceAll('\\', '/').split('/').includes('..')) return 'a request target must not contain .. segments'
  return null
}
