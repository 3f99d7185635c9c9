/**
 * The on-demand TLS "ask": may the TLS terminator in front get a certificate for this domain?
 * Caddy (`on_demand_tls { ask <url> }`) asks `GET <url>?domain=<name>` and accepts any 2xx;
 * kamal-proxy (`--tls-on-demand-url`) asks `GET <url>?host=<name>` and accepts only 200, either
 * at an absolute URL (the ops listener) or at a path it sends through its own route to the app
 * (the traffic listener, with `Host` set to the name being checked, which is why the name is read
 * from the query and never from `Host`).
 *
 * The answer is routing's own: decide() over the in-memory index, so a domain is allowed exactly
 * when a request for it would be forwarded (an active tenant by exact domain, www. fallback or
 * wildcard slug, or a pass-through host), and no ask ever queries the registry. Whether this
 * proxy knows the tenant's upstream pool is left out of the question (the pool function always
 * answers): the domain is the tenant's either way, a missing pool is this proxy's configuration
 * problem (502 and an error log per request), and refusing the certificate would turn it into TLS
 * handshake failures that hide the cause.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config/load.js'
import { ERRORS, type ErrorCode } from '../errors.js'
import type { ProxyMetrics } from '../ops/metrics.js'
import { canonicalHost } from '../routing/host.js'
import { Resolver, type ResolveOptions } from '../routing/resolve.js'
import { decide, type DecideOptions, type RegistryView } from './decide.js'
import { sendError } from './error-reply.js'

/** Where the ops listener answers the ask; traffic.tlsAskPath is the traffic listener's. */
export const TLS_ASK_PATH = '/.well-known/tenant-proxy/tls-ask'

/** How an ask ended, as counted (tenant_proxy_tls_ask_total{result}). */
export type TlsAskResult = 'allowed' | 'denied' | 'invalid' | 'unavailable'
export const TLS_ASK_RESULTS: readonly TlsAskResult[] = ['allowed', 'denied', 'invalid', 'unavailable']

/** The answer to one ask. */
export interface TlsAskAnswer {
  readonly result: TlsAskResult
  readonly status: number
  /** The canonical domain asked about, or null when the query named none validly. */
  readonly domain: string | null
  /** The catalogue code of a refusal (null when allowed). */
  readonly code: ErrorCode | null
  readonly detail?: string
  readonly retryAfterS?: number
}

/** The query parameters that carry the name: Caddy's and kamal-proxy's. */
const PARAMETERS = ['domain', 'host'] as const

/** decide()'s options for asks: every pool exists (see the module comment). */
export function tlsAskOptions (routing: ResolveOptions, unavailableRetryAfterS: number): DecideOptions<true> {
  return { resolver: new Resolver(routing), pool: () => true, maintenanceRetryAfterS: 0, unavailableRetryAfterS }
}

/** Answers the ask in request target `url` (path and query) from `view`; pure. */
export function answerTlsAsk (url: string, view: RegistryView, options: DecideOptions<true>): TlsAskAnswer {
  const q = url.indexOf('?')
  const params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1))
  const given = PARAMETERS.flatMap((name) => params.getAll(name))
  const raw = given[0]
  if (given.length !== 1 || raw === undefined) {
    return invalid(null, `give the domain in exactly one query parameter, domain (Caddy) or host (kamal-proxy); got ${given.length}`)
  }
  const canonical = canonicalHost(raw)
  if (!canonical.ok) return invalid(null, `invalid domain (${canonical.reason})`)
  const domain = canonical.host
  const decision = decide({ host: domain, duplicateHost: false, targetProblem: null }, view, options)
  // A paused tenant (tenants pause, a move's cut-over) still owns its domains: its certificate too.
  if (decision.kind === 'forward' || decision.kind === 'hold') return { result: 'allowed', status: 200, domain, code: null }
  const { code, retryAfterS } = decision
  switch (decision.outcome) {
    // Not loaded yet, or out of sync with the registry and the name is not in the last known
    // index: it may have been added since, so this is "ask again", not "no".
    case 'registry_unavailable': return { result: 'unavailable', status: ERRORS[code].status, domain, code, retryAfterS }
    case 'bad_request': return invalid(domain, decision.detail ?? 'invalid domain')
    // Unknown, suspended, maintenance, and any refusal added later: no certificate. A 4xx even
    // where traffic answers 503 (maintenance), because the answer to the ask is final.
    default: return { result: 'denied', status: ERRORS[code].status < 500 ? ERRORS[code].status : 403, domain, code }
  }
}

function invalid (domain: string | null, detail: string): TlsAskAnswer {
  return { result: 'invalid', status: 400, domain, code: 'TENANT_PROXY_ERR_BAD_REQUEST', detail }
}

/** What the handler reads; both listeners share the state and the metrics. */
export interface TlsAskDeps {
  readonly config: Config
  readonly state: RegistryView
  readonly metrics: ProxyMetrics
}

export type TlsAskHandler = (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply>

/** The route handler for either listener: the answer, counted, logged at debug (info when allowed). */
export function tlsAskHandler (deps: TlsAskDeps): TlsAskHandler {
  const { state, metrics } = deps
  const options = tlsAskOptions(deps.config.routing, deps.config.registry.unavailableRetryAfterS)
  return async (request, reply) => {
    const answer = answerTlsAsk(request.url, state, options)
    metrics.observeTlsAsk(answer.result)
    // Denials can be frequent (every unknown name a client sends as SNI), allowances come once
    // per certificate. The raw query is never logged, only what was made of it.
    request.log[answer.result === 'allowed' ? 'info' : 'debug']({ reqId: request.id, tlsAsk: answer.result, domain: answer.domain, status: answer.status, code: answer.code }, 'on-demand TLS ask')
    if (answer.code !== null) return sendError(request, reply, answer.code, { status: answer.status, detail: answer.detail, retryAfterS: answer.retryAfterS })
    return reply.code(200).header('cache-control', 'no-store').type('application/json; charset=utf-8')
      .send(`${JSON.stringify({ allowed: true, domain: answer.domain })}\n`)
  }
}
