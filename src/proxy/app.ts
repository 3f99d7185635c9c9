/**
 * The traffic listener's Fastify app. One request, top to bottom (serve() below):
 *   1. request-target.ts: an absolute-form target gives the authority (Fastify's rewriteUrl)
 *   2. health.ts: the health path, answered for any Host before anything else (and
 *      tls-ask.ts: the on-demand TLS ask at traffic.tlsAskPath, when set)
 *   3. lifecycle.ts: the request's id, start, and its end counted once (metrics, access log, 499)
 *   4. decide.ts: host → tenant or pass-through → pool, or a refusal answered right here, or
 *      (a paused tenant) held in held-requests.ts until the tenant changes, then decided again
 *   5. websocket.ts for upgrades, forward.ts for everything else: headers filtered and the
 *      descriptor added (headers.ts), streamed through the upstream agent both ways
 * buildTrafficApp() never listens and reads no environment; server.ts owns that.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import type { DescriptorCache } from '../descriptor/sign.js'
import { accessLogWriter } from '../log.js'
import type { ProxyMetrics } from '../ops/metrics.js'
import { Resolver } from '../routing/resolve.js'
import { lazySchemaCompilers } from '../schema-compilers.js'
import { clientErrorHandler } from './client-error.js'
import { decide, type DecideOptions, type Decision, type Forward, type Hold, type Refusal } from './decide.js'
import { sendError } from './error-reply.js'
import { createForwarder, type ForwardDeps } from './forward.js'
import type { HeaderPolicy } from './headers.js'
import { healthHandler } from './health.js'
import type { HeldRequests, HeldTicket } from './held-requests.js'
import { CLIENT_CLOSED, RequestLifecycle, requestIdGenerator, type Flow } from './lifecycle.js'
import { originFormTarget, requestFacts } from './request-target.js'
import type { ProxyState } from '../state.js'
import { tlsAskHandler } from './tls-ask.js'
import { TrustedPeers } from './trusted-peers.js'
import type { UpstreamAgent } from './upstream-agent.js'
import type { UpstreamHealth } from './upstream-health.js'
import type { UpstreamPool, UpstreamPools } from './upstream-pools.js'
import { createWebSockets } from './websocket.js'

/** What the traffic app needs; all built once at start by server.ts. */
export interface TrafficDeps {
  readonly config: Config
  readonly state: ProxyState
  readonly descriptors: DescriptorCache
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  readonly agent: UpstreamAgent
  readonly pools: UpstreamPools
  /** The app's own health, when /up is gated on it (traffic.healthMode upstream). */
  readonly upstreamHealth: UpstreamHealth | null
  /** Where a paused tenant's requests wait; released by the registry sync, drained at shutdown (server.ts). */
  readonly held: HeldRequests
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Closes every proxied WebSocket with `code` (1001 at shutdown, so clients reconnect elsewhere). */
    closeWebSockets: (code: number, reason: string) => number
  }
}

/** The methods forwarded, as @fastify/http-proxy forwarded them; others get 405. */
const METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS']

/** Builds the traffic app (not listening). */
export function buildTrafficApp (deps: TrafficDeps) {
  const { config, state, metrics, logger } = deps
  const trusted = new TrustedPeers(config.traffic.trustedProxies)
  const hostFromForwardedHost = config.traffic.hostFromForwardedHost
  const headerPolicy: HeaderPolicy = {
    descriptorHeader: config.descriptor.header.toLowerCase(),
    allowUnderscores: config.traffic.allowUnderscoresInHeaders,
    // X-Forwarded-Host is believed exactly when the tenant is chosen from it, so that the host
    // the app sees is always the one the descriptor was signed for.
    trustedForwarded: new Set([...config.traffic.trustedForwardedHeaders, ...(hostFromForwardedHost ? ['x-forwarded-host'] : [])])
  }
  const decideOptions: DecideOptions<UpstreamPool> = {
    resolver: new Resolver(config.routing),
    pool: (name) => deps.pools.get(name),
    maintenanceRetryAfterS: config.routing.maintenanceRetryAfterS,
    unavailableRetryAfterS: config.registry.unavailableRetryAfterS
  }
  const pausedRetryAfterS = config.routing.pause.retryAfterS
  const lifecycle = new RequestLifecycle(metrics, accessLogWriter(logger))
  const forwardDeps: ForwardDeps = {
    agent: deps.agent,
    descriptors: deps.descriptors,
    lifecycle,
    metrics,
    logger,
    trusted,
    headerPolicy,
    hostHeader: config.upstream.hostHeader,
    maxBodyBytes: config.upstream.maxBodyBytes,
    draining: () => state.draining
  }
  const forward = createForwarder(forwardDeps)

  const app = Fastify({
    loggerInstance: logger,
    // One access-log line per request (lifecycle.ts); Fastify's two lines per request would double it.
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    // No child logger per request (pino.child on every request is measurable): the lines this
    // app writes carry reqId themselves.
    childLoggerFactory: (parent) => parent,
    genReqId: requestIdGenerator((socket) => trusted.hasPeerOf(socket)),
    rewriteUrl: originFormTarget,
    return503OnClosing: true,
    // Fastify's default logs the refused bytes (err.rawPacket); see client-error.ts.
    clientErrorHandler: clientErrorHandler(logger),
    serverFactory: (handler: (req: IncomingMessage, res: ServerResponse) => void) => createServer({
      maxHeaderSize: config.traffic.maxHeaderBytes,
      headersTimeout: config.traffic.requestHeadersTimeoutMs,
      keepAliveTimeout: config.traffic.keepAliveTimeoutMs,
      // Uploads may be long; undici's body timeout bounds stalled ones on the upstream side.
      requestTimeout: 0
    }, handler),
    routerOptions: { maxParamLength: 2048 },
    schemaController: lazySchemaCompilers
  })
  app.decorateRequest('tp', null as unknown as Flow)
  // Bodies are forwarded as they stream in, never parsed.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

  const websockets = createWebSockets(app, route, forwardDeps)
  app.decorate('closeWebSockets', (code: number, reason: string) => websockets.closeAll(code, reason))

  /** Every HTTP request but the health path: decide, then refuse, hold or forward. */
  function serve (request: FastifyRequest, reply: FastifyReply): void {
    lifecycle.begin(request)
    dispatch(request, reply, decideFor(request))
  }

  function decideFor (request: FastifyRequest): Decision<UpstreamPool> {
    const raw = request.raw
    return decide(requestFacts(raw, request.url, hostFromForwardedHost && trusted.hasPeerOf(raw.socket)), state, decideOptions)
  }

  function dispatch (request: FastifyRequest, reply: FastifyReply, decision: Decision<UpstreamPool>): void {
    const flow = request.tp
    flow.outcome = decision.outcome
    flow.host = decision.host
    if (decision.kind === 'refuse') return refuse(request, reply, decision)
    flow.tenant = decision.route?.slug ?? null
    if (decision.kind === 'hold') return hold(request, reply, decision)
    forward(request, reply, decision)
  }

  /**
   * An upgrade request: started and decided; a refusal is answered here (null). A paused tenant's
   * upgrade is refused with 503 + Retry-After rather than held: the WebSocket proxy cannot wait in
   * its preHandler, and WebSocket clients (Action Cable) reconnect by themselves.
   */
  function route (request: FastifyRequest, reply: FastifyReply): Forward<UpstreamPool> | null {
    const flow = lifecycle.begin(request)
    const decision = decideFor(request)
    flow.outcome = decision.outcome
    flow.host = decision.host
    if (decision.kind === 'refuse') {
      refuse(request, reply, decision)
      return null
    }
    flow.tenant = decision.route?.slug ?? null
    if (decision.kind === 'hold') {
      sendError(request, reply, 'TENANT_PROXY_ERR_TENANT_PAUSED', { detail: 'WebSocket upgrades are not held', retryAfterS: pausedRetryAfterS })
      return null
    }
    return decision
  }

  /**
   * A paused tenant's request waits until the registry changes the tenant, then is decided again
   * (forwarded once resumed, with the new database if it moved); past the pause's timeout, over a
   * cap, or at shutdown it gets 503 + Retry-After. A client that leaves meanwhile is dropped from
   * the queue (one 'close' listener per held request: holds are rare, unlike requests).
   */
  function hold (request: FastifyRequest, reply: FastifyReply, decision: Hold): void {
    const socket = request.raw.socket
    if (socket.destroyed) {
      // The client is gone already (its connection's 'close' may have fired before the request
      // was watched): counted once as 499, nothing held.
      lifecycle.finish(request, CLIENT_CLOSED)
      return
    }
    let ticket: HeldTicket | null = null
    const clientLeft = (): void => { ticket?.cancel() }
    const paused = (detail: string): void => {
      socket.off('close', clientLeft)
      request.tp.outcome = 'paused'
      sendError(request, reply, 'TENANT_PROXY_ERR_TENANT_PAUSED', { detail, retryAfterS: pausedRetryAfterS })
    }
    const held = deps.held.hold(decision.route.slug, decision.holdMs, {
      recheck: () => {
        const next = decideFor(request)
        if (next.kind === 'hold') return { slug: next.route.slug, holdMs: next.holdMs }
        socket.off('close', clientLeft)
        dispatch(request, reply, next)
        return null
      },
      expire: (end) => { paused(end === 'timeout' ? `held ${formatSeconds(decision.holdMs)}, the pause's timeout` : 'the proxy is shutting down') }
    })
    if (held === 'overflow') return paused('too many requests held for paused tenants')
    if (held === 'draining') return paused('the proxy is shutting down')
    ticket = held
    socket.once('close', clientLeft)
  }

  function refuse (request: FastifyRequest, reply: FastifyReply, refusal: Refusal): void {
    request.tp.tenant = refusal.tenant
    if (refusal.code === 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN') {
      logger.error({ reqId: request.id, tenant: refusal.tenant, host: refusal.host }, 'tenant names an upstream pool missing from upstream.pools')
    }
    sendError(request, reply, refusal.code, { detail: refusal.detail, retryAfterS: refusal.retryAfterS })
  }

  const health = healthHandler(state, deps.upstreamHealth)
  app.get(config.traffic.healthPath, async (request, reply) => {
    const flow = lifecycle.begin(request)
    flow.outcome = 'health'
    flow.host = request.headers.host ?? ''
    return await health(request, reply)
  })
  // kamal-proxy's --tls-on-demand-url as a path arrives here with Host = the name it checks.
  if (config.traffic.tlsAskPath !== '') app.get(config.traffic.tlsAskPath, tlsAskHandler(deps))
  app.route({ method: METHODS, url: '/*', handler: serve })
  app.route({ method: METHODS, url: '/', handler: serve })
  app.setNotFoundHandler((request, reply) => {
    lifecycle.begin(request)
    void reply.header('allow', METHODS.join(', '))
    sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { status: 405, detail: `method ${request.method} is not forwarded` })
  })

  // Answers Fastify sent (health, refusals, errors) end here; forwarded answers end in forward.ts.
  app.addHook('onResponse', (request, reply, done) => {
    lifecycle.finish(request, reply.raw.writableFinished ? reply.statusCode : CLIENT_CLOSED)
    done()
  })

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    if (request.tp === null) lifecycle.begin(request)
    const status = err.statusCode ?? 500
    if (status < 500) {
      request.tp.outcome = 'bad_request'
      return sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { status: status >= 400 ? status : 400, detail: err.message })
    }
    logger.error({ reqId: request.id, err }, 'request failed inside the proxy')
    return sendError(request, reply, 'TENANT_PROXY_ERR_INTERNAL')
  })

  return app
}

function formatSeconds (ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`
}
