/**
 * The ops listener: metrics, readiness, the descriptor key set and the descriptor API. It is a
 * separate listener so none of this is reachable through a tenant's host on the traffic port.
 */
import Fastify, { LogController } from 'fastify'
import type { Logger } from 'pino'
import type { Keyring } from '../descriptor/keyring.js'
import type { DescriptorCache } from '../descriptor/sign.js'
import { clientErrorHandler } from '../proxy/client-error.js'
import type { ProxyState } from '../state.js'
import { TLS_ASK_PATH, type TlsAskHandler } from '../proxy/tls-ask.js'
import type { ProxyMetrics } from './metrics.js'
import type { UpstreamPools } from '../proxy/upstream-pools.js'
import { lazySchemaCompilers } from '../schema-compilers.js'
import { registerDescriptorApi } from './descriptor-api.js'
import { probeOrigins, type OriginProbe } from './upstream-probe.js'

/** What the ops app reads. */
export interface OpsDeps {
  readonly state: ProxyState
  readonly metrics: ProxyMetrics
  readonly keyring: Keyring
  readonly pools: UpstreamPools
  readonly logger: Logger
  readonly probeTimeoutMs: number
  /** The descriptor API (src/ops/descriptor-api.ts): its tokens (none: disabled) and what it signs with. */
  readonly descriptorApi: { readonly tokens: readonly string[], readonly descriptors: DescriptorCache, readonly retryAfterS: number }
  /** The on-demand TLS ask (src/proxy/tls-ask.ts). */
  readonly tlsAsk: TlsAskHandler
}

export const JWKS_PATH = '/.well-known/tenant-proxy/jwks.json'

/** Builds the ops app (not listening). */
export function buildOpsApp (deps: OpsDeps) {
  const logger = deps.logger.child({ listener: 'ops' })
  // Fastify's default logs the refused bytes (err.rawPacket); see client-error.ts.
  const app = Fastify({ loggerInstance: logger, logController: new LogController({ disableRequestLogging: true }), clientErrorHandler: clientErrorHandler(logger), schemaController: lazySchemaCompilers })

  app.get('/metrics', async (_request, reply) => {
    const body = await deps.metrics.registry.metrics()
    return reply.type(deps.metrics.registry.contentType).send(body)
  })

  app.get('/ready', async (_request, reply) => {
    const { state } = deps
    const index = state.index
    const upstreams: OriginProbe[] = await probeOrigins(deps.pools.default.addresses.map((a) => a.origin), deps.probeTimeoutMs)
    const reachable = upstreams.some((u) => u.reachable)
    const ready = index !== null && !state.draining && reachable
    const now = Date.now()
    return reply.code(ready ? 200 : 503).header('cache-control', 'no-store').send({
      status: ready ? 'ready' : state.draining ? 'draining' : index === null ? 'starting' : 'upstream_unreachable',
      draining: state.draining,
      registry: index === null
        ? { loaded: false }
        : {
            loaded: true,
            version: index.version,
            tenants: index.bySlug.size,
            domains: index.byHost.size,
            loadedAt: new Date(index.loadedAt).toISOString(),
            snapshotAgeSeconds: Math.round((now - index.loadedAt) / 100) / 10,
            // Feed up and resynced: the index is current. Stale: from the last-known-good file.
            synced: state.synced,
            stale: state.stale,
            lastSyncAt: state.lastSyncAt === 0 ? null : new Date(state.lastSyncAt).toISOString(),
            secondsSinceSync: state.lastSyncAt === 0 ? null : Math.round((now - state.lastSyncAt) / 100) / 10
          },
      upstreams,
      pools: deps.pools.all().map((p) => ({
        name: p.name ?? 'default',
        addresses: p.addresses.map((a) => ({
          origin: a.origin,
          configured: a.configured,
          usable: a.usable(now),
          inRotation: a.inRotation(now),
          failures: a.failures,
          ejections: a.ejections,
          ejectionMs: a.ejectionMs,
          ejectedUntil: a.ejectedUntil > now ? new Date(a.ejectedUntil).toISOString() : null,
          healthCheckOk: a.checkOk
        }))
      }))
    })
  })

  app.get('/up', async (_request, reply) => {
    const up = deps.state.index !== null && !deps.state.draining
    return reply.code(up ? 200 : 503).send({ status: up ? 'ok' : deps.state.draining ? 'draining' : 'starting' })
  })

  app.get(TLS_ASK_PATH, deps.tlsAsk)

  app.get(JWKS_PATH, async (_request, reply) => {
    // Short cache: rotation publishes the next key ahead of use, so verifiers refetch in time.
    return reply.header('cache-control', 'public, max-age=60').send(deps.keyring.jwks())
  })

  registerDescriptorApi(app, { ...deps.descriptorApi, state: deps.state, metrics: deps.metrics, logger })

  return app
}
