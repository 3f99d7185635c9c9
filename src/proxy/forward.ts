/**
 * Forwards a routed HTTP request to its upstream pool and streams the answer back: the request's
 * headers (filtered, plus the forwarding headers and the descriptor), its body as it arrives, and
 * the response written straight to Node's ServerResponse from undici's handler callbacks, with
 * backpressure both ways. This replaced @fastify/reply-from for plain HTTP: it copied and
 * rewrote every request twice and piped each response through a stream of its own, costing more
 * CPU per request than everything else in the proxy (docs/design.md, "The data path").
 * A failure before the response started is answered with a catalogue error through Fastify; after
 * it started, the connection is cut so the client sees a truncated answer, never a wrong one.
 */
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { DescriptorCache } from '../descriptor/sign.js'
import { tpError } from '../errors.js'
import type { ProxyMetrics } from '../ops/metrics.js'
import type { Route } from '../registry/index.js'
import { isBodyTooLarge, limitedBody } from './body-limit.js'
import type { Forward } from './decide.js'
import { sendError } from './error-reply.js'
import { clientResponseHeaders, peerAddress, upstreamRequestHeaders, type HeaderMap, type HeaderPolicy } from './headers.js'
import type { Flow, RequestLifecycle } from './lifecycle.js'
import { absoluteAuthority } from './request-target.js'
import type { TrustedPeers } from './trusted-peers.js'
import type { UpstreamAgent, UpstreamHandler } from './upstream-agent.js'
import { classifyUpstreamError } from './upstream-errors.js'
import type { UpstreamPool } from './upstream-pools.js'

/** What forwarding needs; built once by the traffic app. */
export interface ForwardDeps {
  readonly agent: UpstreamAgent
  readonly descriptors: DescriptorCache
  readonly lifecycle: RequestLifecycle
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  readonly trusted: TrustedPeers
  readonly headerPolicy: HeaderPolicy
  /** upstream.hostHeader, or null to keep the client's Host. */
  readonly hostHeader: string | null
  readonly maxBodyBytes: number
  /** True while the process drains: answers say Connection: close. */
  readonly draining: () => boolean
}

/** Builds the forwarding step. */
export function createForwarder (deps: ForwardDeps): (request: FastifyRequest, reply: FastifyReply, decision: Forward<UpstreamPool>) => void {
  return function forward (request, reply, decision) {
    const flow = request.tp
    const raw = request.raw
    const body = limitedBody(raw, requestBody(request), deps.maxBodyBytes)
    if (body === 'too-large') {
      sendError(request, reply, 'TENANT_PROXY_ERR_BODY_TOO_LARGE', { detail: `${deps.maxBodyBytes} bytes` })
      return
    }
    const headers = upstreamHeaders(request, decision, deps)
    flow.upstreamStart = performance.now()
    // Node's header values are strings (arrays for set-cookie); undici takes the map as it is.
    // How much the client had sent when forwarding began: a failure with nothing more received
    // and the body incomplete is the client's stall, not the app's failure (see #failed).
    const bytesAtStart = body === null ? -1 : raw.socket.bytesRead
    flow.upstream = deps.agent.forward(decision.pool, { path: request.url, method: raw.method ?? 'GET', headers: headers as Record<string, string | string[]>, body }, new ResponseWriter(request, reply, flow, deps, bytesAtStart))
  }
}

/**
 * The headers the app receives for a routed request (HTTP or a WebSocket handshake): the
 * client's, filtered, the forwarding headers, and the tenant's descriptor (none for pass-through).
 */
export function upstreamHeaders (request: FastifyRequest, decision: Forward<UpstreamPool>, deps: Pick<ForwardDeps, 'descriptors' | 'trusted' | 'headerPolicy' | 'hostHeader'>): HeaderMap {
  const raw = request.raw
  const headers = upstreamRequestHeaders(request.headers, deps.headerPolicy, {
    peer: peerAddress(raw.socket.remoteAddress),
    trusted: deps.trusted.hasPeerOf(raw.socket),
    // RFC 9112 section 3.2.2: with an absolute-form target the received Host is replaced by the
    // target's authority, the one the request was routed (and its descriptor signed) for.
    host: absoluteAuthority(raw) ?? request.headers.host ?? decision.host,
    hostHeader: deps.hostHeader,
    requestId: request.id
  })
  const route: Route | null = decision.route
  if (route !== null) headers[deps.headerPolicy.descriptorHeader] = deps.descriptors.get(route, decision.host)
  return headers
}

/** The request body to forward: the raw stream when the request has one, else none. */
function requestBody (request: FastifyRequest): Readable | null {
  // The catch-all content-type parser hands the raw stream over as the body (never parsed).
  const body = request.body as Readable | undefined | null
  if (body !== undefined && body !== null && typeof body.pipe === 'function') return body
  const h = request.raw.headers
  // A body Fastify does not parse (GET or HEAD with one): forwarded as sent.
  return h['content-length'] !== undefined || h['transfer-encoding'] !== undefined ? request.raw : null
}

/** undici's handler for one forwarded request: writes the answer to the client as it arrives. */
class ResponseWriter implements UpstreamHandler {
  #status = 0
  /** A failure was handled: later callbacks of the same request (an abort) change nothing. */
  #failedOnce = false
  #resume: (() => void) | null = null
  readonly #onDrain = (): void => { this.#resume?.() }

  constructor (readonly request: FastifyRequest, readonly reply: FastifyReply, readonly flow: Flow, readonly deps: ForwardDeps, readonly bytesAtStart: number) {}

  onConnect (): void {}

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // 1xx interim answers (103 Early Hints) are not relayed; the final one follows.
    if (statusCode < 200) return true
    const { request, reply, flow, deps } = this
    if (flow.done) return false
    deps.lifecycle.upstreamAnswered(flow)
    try {
      const headers = clientResponseHeaders(rawHeaders, deps.headerPolicy.descriptorHeader, request.id, deps.draining())
      reply.raw.writeHead(statusCode, statusText === '' ? undefined : statusText, headers)
    } catch (err) {
      // A header value or reason phrase Node refuses to write (a control character the
      // upstream's parser let through): nothing was sent yet, so the client gets a clean 502.
      flow.upstream?.cancel()
      this.#failed(tpError('TENANT_PROXY_ERR_UPSTREAM_FAILED', [], err))
      return false
    }
    // From here on the answer is written to Node's response directly, not through Fastify.
    reply.hijack()
    this.#status = statusCode
    this.#resume = resume
    return true
  }

  onData (chunk: Buffer): boolean {
    const res = this.reply.raw
    if (res.write(chunk)) return true
    // Backpressure: undici pauses reading the upstream until the client has taken this chunk.
    res.once('drain', this.#onDrain)
    return false
  }

  onComplete (): void {
    const { request, deps } = this
    const status = this.#status
    this.reply.raw.end(() => { deps.lifecycle.finish(request, status) })
  }

  onError (err: Error): void {
    this.#failed(err)
  }

  #failed (err: Error): void {
    const { request, reply, flow, deps } = this
    // The client left and the request was cancelled for it: already counted (499).
    if (flow.done || this.#failedOnce) return
    this.#failedOnce = true
    if (this.#status !== 0) {
      // The answer had started: cut the connection so the client sees it truncated.
      this.#log(err)
      deps.lifecycle.finish(request, this.#status)
      reply.raw.destroy()
      return
    }
    if (isBodyTooLarge(err)) {
      sendError(request, reply, 'TENANT_PROXY_ERR_BODY_TOO_LARGE', { detail: `${deps.maxBodyBytes} bytes` })
      return
    }
    const raw = request.raw
    if (!raw.complete) {
      if (raw.destroyed || raw.readableAborted) {
        // The client's body ended before its declared length: its fault, not the app's.
        flow.outcome = 'bad_request'
        sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { detail: 'the request body ended before its declared length' })
        return
      }
      if (this.bytesAtStart >= 0 && raw.socket?.bytesRead === this.bytesAtStart) {
        // Not one more byte of the announced body arrived, and the app gave up waiting for it
        // (Node closes a kept-alive connection idle for its keepAliveTimeout, 5 s, even with a
        // request half read): the client stalled, the app did not fail.
        flow.outcome = 'bad_request'
        sendError(request, reply, 'TENANT_PROXY_ERR_BAD_REQUEST', { status: 408, detail: 'the request body did not arrive' })
        return
      }
    }
    const failure = this.#log(err)
    sendError(request, reply, failure.answer)
  }

  #log (err: Error): ReturnType<typeof classifyUpstreamError> {
    const { request, flow, deps } = this
    const failure = classifyUpstreamError(err)
    deps.metrics.observeUpstreamError(failure.kind)
    deps.logger.warn({ reqId: request.id, tenant: flow.tenant, kind: failure.kind, code: failure.code, err: tpError('TENANT_PROXY_ERR_UPSTREAM_FAILED', [], err) }, 'upstream request failed')
    return failure
  }
}
