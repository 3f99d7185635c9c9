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
import { probeOrigins } from './upstream-probe.js'
import type { GroupView } from '../cluster/primary.js'

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
  /** A cluster primary's workers (src/cluster/primary.ts): /metrics, /up and /ready answer for all of them. */
  readonly group?: GroupView | null
}

export const JWKS_PATH = '/.well-known/tenant-proxy/jwks.json'

/** Builds the ops app (not listening). */
export function buildOpsApp (deps: OpsDeps) {
  const logger = deps.logger.child({ listener: 'ops' })
  // Fastify's default logs the refused bytes (err.rawPacket); see client-error.ts.
  const app = Fastify({ loggerInstance: logger, logController: new LogController({ disableRequestLogging: true }), clientErrorHandler: clientErrorHandler(logger), schemaController: lazySchemaCompilers })

  const group = deps.group ?? null
  app.get('/metrics', async (_request, reply) => {
    if (group !== null) return reply.type(group.contentType).send(await group.metrics())
    const body = await deps.metrics.registry.metrics()
    return reply.type(deps.metrics.registry.contentType).send(body)
  })

  app.get('/ready', async (_request, reply) => {
    const { state } = deps
    const index = state.index
    const [upstreams, workers] = await Promise.all([
      probeOrigins(deps.pools.default.addresses.map((a) => a.origin), deps.probeTimeoutMs),
      group?.statuses() ?? null
    ])
    const reachable = upstreams.some((u) => u.reachable)
    // With workers, every one must be listening with an index (a restarting one makes the group not ready).
    const workersReady = group === null || (workers !== null && group.up() === group.expected && workers.length === group.expected && workers.every((w) => w.version !== null && !w.draining))
    const ready = index !== null && !state.draining && reachable && workersReady
    const now = Date.now()
    return reply.code(ready ? 200 : 503).header('cache-control', 'no-store').send({
      status: ready ? 'ready' : state.draining ? 'draining' : index === null ? 'starting' : !reachable ? 'upstream_unreachable' : 'workers_not_ready',
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
            synced: state.synced && state.feedDeaf === null,
            stale: state.stale,
            // Why the index may lag the registry: not connected, from the file, or a deaf feed.
            notSyncedReason: notSyncedReason(state),
            feedDeaf: state.feedDeaf !== null,
            lastSyncAt: state.lastSyncAt === 0 ? null : new Date(state.lastSyncAt).toISOString(),
            secondsSinceSync: state.lastSyncAt === 0 ? null : Math.round((now - state.lastSyncAt) / 100) / 10
          },
      ...(group === null ? {} : { workers: { expected: group.expected, up: group.up(), processes: workers } }),
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
    // With workers: up while at least one serves (a restarting worker costs capacity, not the instance).
    const workersUp = group?.up() ?? 1
    const up = deps.state.index !== null && !deps.state.draining && workersUp > 0
    const status = up ? 'ok' : deps.state.draining ? 'draining' : deps.state.index === null ? 'starting' : 'no_worker_up'
    return reply.code(up ? 200 : 503).send(group === null ? { status } : { status, workers: { expected: group.expected, up: workersUp } })
  })

  app.get(TLS_ASK_PATH, deps.tlsAsk)

  app.get(JWKS_PATH, async (_request, reply) => {
    // Short cache: rotation publishes the next key ahead of use, so verifiers refetch in time.
    return reply.header('cache-control', 'public, max-age=60').send(deps.keyring.jwks())
  })

  registerDescriptorApi(app, { ...deps.descriptorApi, state: deps.state, metrics: deps.metrics, logger })

  return app
}

/** Why /ready reports the index as not synced, or null when it is. */
function notSyncedReason (state: ProxyState): string | null {
  if (state.stale) return 'routing from the last-known-good snapshot file; the registry has not answered yet'
  if (state.feedDeaf !== null) return `the registry change feed is deaf: ${state.feedDeaf}${state.synced ? '' : ' (reconnecting)'}`
  if (!state.synced) return 'the registry change feed is not connected (reconnecting)'
  return null
}
