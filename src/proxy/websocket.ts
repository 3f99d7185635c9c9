/**
 * WebSocket upgrades. A routed upgrade request (decided like any request: unknown host 404,
 * suspended 403, …, no upgrade then) is handed to @fastify/http-proxy's WebSocket proxy with a
 * real address of its pool; the upstream handshake carries the client's headers filtered like
 * HTTP ones, the forwarding headers and the descriptor (Action Cable's `connect` reads it). The
 * plugin's routes take upgrade requests only: plain HTTP goes through forward.ts.
 */
import httpProxy from '@fastify/http-proxy'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { Forward } from './decide.js'
import { sendError } from './error-reply.js'
import { upstreamHeaders, type ForwardDeps } from './forward.js'
import type { HeaderMap } from './headers.js'
import type { UpstreamPool } from './upstream-pools.js'

/** On the raw request: where the upgrade goes, and what it was decided for. */
const kUpgrade = Symbol('tenant-proxy.upgrade')
interface UpgradeTarget { readonly origin: string, readonly decision: Forward<UpstreamPool> }
type RawWithUpgrade = FastifyRequest['raw'] & { [kUpgrade]?: UpgradeTarget }

/** A route handler as find-my-way stores it per constraint value. */
type RouteHandler = NonNullable<ReturnType<ReturnType<Parameters<FastifyInstance['addConstraintStrategy']>[0]['storage']>['get']>>

/** The WebSocket server @fastify/http-proxy keeps (reached through its reply decorator). */
interface WsServer { clients: Set<{ close (code: number, reason: string): void }> }

/** The handshake headers the WebSocket client writes itself (key, version, extensions, subprotocols). */
const HANDSHAKE = ['sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'content-length', 'transfer-encoding']

/** Upgrades and the shutdown of open WebSockets. */
export interface WebSockets {
  /** Closes every proxied WebSocket with `code` (1001 at shutdown, so clients reconnect elsewhere). */
  closeAll (code: number, reason: string): number
}

/**
 * The routing step of an upgrade request: decides it like any request and either answers it (a
 * refusal, sent) or returns where it goes.
 */
export type UpgradeDecider = (request: FastifyRequest, reply: FastifyReply) => Forward<UpstreamPool> | null

/**
 * Registers the WebSocket proxy on `app`. Its routes take only requests Node emitted through
 * 'upgrade' (the `upgrade` route constraint below), so plain HTTP never reaches the plugin.
 */
export function createWebSockets (app: FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>, decideUpgrade: UpgradeDecider, deps: Pick<ForwardDeps, 'descriptors' | 'trusted' | 'headerPolicy' | 'hostHeader'>): WebSockets {
  let wss: WsServer | null = null
  app.addConstraintStrategy({
    name: 'upgrade',
    storage () {
      const handlers = new Map<unknown, RouteHandler>()
      return { get: (value: unknown) => handlers.get(value) ?? null, set: (value: unknown, handler: RouteHandler) => { handlers.set(value, handler) } }
    },
    // Node's parser marks the requests it emits through 'upgrade' (Connection: upgrade).
    deriveConstraint: (req: IncomingMessage & { upgrade?: boolean }) => req.upgrade === true ? 'websocket' : 'none',
    mustMatchWhenDerived: false
  })
  void app.register(httpProxy, {
    upstream: '',
    prefix: '/',
    constraints: { upgrade: 'websocket' },
    disableRequestLogging: true,
    websocket: true,
    preHandler: (request, reply, done) => {
      const decision = decideUpgrade(request, reply)
      if (decision !== null) prepare(request, reply, decision)
      done()
    },
    // http-proxy reads rewriteRequestHeaders from wsClientOptions although its types omit it.
    wsClientOptions: {
      rewriteRequestHeaders: (_headers: unknown, request: unknown) => handshakeHeaders(request as FastifyRequest) as Record<string, string>
    } as Record<string, unknown>,
    replyOptions: {
      getUpstream: (request) => (request.raw as RawWithUpgrade)[kUpgrade]?.origin ?? ''
    }
  })

  /** A routed upgrade: a real address of its pool (the WebSocket proxy dials it itself). */
  function prepare (request: FastifyRequest, reply: FastifyReply, decision: Forward<UpstreamPool>): void {
    const address = decision.pool.pick()
    if (address === undefined) {
      sendError(request, reply, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT')
      return
    }
    ;(request.raw as RawWithUpgrade)[kUpgrade] = { origin: address.origin, decision }
    request.tp.upgrade = true
    wss ??= (reply as unknown as { wsProxy?: { wss?: WsServer } }).wsProxy?.wss ?? null
  }

  function handshakeHeaders (request: FastifyRequest): HeaderMap {
    const target = (request.raw as RawWithUpgrade)[kUpgrade]
    if (target === undefined) return {}
    const headers = upstreamHeaders(request, target.decision, deps)
    // A fresh object of ours: deleting from it costs nobody else.
    for (const name of HANDSHAKE) delete headers[name]
    return headers
  }

  return {
    closeAll (code, reason) {
      if (wss === null) return 0
      let n = 0
      for (const client of wss.clients) {
        client.close(code, reason)
        n++
      }
      return n
    }
  }
}
