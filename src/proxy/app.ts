/**
 * The traffic listener's Fastify app. One request, top to bottom:
 *   1. rewriteUrl: an absolute-form target (RFC 9112 section 3.2.2) gives the authority
 *   2. health path → answered for any Host, before tenant resolution (routes below)
 *   3. preHandler: canonical host → route decision from the in-memory index → 4xx/5xx or continue
 *   4. rewriteRequestHeaders: scrub client headers, set forwarding headers, inject the descriptor
 *   5. @fastify/http-proxy (undici) streams the request and response both ways
 *   6. onResponse: one log line and the metrics
 * buildTrafficApp() never listens and reads no environment; server.ts owns that.
 */
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { Transform, type TransformCallback } from 'node:stream'
import httpProxy from '@fastify/http-proxy'
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import type { DescriptorCache } from '../descriptor/sign.js'
import { tpError, type ErrorCode } from '../errors.js'
import type { Outcome, ProxyMetrics, UpstreamErrorKind } from '../ops/metrics.js'
import { accessLogWriter } from '../log.js'
import { canonicalHost } from '../routing/host.js'
import { lazySchemaCompilers } from '../schema-compilers.js'
import { Resolver } from '../routing/resolve.js'
import { clientErrorHandler } from './client-error.js'
import { sendError } from './error-reply.js'
import { isWellFormedRequestId, lastListEntry, peerAddress, scrubOutbound, upstreamRequestHeaders, type HeaderMap, type HeaderPolicy } from './headers.js'
import type { ProxyState } from './state.js'
import { TrustedPeers } from './trusted-peers.js'
import { cancelUpstream, kUpstreamHook, type UpstreamAgent, type UpstreamHook } from './upstream-agent.js'
import type { UpstreamHealth } from './upstream-health.js'
import type { UpstreamPools } from './upstream-pools.js'

/** What the traffic app needs; all built once at start by server.ts. */
export interface TrafficDeps {
  readonly config: Config
  readonly state: ProxyState
  readonly descriptors: DescriptorCache
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  readonly dispatcher: UpstreamAgent
  readonly pools: UpstreamPools
  /** The app's own health, when /up is gated on it (traffic.healthMode upstream). */
  readonly upstreamHealth: UpstreamHealth | null
}

/** Per-request data the hooks share. */
interface Flow {
  outcome: Outcome
  host: string
  tenant: string | null
  descriptor: string | null
  origin: string
  start: number
  upstreamStart: number
  upstreamMs: number | null
  upstream: UpstreamHook
  done: boolean
  /** A WebSocket upgrade handed to the WebSocket proxy (logged with status 101 when it closes). */
  upgrade: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    tp: Flow
  }
  interface FastifyInstance {
    /** Closes every proxied WebSocket with `code` (1001 at shutdown, so clients reconnect elsewhere). */
    closeWebSockets: (code: number, reason: string) => number
  }
}

/** The WebSocket server @fastify/http-proxy keeps (reached through its reply decorator). */
interface WsServer { clients: Set<{ close (code: number, reason: string): void }> }

/**
 * Socket properties: the request the connection carries, whether its 'close' listener is on, and
 * whether the peer is a trusted proxy (decided once per connection: the peer cannot change).
 */
const kCurrent = Symbol('tenant-proxy.currentRequest')
const kWatched = Symbol('tenant-proxy.watched')
const kTrusted = Symbol('tenant-proxy.trusted')
type WatchedSocket = Socket & { [kCurrent]?: FastifyRequest | undefined, [kWatched]?: true, [kTrusted]?: boolean }

/**
 * Request ids: a random per-process prefix and a counter. Unique across processes and restarts
 * (64 random bits), cheaper than a UUID per request, and sortable within a process.
 */
const requestIds = {
  prefix: `${randomBytes(8).toString('hex')}-`,
  counter: 0,
  next (): string {
    return this.prefix + (++this.counter).toString(36)
  }
}

/** nginx's convention, understood by every log tool: the client closed the connection before the answer. */
const CLIENT_CLOSED = 499

/** Symbol on the raw request: the authority of an absolute-form request target. */
const kAbsoluteAuthority = Symbol('tenant-proxy.absoluteAuthority')
type RawWithAuthority = IncomingMessage & { [kAbsoluteAuthority]?: string }

/** Builds the traffic app (not listening). */
export function buildTrafficApp (deps: TrafficDeps) {
  const { config, state, descriptors, metrics, logger } = deps
  const headerName = config.descriptor.header.toLowerCase()
  const resolver = new Resolver(config.routing)
  const trusted = new TrustedPeers(config.traffic.trustedProxies)
  const isTrusted = (socket: WatchedSocket): boolean => socket[kTrusted] ??= trusted.has(socket.remoteAddress)
  const headerPolicy: HeaderPolicy = {
    descriptorHeader: headerName,
    allowUnderscores: config.traffic.allowUnderscoresInHeaders,
    // X-Forwarded-Host is believed exactly when the tenant is chosen from it, so that the host
    // the app sees is always the one the descriptor was signed for.
    trustedForwarded: new Set([...config.traffic.trustedForwardedHeaders, ...(config.traffic.hostFromForwardedHost ? ['x-forwarded-host'] : [])])
  }
  const hostFromForwardedHost = config.traffic.hostFromForwardedHost
  const pools = deps.pools
  const maxBodyBytes = config.upstream.maxBodyBytes
  let wsServer: WsServer | null = null
  const hostHeader = config.upstream.hostHeader
  const retryAfter = config.routing.maintenanceRetryAfterS
  const unavailableRetryAfter = config.registry.unavailableRetryAfterS
  const accessLog = accessLogWriter(logger)

  const app = Fastify({
    loggerInstance: logger,
    // Our own onResponse hook logs one line per request; Fastify's two lines per request would double it.
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    // No child logger per request (pino.child on every request is measurable): the lines this
    // app writes carry reqId themselves.
    childLoggerFactory: (parent) => parent,
    genReqId: (req) => {
      const inbound = req.headers['x-request-id']
      return isTrusted(req.socket) && isWellFormedRequestId(inbound) ? inbound : requestIds.next()
    },
    rewriteUrl: (req) => absoluteFormPath(req as RawWithAuthority),
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

  app.addHook('onRequest', (request, reply, done) => {
    request.tp = { outcome: 'bad_request', host: '', tenant: null, descriptor: null, origin: '', start: performance.now(), upstreamStart: 0, upstreamMs: null, upstream: { handler: null }, done: false, upgrade: false }
    metrics.inFlight++
    // A client that leaves mid-request closes its connection (HTTP/1.1 has no other way), and no
    // Fastify hook runs then: one 'close' listener per connection, not one per request, catches it
    // for whichever request the connection is carrying.
    const socket: WatchedSocket = request.raw.socket
    socket[kCurrent] = request
    if (socket[kWatched] === undefined) {
      socket[kWatched] = true
      socket.once('close', () => { connectionClosed(socket) })
    }
    done()
  })

  function connectionClosed (socket: WatchedSocket): void {
    const request = socket[kCurrent]
    socket[kCurrent] = undefined
    if (request === undefined || request.tp.done) return
    if (request.tp.upgrade) {
      finish(request, 101)
      return
    }
    // The client left before the answer was complete. If the upstream has not answered yet, stop
    // its work too (once the answer streams, Fastify's stream teardown cancels it).
    if (request.tp.upstreamMs === null) cancelUpstream(request.tp.upstream)
    finish(request, CLIENT_CLOSED)
  }
  app.addHook('onResponse', (request, reply, done) => {
    finish(request, reply.raw.writableFinished ? reply.statusCode : CLIENT_CLOSED)
    done()
  })

  function finish (request: FastifyRequest, status: number): void {
    const tp = request.tp
    if (tp === null || tp.done) return
    tp.done = true
    // Let go of the finished request now: held until the connection's next request, it would
    // outlive young-generation collections and be promoted, for nothing.
    // (Node unsets a request's socket once the connection is gone.)
    const socket = request.raw.socket as WatchedSocket | null
    if (socket !== null && socket[kCurrent] === request) socket[kCurrent] = undefined
    const elapsedMs = performance.now() - tp.start
    metrics.inFlight--
    metrics.observeRequest(tp.outcome, status, elapsedMs / 1000)
    accessLog?.({ reqId: request.id, host: tp.host, tenant: tp.tenant, outcome: tp.outcome, status, ms: round(elapsedMs), upstreamMs: tp.upstreamMs === null ? null : round(tp.upstreamMs) })
  }

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const status = err.statusCode ?? 500
    if (status < 500) {
      request.tp.outcome = 'bad_request'
      return sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { status: status >= 400 ? status : 400, detail: err.message })
    }
    request.log.error({ reqId: request.id, err }, 'request failed inside the proxy')
    return sendError(request, reply, 'TENANT_PROXY_ERR_INTERNAL')
  })

  // 2. Health: for any Host, never resolving a tenant, never touching a tenant database.
  const upstreamHealth = deps.upstreamHealth
  const health = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    request.tp.outcome = 'health'
    request.tp.host = request.headers.host ?? ''
    let status = state.draining ? 'draining' : state.index === null ? 'starting' : 'ok'
    // In-image topology: the load balancer checks the proxy in place of the app, so the app's own
    // health (cached briefly, so checks do not multiply) is part of the answer.
    if (status === 'ok' && upstreamHealth !== null && !await upstreamHealth.healthy()) status = 'upstream_unhealthy'
    if (state.draining) reply.header('connection', 'close')
    return reply.code(status === 'ok' ? 200 : 503).header('cache-control', 'no-store').type('application/json; charset=utf-8')
      .send(`{"status":"${status}"}\n`)
  }
  app.get(config.traffic.healthPath, health)

  // 3-5. Everything else is tenant traffic.
  void app.register(httpProxy, {
    upstream: '',
    prefix: '/',
    disableRequestLogging: true,
    undici: deps.dispatcher,
    websocket: true,
    // http-proxy reads rewriteRequestHeaders from wsClientOptions although its types omit it.
    wsClientOptions: {
      rewriteRequestHeaders: (_headers: unknown, request: unknown) => websocketHeaders(request as FastifyRequest) as Record<string, string>
    } as Record<string, unknown>,
    preHandler: (request, reply, done) => {
      route(request, reply)
      if (!reply.sent) {
        if (request.raw.headers.upgrade !== undefined) prepareUpgrade(request, reply)
        else if (maxBodyBytes > 0) limitBody(request, reply)
      }
      done()
    },
    replyOptions: {
      getUpstream: (request) => request.tp.origin,
      rewriteRequestHeaders: (request, headers) => upstreamHeaders(request as FastifyRequest, headers as HeaderMap) as IncomingHttpHeaders,
      rewriteHeaders: (headers, request) => {
        const cleaned = scrubOutbound(headers, headerName)
        if (request !== undefined) cleaned['x-request-id'] = request.id
        // Draining: make clients open their next connection elsewhere.
        if (state.draining) cleaned.connection = 'close'
        return cleaned as IncomingHttpHeaders
      },
      onResponse: (request, reply, res) => {
        request.tp.upstreamMs = performance.now() - request.tp.upstreamStart
        metrics.observeUpstream(request.tp.upstreamMs / 1000)
        void reply.send((res as unknown as { stream: NodeJS.ReadableStream }).stream)
      },
      onError: (reply, { error }) => {
        upstreamFailed(reply.request as FastifyRequest, reply as FastifyReply, error)
      }
    }
  })

  /** Step 3: decide, or answer right here. */
  function route (request: FastifyRequest, reply: FastifyReply): void {
    const tp = request.tp
    const raw = request.raw as RawWithAuthority
    // The tenant comes from Host, or from an absolute-form target's authority, which wins over Host
    // (RFC 9112 section 3.2.2). Never from X-Forwarded-Host unless the operator opted in
    // (traffic.hostFromForwardedHost), and then only a trusted hop's, its last entry (the one that
    // hop wrote): trusting a hop for the client address does not make it trusted to choose the tenant.
    const xfh = hostFromForwardedHost && isTrusted(raw.socket) ? request.headers['x-forwarded-host'] : undefined
    const hostValue = raw[kAbsoluteAuthority] ?? (typeof xfh === 'string' && xfh !== '' ? lastListEntry(xfh) : request.headers.host)
    if (hostValue === undefined || hostValue === '') {
      refuse(request, reply, 'bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: 'missing Host header' })
      return
    }
    if (hasDuplicateHost(raw.rawHeaders)) {
      // RFC 9112 section 3.2: more than one Host field must be answered with 400 (Node keeps the first).
      refuse(request, reply, 'bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: 'more than one Host header' })
      return
    }
    const canonical = canonicalHost(hostValue)
    if (!canonical.ok) {
      tp.host = hostValue.slice(0, 255)
      refuse(request, reply, 'bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: `invalid Host (${canonical.reason})` })
      return
    }
    tp.host = canonical.host
    if (!isDecodablePath(request.url)) {
      refuse(request, reply, 'bad_request', 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: 'malformed percent-encoding in the request target' })
      return
    }
    const index = state.index
    if (index === null) {
      refuse(request, reply, 'registry_unavailable', 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', { retryAfterS: 5 })
      return
    }
    const decision = resolver.resolve(index, canonical.host)
    if (decision.kind === 'unknown') {
      // Out of sync with the registry, the proxy cannot tell "unknown" from "added since".
      if (state.synced) refuse(request, reply, 'unknown_host', 'TENANT_PROXY_ERR_UNKNOWN_HOST')
      else refuse(request, reply, 'registry_unavailable', 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', { retryAfterS: unavailableRetryAfter })
      return
    }
    if (decision.kind === 'passthrough') {
      tp.outcome = 'passthrough'
      tp.origin = pools.default.virtualOrigin
      return
    }
    const r = decision.route
    tp.tenant = r.slug
    if (r.state === 'suspended') {
      refuse(request, reply, 'suspended', 'TENANT_PROXY_ERR_TENANT_SUSPENDED')
      return
    }
    if (r.state === 'maintenance') {
      refuse(request, reply, 'maintenance', 'TENANT_PROXY_ERR_TENANT_MAINTENANCE', { retryAfterS: retryAfter })
      return
    }
    const pool = pools.get(r.upstream)
    if (pool === undefined) {
      request.log.error({ reqId: request.id, tenant: r.slug, upstream: r.upstream }, 'tenant names an upstream pool missing from upstream.pools')
      refuse(request, reply, 'routed', 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN')
      return
    }
    tp.outcome = 'routed'
    tp.origin = pool.virtualOrigin
    tp.descriptor = descriptors.get(r, canonical.host)
  }

  /** Step 4: the headers the upstream sees. */
  function upstreamHeaders (request: FastifyRequest, inbound: HeaderMap): HeaderMap {
    const tp = request.tp
    const raw = request.raw as RawWithAuthority
    const headers = upstreamRequestHeaders(inbound, headerPolicy, {
      peer: peerAddress(raw.socket.remoteAddress),
      trusted: isTrusted(raw.socket),
      // RFC 9112 section 3.2.2: with an absolute-form target the received Host is replaced by the
      // target's authority, the one the request was routed (and its descriptor signed) for.
      host: raw[kAbsoluteAuthority] ?? request.headers.host ?? tp.host,
      hostHeader,
      requestId: request.id
    })
    if (tp.descriptor !== null) headers[headerName] = tp.descriptor
    ;(headers as Record<symbol, unknown>)[kUpstreamHook] = tp.upstream
    tp.upstreamStart = performance.now()
    return headers
  }

  /**
   * A WebSocket upgrade that resolved to a tenant (or pass-through): the WebSocket proxy dials a
   * real address (it does not go through the agent), and the request is logged when it closes.
   */
  function prepareUpgrade (request: FastifyRequest, reply: FastifyReply): void {
    const tp = request.tp
    const pool = pools.byVirtualOrigin(tp.origin)
    const address = pool?.pick()
    if (address === undefined) {
      refuse(request, reply, tp.outcome, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT')
      return
    }
    tp.origin = address.origin
    tp.upgrade = true
    wsServer ??= (reply as unknown as { wsProxy?: { wss?: WsServer } }).wsProxy?.wss ?? null
  }

  /** Headers of the upstream WebSocket handshake: the client's, filtered, plus ours. */
  function websocketHeaders (request: FastifyRequest): HeaderMap {
    const headers = upstreamHeaders(request, request.headers)
    // The WebSocket client writes its own handshake (key, version, extensions, subprotocols).
    // (A fresh object of ours: deleting from it costs nobody else.)
    for (const name of ['sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'content-length', 'transfer-encoding']) delete headers[name]
    return headers
  }

  /**
   * Enforces upstream.maxBodyBytes: a declared Content-Length over it is refused at once; a
   * chunked body is counted as it streams and cut off past the limit (the 413 is then sent if
   * the app has not answered yet).
   */
  function limitBody (request: FastifyRequest, reply: FastifyReply): void {
    const declared = request.headers['content-length']
    if (declared !== undefined) {
      if (Number(declared) > maxBodyBytes) refuse(request, reply, request.tp.outcome, 'TENANT_PROXY_ERR_BODY_TOO_LARGE', { detail: `${maxBodyBytes} bytes` })
      return
    }
    const body = request.body as NodeJS.ReadableStream | undefined
    if (body === undefined || body === null || typeof body.pipe !== 'function') return
    request.body = body.pipe(new ByteLimit(maxBodyBytes))
  }

  app.decorate('closeWebSockets', (code: number, reason: string): number => {
    if (wsServer === null) return 0
    let n = 0
    for (const client of wsServer.clients) {
      client.close(code, reason)
      n++
    }
    return n
  })

  function upstreamFailed (request: FastifyRequest, reply: FastifyReply, error: Error & { cause?: unknown }): void {
    if (isBodyTooLarge(error)) {
      if (!reply.sent) sendError(request, reply, 'TENANT_PROXY_ERR_BODY_TOO_LARGE', { detail: `${maxBodyBytes} bytes` })
      return
    }
    const raw = request.raw
    if (!raw.complete && (raw.destroyed || raw.readableAborted)) {
      // The client's body ended before its declared length: its fault, not the app's.
      request.tp.outcome = 'bad_request'
      if (!reply.sent) sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: 'the request body ended before its declared length' })
      return
    }
    const cause = (error.cause ?? error) as { code?: string }
    const kind = upstreamErrorKind(cause.code, (error as { code?: string }).code)
    metrics.observeUpstreamError(kind)
    request.log.warn({ reqId: request.id, tenant: request.tp.tenant, kind, err: tpError('TENANT_PROXY_ERR_UPSTREAM_FAILED', [], error) }, 'upstream request failed')
    if (reply.sent) return
    sendError(request, reply, kind === 'timeout' ? 'TENANT_PROXY_ERR_UPSTREAM_TIMEOUT' : kind === 'connect' ? 'TENANT_PROXY_ERR_UPSTREAM_CONNECT' : 'TENANT_PROXY_ERR_UPSTREAM_FAILED')
  }

  return app
}

const BODY_TOO_LARGE = 'TENANT_PROXY_BODY_TOO_LARGE'

/** Passes bytes through until `limit`, then fails the stream (which aborts the upstream request). */
class ByteLimit extends Transform {
  #seen = 0
  constructor (readonly limit: number) {
    super()
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#seen += chunk.length
    if (this.#seen > this.limit) callback(Object.assign(new Error(`request body over ${this.limit} bytes`), { code: BODY_TOO_LARGE }))
    else callback(null, chunk)
  }
}

function isBodyTooLarge (error: Error & { cause?: unknown }): boolean {
  for (let e: unknown = error; e !== undefined && e !== null; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: string }).code === BODY_TOO_LARGE) return true
  }
  return false
}

/** Answers a request here with a catalogue error, recording how it ended. */
function refuse (request: FastifyRequest, reply: FastifyReply, outcome: Outcome, code: ErrorCode, opts?: Parameters<typeof sendError>[3]): void {
  request.tp.outcome = outcome
  sendError(request, reply, code, opts)
}

/** Maps undici/reply-from error codes to the kinds counted in metrics. */
export function upstreamErrorKind (causeCode: string | undefined, wrapperCode: string | undefined): UpstreamErrorKind {
  const code = causeCode ?? wrapperCode ?? ''
  if (['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT', 'ERR_TLS_CERT_ALTNAME_INVALID'].includes(code)) return 'connect'
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || wrapperCode === 'FST_REPLY_FROM_GATEWAY_TIMEOUT') return 'timeout'
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE') return 'reset'
  return 'other'
}

/** rewriteUrl: keeps origin-form targets, turns absolute-form into origin-form and remembers the authority. */
function absoluteFormPath (req: RawWithAuthority): string {
  const url = req.url ?? '/'
  if (url.charCodeAt(0) === 47 /* '/' */) return url
  if (/^https?:\/\//i.test(url)) {
    try {
      const parsed = new URL(url)
      req[kAbsoluteAuthority] = parsed.host
      return parsed.pathname + parsed.search
    } catch {
      return url
    }
  }
  return url
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

function isDecodablePath (url: string): boolean {
  if (!url.includes('%')) return true
  try {
    decodeURIComponent(url)
    return true
  } catch {
    return false
  }
}

function round (ms: number): number {
  return Math.round(ms * 100) / 100
}
