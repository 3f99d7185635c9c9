/**
 * Runs the proxy: validates keys, opens and migrates the registry, loads the first snapshot,
 * listens on the traffic and ops ports, reloads on a timer or SIGHUP, and shuts down in order
 * (health turns 503, listeners close after a delay, in-flight requests finish, then the rest).
 */
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import type { Config } from './config/load.js'
import { loadKeyring, type Keyring } from './descriptor/keyring.js'
import { DescriptorCache } from './descriptor/sign.js'
import { buildOpsApp } from './ops/app.js'
import { ProxyMetrics } from './ops/metrics.js'
import { probeOrigins } from './ops/upstream-probe.js'
import { buildTrafficApp } from './proxy/app.js'
import { HeldRequests } from './proxy/held-requests.js'
import { collectGarbage } from './gc.js'
import { createProxyState, type ProxyState } from './state.js'
import { tlsAskHandler } from './proxy/tls-ask.js'
import { UpstreamAgent } from './proxy/upstream-agent.js'
import { UpstreamHealth } from './proxy/upstream-health.js'
import { UpstreamPools } from './proxy/upstream-pools.js'
import { describeError, openRegistry, type RegistryConnection } from './registry/connect.js'
import { migrate } from './registry/migrate.js'
import { registryFingerprint } from './registry/snapshot-file.js'
import type { RegistryListener } from './registry/listener.js'
import { SnapshotWriter } from './registry/snapshot-writer.js'
import { RegistrySync } from './registry/sync.js'
import { tpError } from './errors.js'

/** A running proxy. */
export interface ProxyHandle {
  readonly traffic: { host: string, port: number }
  readonly ops: { host: string, port: number }
  readonly state: ProxyState
  readonly metrics: ProxyMetrics
  readonly keyring: Keyring
  /** Reloads the registry snapshot now; keeps the current index on failure. */
  reload (): Promise<boolean>
  /** Drains and stops; idempotent. */
  stop (): Promise<void>
}

/** Starts a proxy with a validated config. Throws (and cleans up) when anything fails to start. */
export async function startProxy (config: Config, logger: Logger): Promise<ProxyHandle> {
  const keyring = loadKeyring(config.descriptor.keys)
  const metrics = new ProxyMetrics()
  const state = createProxyState()
  const descriptors = new DescriptorCache({
    keyring,
    issuer: config.deploymentId,
    audience: config.descriptor.audience,
    ttlS: config.descriptor.ttlS,
    refreshMarginS: config.descriptor.refreshMarginS,
    onSign: () => metrics.descriptorSignatures.inc()
  })
  // Paused tenants' requests: released when the sync applies a change of their tenant.
  const held = new HeldRequests({ maxPerTenant: config.routing.pause.maxHeldPerTenant, maxTotal: config.routing.pause.maxHeld }, metrics)
  const cleanups: Array<() => Promise<void>> = []
  const cleanup = async (): Promise<void> => {
    for (const fn of cleanups.reverse()) await fn().catch((err: unknown) => logger.warn({ err }, 'cleanup step failed'))
    cleanups.length = 0
  }

  try {
    const registry: RegistryConnection = await openRegistry(config, registryLog(logger), { max: 2, check: false })
    cleanups.push(async () => await registry.close())
    const snapshotFile = config.registry.snapshotPath === '' ? null : config.registry.snapshotPath
    const writer = snapshotFile === null
      ? null
      : new SnapshotWriter({ file: snapshotFile, fingerprint: registryFingerprint(config.registry.databaseUrl, config.registry.embedded.dataDir, registry.schema), logger: logger.child({ component: 'registry' }), collect: () => { collectGarbage() } })
    if (writer !== null) cleanups.push(async () => await writer.stop())
    const sync = new RegistrySync({
      store: registry.store,
      url: registry.url,
      schema: registry.schema,
      applicationName: config.registry.applicationName,
      connectTimeoutMs: config.registry.connectTimeoutMs,
      statementTimeoutMs: config.registry.statementTimeoutMs,
      defaults: config.tenantDatabase,
      versionCheckIntervalMs: config.registry.versionCheckIntervalMs,
      reconnectMinMs: config.registry.reconnectMinMs,
      reconnectMaxMs: config.registry.reconnectMaxMs,
      changeRetentionS: config.registry.changeRetentionS,
      snapshotFile,
      fingerprint: registryFingerprint(config.registry.databaseUrl, config.registry.embedded.dataDir, registry.schema),
      onConnect: async () => {
        const migrated = await migrate(registry.pool, registry.schema)
        if (migrated.applied.length > 0) logger.info({ from: migrated.from, to: migrated.to }, 'registry schema migrated')
      },
      // In this order: requests route by the new index first, then what depends on it.
      listeners: [stateListener(state), descriptorListener(descriptors), heldListener(held, logger), metricsListener(metrics), ...writer === null ? [] : [writer]],
      logger
    })
    cleanups.push(async () => await sync.stop())
    try {
      await sync.start()
    } catch (err) {
      if (String((err as { code?: unknown }).code).startsWith('TENANT_PROXY_ERR_')) throw err
      throw tpError('TENANT_PROXY_ERR_REGISTRY_UNREACHABLE', [`${describeError(err)} (and no usable last-known-good snapshot file)`], err)
    }
    const reload = async (): Promise<boolean> => await sync.reload()

    const upstreamLog = logger.child({ component: 'upstream' })
    const pools = new UpstreamPools(config.upstream, {
      dnsRefreshMs: config.upstream.dnsRefreshMs,
      ejectAfterFailures: config.upstream.ejectAfterFailures,
      ejectMinMs: config.upstream.ejectMinMs,
      ejectMaxMs: config.upstream.ejectMaxMs,
      onEject: (pool, address, forMs) => {
        metrics.upstreamEjections.inc()
        upstreamLog.warn({ pool: pool.name ?? 'default', address: address.origin, forMs }, 'upstream address ejected after repeated connection failures')
      },
      // Run when an ejection ends: the app listening again brings the address back without
      // waiting for traffic, and an app that stays dead stays reported as failing.
      probe: async (address) => (await probeOrigins([address.origin], config.upstream.connectTimeoutMs))[0]?.reachable === true,
      onDnsError: (hostname, err) => upstreamLog.warn({ hostname, error: describeError(err) }, 'upstream DNS re-resolution failed; keeping the previous addresses')
    })
    await pools.start()
    cleanups.push(async () => { pools.stop() })
    metrics.watchPools(pools)
    const dispatcher = new UpstreamAgent({
      connections: config.upstream.connections,
      connect: { timeout: config.upstream.connectTimeoutMs },
      headersTimeout: config.upstream.headersTimeoutMs,
      bodyTimeout: config.upstream.bodyTimeoutMs
    })
    // Runs after the traffic listener closed (graceful part done): whatever is still pending
    // upstream has no client left to answer.
    cleanups.push(async () => await dispatcher.destroy())
    dispatcher.useEvents({ onRetry: (_pool, _address, failure) => { metrics.observeRetry(failure.kind) } })
    const check = config.upstream.healthCheck
    const upstreamHealth = check.path === ''
      ? null
      : new UpstreamHealth(pools, {
        ...check,
        hostHeader: config.upstream.hostHeader,
        dispatcher,
        onChange: (pool, address, ok, detail) => upstreamLog[ok ? 'info' : 'warn']({ pool: pool.name ?? 'default', address: address.origin, detail }, ok ? 'upstream address passes its health check again' : 'upstream address fails its health check; out of rotation')
      })
    upstreamHealth?.start()
    cleanups.push(async () => { upstreamHealth?.stop() })

    const traffic = buildTrafficApp({ config, state, descriptors, metrics, logger, agent: dispatcher, pools, upstreamHealth: config.traffic.healthMode === 'upstream' ? upstreamHealth : null, held })
    const ops = buildOpsApp({
      state,
      metrics,
      keyring,
      pools,
      logger,
      probeTimeoutMs: Math.min(config.upstream.connectTimeoutMs, 1_000),
      descriptorApi: { tokens: config.ops.descriptorApi.tokens, descriptors, retryAfterS: config.registry.unavailableRetryAfterS },
      tlsAsk: tlsAskHandler({ config, state, metrics })
    })
    cleanups.push(async () => await ops.close())
    cleanups.push(async () => {
      // Close code 1001 "going away": Action Cable and other clients reconnect (to another instance).
      const closed = traffic.closeWebSockets(1001, 'server shutting down')
      if (closed > 0) logger.info({ websockets: closed }, 'closed WebSockets with 1001')
      await closeWithGrace(traffic, config.shutdown.graceMs, logger)
    })
    await traffic.listen({ host: config.traffic.host, port: config.traffic.port })
    await ops.listen({ host: config.ops.host, port: config.ops.port })
    const trafficAddress = traffic.server.address() as AddressInfo
    const opsAddress = ops.server.address() as AddressInfo

    logger.info({ traffic: `${trafficAddress.address}:${trafficAddress.port}`, ops: `${opsAddress.address}:${opsAddress.port}`, embeddedRegistry: registry.embedded, kid: keyring.signer.kid, alg: keyring.signer.alg }, 'tenant-proxy listening')
    // Start-up lines matter now (deploy logs, tests waiting for them): do not leave them buffered.
    logger.flush()

    let stopping: Promise<void> | null = null
    return {
      traffic: { host: trafficAddress.address, port: trafficAddress.port },
      ops: { host: opsAddress.address, port: opsAddress.port },
      state,
      metrics,
      keyring,
      reload,
      async stop () {
        stopping ??= (async () => {
          state.draining = true
          metrics.draining.set(1)
          // Nothing will resume them now: held requests get 503 + Retry-After (to retry elsewhere).
          held.drain()
          logger.info({ drainDelayMs: config.shutdown.drainDelayMs }, 'draining: health answers 503 until listeners close')
          // Give the load balancer time to see /up fail before connections are refused.
          if (config.shutdown.drainDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, config.shutdown.drainDelayMs))
          await cleanup()
          logger.info('stopped')
          logger.flush()
        })()
        await stopping
      }
    }
  } catch (err) {
    await cleanup()
    throw err
  }
}

/** Closes a Fastify app, letting in-flight requests finish for up to graceMs, then cutting the rest. */
async function closeWithGrace (app: { close (): Promise<void>, server: { closeAllConnections (): void } }, graceMs: number, logger: Logger): Promise<void> {
  const timer = setTimeout(() => {
    logger.warn({ graceMs }, 'grace period over: closing remaining connections')
    app.server.closeAllConnections()
  }, graceMs)
  try {
    await app.close()
  } finally {
    clearTimeout(timer)
  }
}

/** The index and feed status the data path reads. */
function stateListener (state: ProxyState): RegistryListener {
  return {
    indexReplaced (index, how) {
      state.index = index
      if (how.source === 'registry') state.lastSyncAt = index.loadedAt
    },
    feedChanged (status) {
      state.synced = status.synced
      state.stale = status.stale
      if (status.lastSyncAt > 0) state.lastSyncAt = status.lastSyncAt
    }
  }
}

/** Cached descriptors of hosts no longer in the index are dropped. */
function descriptorListener (descriptors: DescriptorCache): RegistryListener {
  return {
    indexReplaced (index) { descriptors.retain((host) => index.byHost.has(host)) },
    changesApplied (_index, change) { for (const host of change.removedHosts) descriptors.delete(host) }
  }
}

/**
 * Held requests of paused tenants are decided again when their tenant changed: the touched
 * slugs of a delta, or all of them after a full load (any tenant may have changed).
 */
function heldListener (held: HeldRequests, logger: Logger): RegistryListener {
  const release = (slugs: readonly string[] | null): void => {
    try {
      held.release(slugs)
    } catch (err) {
      logger.error({ err }, 'a held request failed when its tenant changed')
    }
  }
  return {
    indexReplaced () { release(null) },
    changesApplied (_index, change) { release(change.touchedSlugs) }
  }
}

function metricsListener (metrics: ProxyMetrics): RegistryListener {
  return {
    indexReplaced (index) { metrics.observeRegistryLoad(index) },
    changesApplied (index) { metrics.observeIndex(index) },
    feedChanged (status) { metrics.observeFeed(status) },
    syncEvent (event) { metrics.observeSync(event) }
  }
}

function registryLog (logger: Logger): { debug (msg: string): void, info (msg: string): void, warn (msg: string): void } {
  const child = logger.child({ component: 'registry' })
  return { debug: (m) => child.debug(m), info: (m) => child.info(m), warn: (m) => child.warn(m) }
}
