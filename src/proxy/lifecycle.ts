/**
 * The life of one traffic request around the steps that handle it: its id, its start, its end
 * counted once (answered, or the client gone: 499), the metrics and the access-log line.
 */
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import type { FastifyRequest } from 'fastify'
import type { AccessLine } from '../log.js'
import type { Outcome, ProxyMetrics } from '../ops/metrics.js'
import { isWellFormedRequestId } from './headers.js'
import type { ForwardedRequest } from './upstream-agent.js'

/** What the steps of one request record. */
export interface Flow {
  outcome: Outcome
  host: string
  tenant: string | null
  start: number
  upstreamStart: number
  /** Time to the upstream's response headers, once they arrived. */
  upstreamMs: number | null
  /** The request in flight upstream, to cancel when the client leaves. */
  upstream: ForwardedRequest | null
  done: boolean
  /** A WebSocket upgrade handed to the WebSocket proxy (logged with status 101 when it closes). */
  upgrade: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    tp: Flow
  }
}

/** nginx's convention, understood by every log tool: the client closed the connection before the answer. */
export const CLIENT_CLOSED = 499

/** Socket properties: the request the connection carries, and whether its 'close' listener is on. */
const kCurrent = Symbol('tenant-proxy.currentRequest')
const kWatched = Symbol('tenant-proxy.watched')
type WatchedSocket = Socket & { [kCurrent]?: FastifyRequest | undefined, [kWatched]?: true }

/**
 * Request ids: a random per-process prefix and a counter. Unique across processes and restarts
 * (64 random bits), cheaper than a UUID per request, and sortable within a process. A trusted
 * hop's well-formed X-Request-Id is kept, so its log lines and ours share the id.
 */
export function requestIdGenerator (trustedPeer: (socket: Socket) => boolean): (req: { headers: Record<string, unknown>, socket: Socket }) => string {
  const prefix = `${randomBytes(8).toString('hex')}-`
  let counter = 0
  return (req) => {
    const inbound = req.headers['x-request-id']
    return trustedPeer(req.socket) && isWellFormedRequestId(inbound) ? inbound : prefix + (++counter).toString(36)
  }
}

/** Starts and ends requests; one per traffic app. */
export class RequestLifecycle {
  readonly #metrics: ProxyMetrics
  readonly #accessLog: ((line: AccessLine) => void) | null

  constructor (metrics: ProxyMetrics, accessLog: ((line: AccessLine) => void) | null) {
    this.#metrics = metrics
    this.#accessLog = accessLog
  }

  /** Starts `request`: its Flow, the in-flight count, and the watch on its connection. */
  begin (request: FastifyRequest): Flow {
    const flow: Flow = { outcome: 'bad_request', host: '', tenant: null, start: performance.now(), upstreamStart: 0, upstreamMs: null, upstream: null, done: false, upgrade: false }
    request.tp = flow
    this.#metrics.inFlight++
    // A client that leaves mid-request closes its connection (HTTP/1.1 has no other way), and no
    // Fastify hook runs then: one 'close' listener per connection, not one per request (that cost
    // about 1 µs a request), catches it for whichever request the connection is carrying.
    const socket: WatchedSocket = request.raw.socket
    socket[kCurrent] = request
    if (socket[kWatched] === undefined) {
      socket[kWatched] = true
      socket.once('close', () => { this.#connectionClosed(socket) })
    }
    return flow
  }

  /** The upstream's response headers arrived. */
  upstreamAnswered (flow: Flow): void {
    flow.upstreamMs = performance.now() - flow.upstreamStart
    this.#metrics.observeUpstream(flow.upstreamMs / 1000)
  }

  /** Ends `request` with `status`: counted and logged once, whichever way it ended. */
  finish (request: FastifyRequest, status: number): void {
    const flow = request.tp
    if (flow === null || flow.done) return
    flow.done = true
    // Let go of the finished request now: held until the connection's next request, it would
    // outlive young-generation collections and be promoted, for nothing.
    // (Node unsets a request's socket once the connection is gone.)
    const socket = request.raw.socket as WatchedSocket | null
    if (socket !== null && socket[kCurrent] === request) socket[kCurrent] = undefined
    flow.upstream = null
    const elapsedMs = performance.now() - flow.start
    this.#metrics.inFlight--
    this.#metrics.observeRequest(flow.outcome, status, elapsedMs / 1000)
    this.#accessLog?.({ reqId: request.id, host: flow.host, tenant: flow.tenant, outcome: flow.outcome, status, ms: round(elapsedMs), upstreamMs: flow.upstreamMs === null ? null : round(flow.upstreamMs) })
  }

  #connectionClosed (socket: WatchedSocket): void {
    const request = socket[kCurrent]
    socket[kCurrent] = undefined
    if (request === undefined || request.tp.done) return
    if (request.tp.upgrade) {
      this.finish(request, 101)
      return
    }
    // The client left before the answer was complete: stop the app's work for it too, whether it
    // is still computing the answer or streaming it (a paused stream would otherwise hold the
    // upstream connection until upstream.bodyTimeoutMs).
    // Counted first: the cancelled request's failure then finds it done and stays quiet.
    const upstream = request.tp.upstream
    this.finish(request, CLIENT_CLOSED)
    upstream?.cancel()
  }
}

function round (ms: number): number {
  return Math.round(ms * 100) / 100
}
