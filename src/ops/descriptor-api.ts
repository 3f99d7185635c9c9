/**
 * The ops descriptor API: descriptors for code outside a request (console, rake tasks, jobs,
 * migrations) and the tenant list to loop over. Ops listener only, and only with bearer tokens
 * configured (ops.descriptorApi.tokens); docs/operations.md, "Descriptors outside a request".
 *
 *   GET /v1/tenants/:slug/descriptor              → { tenant, state, host, descriptor, expiresAt }
 *   GET /v1/tenants?state=&after=&limit=          → { tenants: [{ slug, state, host }], next }
 *
 * A descriptor issued here is the one a request to the tenant's primary domain would carry now
 * (same cache, keys, claims and lifetime), for every state: the JSON says the state, and a
 * migration has to reach tenants in maintenance.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify'
import type { Logger } from 'pino'
import type { DescriptorCache } from '../descriptor/sign.js'
import type { ErrorCode } from '../errors.js'
import { sendError } from '../proxy/error-reply.js'
import type { ProxyState } from '../state.js'
import { primaryHostOf, type RegistryIndex } from '../registry/index.js'
import { isSlug, TENANT_STATES, type TenantState } from '../registry/names.js'
import { lowerBound } from '../registry/slug-order.js'
import { FailureLimiter } from './failure-limiter.js'
import type { OpsApiEndpoint, OpsApiResult, ProxyMetrics } from './metrics.js'

export const DESCRIPTOR_PATH = '/v1/tenants/:slug/descriptor'
export const TENANTS_PATH = '/v1/tenants'

/** Page size of the tenant list: default and largest. */
export const DEFAULT_LIMIT = 500
export const MAX_LIMIT = 1_000
/**
 * Slugs one page looks at, at most. Without a state filter a page looks at `limit` slugs; with
 * one, a rare state would otherwise make a page walk the whole registry (about 200 ms of the
 * event loop at 1,000,000 tenants). A page that stops here holds fewer tenants than `limit`,
 * possibly none, and `next` still names where to continue.
 */
export const MAX_SCAN = 10_000

/** What the API reads. */
export interface DescriptorApiDeps {
  /** Accepted bearer tokens; empty disables the API. */
  readonly tokens: readonly string[]
  readonly state: ProxyState
  readonly descriptors: DescriptorCache
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  /** Retry-After of the 503 before the registry is loaded. Seconds. */
  readonly retryAfterS: number
  /** Refused-token budget per peer (tests inject one with a clock). */
  readonly limiter?: FailureLimiter
}

/** A configured token as compared: its SHA-256 and the fingerprint logs name it by. */
interface KnownToken { readonly digest: Buffer, readonly fingerprint: string }

/** RFC 6750 section 2.1: `Bearer` (any case, RFC 9110 section 11.1), spaces, b64token. */
const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*) *$/i

type Check = { ok: true, fingerprint: string } | { ok: false, why: string }

/** Adds the API's routes to the ops app. */
export function registerDescriptorApi (app: FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, Logger>, deps: DescriptorApiDeps): void {
  const log = deps.logger.child({ component: 'ops-api' })
  // Digests of equal length, compared in constant time: neither a token's length nor how much of
  // it matched shows in the timing. Fingerprints (8 hex digits of the digest) let logs say which
  // token a caller used without the token.
  const known: KnownToken[] = deps.tokens.map((t) => {
    const digest = sha256(t)
    return { digest, fingerprint: digest.toString('hex').slice(0, 8) }
  })
  const limiter = deps.limiter ?? new FailureLimiter()
  const count = (endpoint: OpsApiEndpoint, result: OpsApiResult): void => { deps.metrics.opsApiRequests.labels(endpoint, result).inc() }

  const check = (authorization: string | undefined): Check => {
    if (authorization === undefined || authorization === '') return { ok: false, why: 'no Authorization header' }
    const m = BEARER.exec(authorization)
    if (m === null) return { ok: false, why: 'Authorization is not a Bearer token' }
    const digest = sha256(m[1] as string)
    let match: KnownToken | null = null
    // Every configured token is compared, whichever matches.
    for (const k of known) if (timingSafeEqual(digest, k.digest) && match === null) match = k
    return match === null ? { ok: false, why: 'token not accepted' } : { ok: true, fingerprint: match.fingerprint }
  }

  /** The common gate: enabled, peer not over its budget, token accepted. Answers and counts a refusal. */
  const gate = (request: FastifyRequest, reply: FastifyReply, endpoint: OpsApiEndpoint): string | null => {
    if (known.length === 0) {
      count(endpoint, 'disabled')
      sendError(request, reply, 'TENANT_PROXY_ERR_OPS_API_DISABLED')
      return null
    }
    const peer = request.socket.remoteAddress ?? 'unknown'
    const wait = limiter.retryAfterS(peer)
    if (wait > 0) {
      count(endpoint, 'rate_limited')
      sendError(request, reply, 'TENANT_PROXY_ERR_OPS_RATE_LIMITED', { retryAfterS: wait })
      return null
    }
    const result = check(request.headers.authorization)
    if (!result.ok) {
      limiter.fail(peer)
      count(endpoint, 'unauthorized')
      // Never the header or any part of the token: only what was wrong with it.
      log.info({ endpoint, peer, problem: result.why }, 'ops API call refused')
      // RFC 6750 section 3: no error code when no token was sent, invalid_token when one was.
      reply.header('www-authenticate', request.headers.authorization === undefined ? 'Bearer realm="tenant-proxy"' : 'Bearer realm="tenant-proxy", error="invalid_token"')
      sendError(request, reply, 'TENANT_PROXY_ERR_OPS_UNAUTHORIZED', { detail: result.why })
      return null
    }
    return result.fingerprint
  }

  const refuse = (request: FastifyRequest, reply: FastifyReply, endpoint: OpsApiEndpoint, result: OpsApiResult, code: ErrorCode, opts: { detail?: string, retryAfterS?: number } = {}): FastifyReply => {
    count(endpoint, result)
    return sendError(request, reply, code, opts)
  }

  // HEAD would issue (and log) a descriptor only to drop it.
  app.get<{ Params: { slug: string } }>(DESCRIPTOR_PATH, { exposeHeadRoute: false }, async (request, reply) => {
    const fingerprint = gate(request, reply, 'descriptor')
    if (fingerprint === null) return reply
    const index = deps.state.index
    if (index === null) return refuse(request, reply, 'descriptor', 'unavailable', 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', { retryAfterS: deps.retryAfterS })
    const { slug } = request.params
    const route = index.bySlug.get(slug)
    // Echo the slug only when it is one: nothing else a caller sends comes back.
    if (route === undefined) return refuse(request, reply, 'descriptor', 'not_found', 'TENANT_PROXY_ERR_TENANT_NOT_FOUND', { detail: isSlug(slug) ? slug : '(not a slug)' })
    const host = primaryHostOf(index, route)
    if (host === null) return refuse(request, reply, 'descriptor', 'unavailable', 'TENANT_PROXY_ERR_OPS_NO_PRIMARY_DOMAIN', { detail: slug, retryAfterS: deps.retryAfterS })
    const { token, exp } = deps.descriptors.issue(route, host)
    count('descriptor', 'ok')
    log.info({ tenant: route.slug, host, state: route.state, epoch: route.epoch, exp, peer: request.socket.remoteAddress, tokenFingerprint: fingerprint }, 'issued a descriptor outside a request')
    return reply.code(200).header('cache-control', 'no-store').type('application/json; charset=utf-8')
      .send(JSON.stringify({ tenant: route.slug, state: route.state, host, descriptor: token, expiresAt: new Date(exp * 1000).toISOString() }))
  })

  app.get(TENANTS_PATH, { exposeHeadRoute: false }, async (request, reply) => {
    if (gate(request, reply, 'tenants') === null) return reply
    const query = parseListQuery(request.query)
    if (typeof query === 'string') return refuse(request, reply, 'tenants', 'bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: query })
    let index = deps.state.index
    if (index === null) return refuse(request, reply, 'tenants', 'unavailable', 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', { retryAfterS: deps.retryAfterS })
    let slugs = await index.slugOrder.sorted()
    // A full load may have replaced the index while its order was being built: page the current
    // one (twice more at most; the order of a replaced index is still consistent with it).
    for (let tries = 0; tries < 2 && deps.state.index !== null && deps.state.index !== index; tries++) {
      index = deps.state.index
      slugs = await index.slugOrder.sorted()
    }
    const page = pageOfTenants(index, slugs, query)
    count('tenants', 'ok')
    return reply.code(200).header('cache-control', 'no-store').type('application/json; charset=utf-8').send(JSON.stringify(page))
  })
}

/** A parsed list query. */
export interface ListQuery { readonly state: TenantState | null, readonly after: string | null, readonly limit: number }

/** One page of the tenant list. */
export interface TenantPage {
  tenants: Array<{ slug: string, state: TenantState, host: string | null }>
  /** The last slug looked at (pass it as `after`), or null after the last slug. */
  next: string | null
}

/**
 * The tenants after `query.after` in slug order: a binary search in the index's sorted slugs
 * (`slugs`, from index.slugOrder), then at most `limit` tenants from at most MAX_SCAN slugs.
 * Costs O(log n + scanned), whatever the registry size.
 */
export function pageOfTenants (index: RegistryIndex, slugs: readonly string[], query: ListQuery): TenantPage {
  let i = query.after === null ? 0 : lowerBound(slugs, query.after)
  if (query.after !== null && slugs[i] === query.after) i++
  const end = Math.min(slugs.length, i + MAX_SCAN)
  const tenants: TenantPage['tenants'] = []
  let last: string | null = null
  for (; i < end && tenants.length < query.limit; i++) {
    const slug = slugs[i] as string
    last = slug
    const route = index.bySlug.get(slug)
    if (route === undefined || (query.state !== null && route.state !== query.state)) continue
    tenants.push({ slug, state: route.state, host: primaryHostOf(index, route) })
  }
  return { tenants, next: i < slugs.length ? last : null }
}

/** The list's query, or what is wrong with it. Unknown parameters are refused, so a typo is not a silent "everything". */
export function parseListQuery (raw: unknown): ListQuery | string {
  const q = (raw ?? {}) as Record<string, unknown>
  for (const [name, value] of Object.entries(q)) {
    if (name !== 'state' && name !== 'after' && name !== 'limit') return `unknown query parameter ${JSON.stringify(name.slice(0, 40))} (state, after, limit)`
    if (typeof value !== 'string') return `query parameter ${name} given more than once`
  }
  const { state, after, limit } = q as { state?: string, after?: string, limit?: string }
  if (state !== undefined && !(TENANT_STATES as readonly string[]).includes(state)) return `state must be one of ${TENANT_STATES.join(', ')}`
  if (after !== undefined && !isSlug(after)) return 'after must be a tenant slug (the previous page\'s next)'
  let n = DEFAULT_LIMIT
  if (limit !== undefined) {
    n = /^[0-9]{1,4}$/.test(limit) ? Number(limit) : NaN
    if (!(n >= 1 && n <= MAX_LIMIT)) return `limit must be an integer from 1 to ${MAX_LIMIT}`
  }
  return { state: (state ?? null) as TenantState | null, after: after ?? null, limit: n }
}

function sha256 (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}
