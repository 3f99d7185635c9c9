/**
 * Runs the proxy: validates keys, opens and migrates the registry, loads the first snapshot,
 * listens on the traffic and ops ports, reloads on a timer or SIGHUP, and shuts down in order
 * (health turns 503, listeners close after a delay, in-flight requests finish, then the rest).
 *
 * With `workers` > 1 every process of the group runs this in a role: the primary has the registry
 * feed and the ops listener and forks the workers (src/cluster/primary.ts); a worker has the
 * traffic listener and an index its primary feeds (src/cluster/worker.ts).
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
import { WorkerGroup } from './cluster/primary.js'
import { IndexFollower } from './cluster/worker.js'
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
  /** Resolves when this process is asked to stop other than by a signal (a worker: by its primary). */
  readonly stopRequest: Promise<string>
}

/**
 * What this process is: the whole proxy (`workers` = 1), or the primary or a worker of a group.
 * The primary does not serve traffic; a worker opens neither the registry nor the ops listener.
 */
export type ProxyRole = { readonly kind: 'single' } | { readonly kind: 'primary', readonly workers: number } | { readonly kind: 'worker' }

/** Starts a proxy with a validated config. Throws (and cleans up) when anything fails to start. */
export async function startProxy (config: Config, logger: Logger, role: ProxyRole = { kind: 'single' }): Promise<ProxyHandle> {
  const servesTraffic = role.kind !== 'primary'
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
  const held = servesTraffic ? new HeldRequests({ maxPerTenant: config.routing.pause.maxHeldPerTenant, maxTotal: config.routing.pause.maxHeld }, metrics) : null
  const group = role.kind === 'primary'
    ? new WorkerGroup({ count: role.workers, metrics, logger, stopTimeoutMs: config.shutdown.drainDelayMs + config.shutdown.graceMs + 5_000 })
    : null
  let requestStop: (reason: string) => void = () => {}
  const stopRequest = new Promise<string>((resolve) => { requestStop = resolve })
  const cleanups: Array<() => Promise<void>> = []
  const cleanup = async (): Promise<void> => {
    for (const fn of cleanups.reverse()) await fn().catch((err: unknown) => logger.warn({ err }, 'cleanup step failed'))
    cleanups.length = 0
  }

  /** The registry feed of a single process or a primary. */
  const followRegistry = async (): Promise<{ source: RegistrySync, embedded: boolean }> => {
    const registry: RegistryConnection = await openRegistry(config, registryLog(logger), { max: 2, check: false })
    cleanups.push(async () => await registry.close())
    const snapshotFile = config.registry.snapshotPath === '' ? null : config.registry.snapshotPath
    const writer = snapshotFile === null
      ? null
      : new SnapshotWriter({ file: snapshotFile, fingerprint: registryFingerprint(config.registry.databaseUrl, config.registry.embedded.dataDir, registry.schema), logger: logger.child({ component: 'registry' }), collect: () => { collectGarbage() } })
    if (writer !== null) cleanups.push(async () => await writer.stop())
    const sync = new RegistrySync({
      store: registry.store,
      url: registry.listenUrl,
      schema: registry.schema,
      applicationName: config.registry.applicationName,
      connectTimeoutMs: config.registry.connectTimeoutMs,
      statementTimeoutMs: config.registry.statementTimeoutMs,
      defaults: config.tenantDatabase,
      versionCheckIntervalMs: config.registry.versionCheckIntervalMs,
      reconnectMinMs: config.registry.reconnectMinMs,
      reconnectMaxMs: config.registry.reconnectMaxMs,
      changeRetentionS: config.registry.changeRetentionS,
      maxConcurrentFullLoads: config.registry.maxConcurrentFullLoads,
      pageSize: config.registry.snapshotPageSize,
      snapshotFile,
      fingerprint: registryFingerprint(config.registry.databaseUrl, config.registry.embedded.dataDir, registry.schema),
      onConnect: async (feed) => {
        const migrated = await migrate(registry.pool, registry.schema, feed)
        if (migrated.applied.length > 0) logger.info({ from: migrated.from, to: migrated.to }, 'registry schema migrated')
      },
      // In this order: requests route by the new index first, then what depends on it; a
      // primary's workers last (they follow what this process already serves).
      listeners: [...indexListeners(state, descriptors, held, logger), metricsListener(metrics), ...writer === null ? [] : [writer], ...group === null ? [] : [group]],
      logger
    })
    cleanups.push(async () => await sync.stop())
    try {
      await sync.start()
    } catch (err) {
      if (String((err as { code?: unknown }).code).startsWith('TENANT_PROXY_ERR_')) throw err
      throw tpError('TENANT_PROXY_ERR_REGISTRY_UNREACHABLE', [`${describeError(err)} (and no usable last-known-good snapshot file)`], err)
    }
    return { source: sync, embedded: registry.embedded }
  }

  /** A worker's index, fed by its primary instead of a registry connection of its own. */
  const followPrimary = async (): Promise<{ source: IndexFollower, embedded: boolean }> => {
    const follower = new IndexFollower({ defaults: config.tenantDatabase, metrics, logger, listeners: [...indexListeners(state, descriptors, held, logger), workerMetricsListener(metrics)] })
    cleanups.push(async () => await follower.stop())
    follower.onDrain(() => { requestStop('the primary asked this worker to drain') })
    await follower.start()
    return { source: follower, embedded: false }
  }

  try {
    const { source, embedded } = role.kind === 'worker' ? await followPrimary() : await followRegistry()
    const reload = async (): Promise<boolean> => await source.reload()

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
    // A primary's pools only answer /ready's probes; the workers' see the traffic.
    if (servesTraffic) metrics.watchPools(pools)

    const ops = role.kind === 'worker'
      ? null
      : buildOpsApp({
        state,
        metrics,
        keyring,
        pools,
        logger,
        probeTimeoutMs: Math.min(config.upstream.connectTimeoutMs, 1_000),
        descriptorApi: { tokens: config.ops.descriptorApi.tokens, descriptors, retryAfterS: config.registry.unavailableRetryAfterS },
        tlsAsk: tlsAskHandler({ config, state, metrics }),
        group
      })
    if (ops !== null) cleanups.push(async () => await ops.close())

    let trafficAddress: AddressInfo
    if (group !== null) {
      trafficAddress = await group.start()
    } else {
      const traffic = startTraffic(config, logger, { state, descriptors, metrics, pools, held, cleanups })
      await traffic.listen({ host: config.traffic.host, port: config.traffic.port })
      trafficAddress = traffic.server.address() as AddressInfo
    }
    let opsAddress: AddressInfo | null = null
    if (ops !== null) {
      await ops.listen({ host: config.ops.host, port: config.ops.port })
      opsAddress = ops.server.address() as AddressInfo
      logger.info({ traffic: `${trafficAddress.address}:${trafficAddress.port}`, ops: `${opsAddress.address}:${opsAddress.port}`, workers: group?.expected ?? 1, embeddedRegistry: embedded, kid: keyring.signer.kid, alg: keyring.signer.alg }, 'tenant-proxy listening')
    } else {
      logger.debug({ traffic: `${trafficAddress.address}:${trafficAddress.port}` }, 'worker listening')
    }
    // Start-up lines matter now (deploy logs, tests waiting for them): do not leave them buffered.
    logger.flush()

    let stopping: Promise<void> | null = null
    return {
      traffic: { host: trafficAddress.address, port: trafficAddress.port },
      // A worker has no ops listener (its primary answers for it): port 0.
      ops: opsAddress === null ? { host: config.ops.host, port: 0 } : { host: opsAddress.address, port: opsAddress.port },
      state,
      metrics,
      keyring,
      reload,
      stopRequest,
      async stop () {
        stopping ??= (async () => {
          state.draining = true
          metrics.draining.set(1)
          // Nothing will resume them now: held requests get 503 + Retry-After (to retry elsewhere).
          held?.drain()
          logger.info({ drainDelayMs: config.shutdown.drainDelayMs }, 'draining: health answers 503 until listeners close')
          if (group !== null) {
            // Each worker runs the drain below (delay, then grace) and exits; the primary's /up
            // answers 503 meanwhile and its feed keeps the workers' indexes current until the last exits.
            await group.drain()
          } else if (config.shutdown.drainDelayMs > 0) {
            // Give the load balancer time to see /up fail before connections are refused.
            await new Promise((resolve) => setTimeout(resolve, config.shutdown.drainDelayMs))
          }
          await cleanup()
          logger.info('stopped')
          logger.flush()
        })()
        await stopping
      }
    }
  } catch (err) {
    await group?.drain()
    await cleanup()
    throw err
  }
}

/** What the traffic listener is built from. */
interface TrafficParts {
  readonly state: ProxyState
  readonly descriptors: DescriptorCache
  readonly metrics: ProxyMetrics
  readonly pools: UpstreamPools
  readonly held: HeldRequests | null
  readonly cleanups: Array<() => Promise<void>>
}

/** Builds the traffic app and its upstream agent (not listening yet); their shutdown goes onto `cleanups`. */
function startTraffic (config: Config, logger: Logger, parts: TrafficParts): ReturnType<typeof buildTrafficApp> {
  const { state, descriptors, metrics, pools, held, cleanups } = parts
  if (held === null) throw new Error('a traffic listener needs the held requests')
  const upstreamLog = logger.child({ component: 'upstream' })
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
  cleanups.push(async () => {
    // Close code 1001 "going away": Action Cable and other clients reconnect (to another instance).
    const closed = traffic.closeWebSockets(1001, 'server shutting down')
    if (closed > 0) logger.info({ websockets: closed }, 'closed WebSockets with 1001')
    await closeWithGrace(traffic, config.shutdown.graceMs, logger)
  })
  return traffic
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
/** What the data path reads follows the index: the state, cached descriptors, held requests (none in a primary). */
function indexListeners (state: ProxyState, descriptors: DescriptorCache, held: HeldRequests | null, logger: Logger): RegistryListener[] {
  return [stateListener(state), descriptorListener(descriptors), ...held === null ? [] : [heldListener(held, logger)]]
}

/**
 * A worker's registry gauges: its index's size and version, and the feed as its primary reports
 * it; loads and sync events are counted once, by the primary.
 */
function workerMetricsListener (metrics: ProxyMetrics): RegistryListener {
  return {
    indexReplaced (index) {
      metrics.observeIndex(index)
      metrics.registryLastLoad.set(index.loadedAt / 1000)
    },
    changesApplied (index) { metrics.observeIndex(index) },
    feedChanged (status) { metrics.observeFeed(status) }
  }
}

function stateListener (state: ProxyState): RegistryListener {
  return {
    indexReplaced (index, how) {
      state.index = index
      if (how.source === 'registry') state.lastSyncAt = index.loadedAt
    },
    feedChanged (status) {
      state.synced = status.synced
      state.stale = status.stale
      state.feedDeaf = status.deaf
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
