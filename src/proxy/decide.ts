/**
 * The routing decision, as a pure function of the request's facts and the registry view: which
 * tenant (or pass-through) a request is for and which upstream pool serves it, or why the proxy
 * answers it itself. No I/O, no request object: table-tested in test/decide.test.ts.
 */
import type { ErrorCode } from '../errors.js'
import type { Outcome } from '../ops/metrics.js'
import type { Route, RegistryIndex } from '../registry/index.js'
import { canonicalHost } from '../routing/host.js'
import type { Resolver } from '../routing/resolve.js'
import type { RequestFacts } from './request-target.js'

/** The registry as routing sees it (ProxyState's fields). */
export interface RegistryView {
  readonly index: RegistryIndex | null
  /** The index is known current; when false a miss may be a tenant added since (503, not 404). */
  readonly synced: boolean
}

/** What decide() needs besides the request: built once from the configuration. */
export interface DecideOptions<Pool> {
  readonly resolver: Resolver
  /** The pool of a tenant (null: the default pool); undefined when upstream.pools lacks it. */
  readonly pool: (name: string | null) => Pool | undefined
  readonly maintenanceRetryAfterS: number
  readonly unavailableRetryAfterS: number
}

/** The proxy answers the request itself. */
export interface Refusal {
  readonly kind: 'refuse'
  readonly outcome: Outcome
  readonly code: ErrorCode
  readonly detail?: string
  readonly retryAfterS?: number
  /** The host for the access log: canonical when it was valid, else what the client sent (cut). */
  readonly host: string
  readonly tenant: string | null
}

/** The request goes upstream. */
export interface Forward<Pool> {
  readonly kind: 'forward'
  readonly outcome: 'routed' | 'passthrough'
  /** The canonical host (the descriptor's `host` claim). */
  readonly host: string
  /** The tenant; null for a pass-through host (no descriptor). */
  readonly route: Route | null
  readonly pool: Pool
}

/**
 * The tenant is paused (`tenants pause`, `tenants move`): the request waits in held-requests.ts
 * until the tenant changes, and is then decided again.
 */
export interface Hold {
  readonly kind: 'hold'
  readonly outcome: 'paused'
  readonly host: string
  readonly route: Route
  /** How long the request may wait, ms (the pause's timeout). */
  readonly holdMs: number
}

export type Decision<Pool> = Refusal | Forward<Pool> | Hold

/** Decides for one request (see the module comment). */
export function decide<Pool> (facts: RequestFacts, view: RegistryView, o: DecideOptions<Pool>): Decision<Pool> {
  const raw = facts.host
  if (raw === undefined || raw === '') return refusal('bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', '', null, { detail: 'missing Host header' })
  if (facts.duplicateHost) return refusal('bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', raw.slice(0, 255), null, { detail: 'more than one Host header' })
  const canonical = canonicalHost(raw)
  if (!canonical.ok) return refusal('bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', raw.slice(0, 255), null, { detail: `invalid Host (${canonical.reason})` })
  const host = canonical.host
  if (facts.targetProblem !== null) return refusal('bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', host, null, { detail: facts.targetProblem })
  const index = view.index
  if (index === null) return refusal('registry_unavailable', 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', host, null, { retryAfterS: 5 })

  const found = o.resolver.resolve(index, host)
  if (found.kind === 'unknown') {
    // Out of sync with the registry, the proxy cannot tell "unknown" from "added since".
    return view.synced
      ? refusal('unknown_host', 'TENANT_PROXY_ERR_UNKNOWN_HOST', host, null)
      : refusal('registry_unavailable', 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', host, null, { retryAfterS: o.unavailableRetryAfterS })
  }
  if (found.kind === 'passthrough') {
    const pool = o.pool(null)
    if (pool === undefined) return refusal('passthrough', 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN', host, null)
    return { kind: 'forward', outcome: 'passthrough', host, route: null, pool }
  }
  const route = found.route
  if (route.state === 'suspended') return refusal('suspended', 'TENANT_PROXY_ERR_TENANT_SUSPENDED', host, route.slug)
  if (route.state === 'maintenance') return refusal('maintenance', 'TENANT_PROXY_ERR_TENANT_MAINTENANCE', host, route.slug, { retryAfterS: o.maintenanceRetryAfterS })
  // After the states: a suspended or maintenance answer needs no wait, paused or not.
  if (route.holdMs !== null) return { kind: 'hold', outcome: 'paused', host, route, holdMs: route.holdMs }
  const pool = o.pool(route.upstream)
  if (pool === undefined) return refusal('routed', 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN', host, route.slug)
  return { kind: 'forward', outcome: 'routed', host, route, pool }
}

function refusal (outcome: Outcome, code: ErrorCode, host: string, tenant: string | null, extra: { detail?: string, retryAfterS?: number } = {}): Refusal {
  return { kind: 'refuse', outcome, code, host, tenant, ...extra }
}
