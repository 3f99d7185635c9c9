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
import { buildTrafficApp } from './proxy/app.js'
import { createProxyState, type ProxyState } from './proxy/state.js'
import { UpstreamAgent } from './proxy/upstream-agent.js'
import { UpstreamPools } from './proxy/upstream-pools.js'
import { describeError, openRegistry, type RegistryConnection } from './registry/connect.js'
import { buildIndex } from './registry/index.js'
import { migrate } from './registry/migrate.js'

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
  const cleanups: Array<() => Promise<void>> = []
  const cleanup = async (): Promise<void> => {
    for (const fn of cleanups.reverse()) await fn().catch((err: unknown) => logger.warn({ err }, 'cleanup step failed'))
    cleanups.length = 0
  }

  try {
    const registry: RegistryConnection = await openRegistry(config, registryLog(logger), { max: 2 })
    cleanups.push(async () => await registry.close())
    const migrated = await migrate(registry.pool, registry.schema)
    if (migrated.applied.length > 0) logger.info({ from: migrated.from, to: migrated.to }, 'registry schema migrated')

    let loading: Promise<boolean> | null = null
    const reload = async (): Promise<boolean> => {
      // Coalesce: a SIGHUP during a timer reload waits for that one instead of starting another.
      loading ??= (async () => {
        const started = performance.now()
        try {
          const snapshot = await registry.store.snapshot()
          const index = buildIndex(snapshot, config.tenantDatabase, state.index)
          state.index = index
          metrics.observeRegistryLoad(index)
          logger.info({ version: index.version, tenants: index.bySlug.size, domains: index.byHost.size, ms: Math.round(performance.now() - started) }, 'registry loaded')
          return true
        } catch (err) {
          metrics.registryLoads.labels('error').inc()
          logger.error({ error: describeError(err) }, state.index === null ? 'registry load failed' : 'registry reload failed; keeping the loaded index')
          return false
        } finally {
          loading = null
        }
      })()
      return await loading
    }
    if (!await reload()) throw new Error('the first registry snapshot could not be loaded')

    const pools = new UpstreamPools(config.upstream)
    const dispatcher = new UpstreamAgent({
      connections: config.upstream.connections,
      connect: { timeout: config.upstream.connectTimeoutMs },
      headersTimeout: config.upstream.headersTimeoutMs,
      bodyTimeout: config.upstream.bodyTimeoutMs
    })
    // Runs after the traffic listener closed (graceful part done): whatever is still pending
    // upstream has no client left to answer.
    cleanups.push(async () => await dispatcher.destroy())

    const traffic = buildTrafficApp({ config, state, descriptors, metrics, logger, dispatcher })
    const ops = buildOpsApp({ state, metrics, keyring, origins: pools.all(), logger, probeTimeoutMs: Math.min(config.upstream.connectTimeoutMs, 1_000) })
    cleanups.push(async () => await ops.close())
    cleanups.push(async () => await closeWithGrace(traffic, config.shutdown.graceMs, logger))
    await traffic.listen({ host: config.traffic.host, port: config.traffic.port })
    await ops.listen({ host: config.ops.host, port: config.ops.port })
    const trafficAddress = traffic.server.address() as AddressInfo
    const opsAddress = ops.server.address() as AddressInfo

    const timer = config.registry.reloadIntervalMs > 0 ? setInterval(() => { void reload() }, config.registry.reloadIntervalMs) : null
    timer?.unref()
    cleanups.push(async () => { if (timer !== null) clearInterval(timer) })

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

function registryLog (logger: Logger): { debug (msg: string): void, info (msg: string): void, warn (msg: string): void } {
  const child = logger.child({ component: 'registry' })
  return { debug: (m) => child.debug(m), info: (m) => child.info(m), warn: (m) => child.warn(m) }
}
