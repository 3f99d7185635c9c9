/**
 * `tenant-proxy serve` (and `npm start`): runs the proxy until SIGTERM/SIGINT; with `workers` > 1,
 * as a primary that forks that many worker processes (each of them runs this command too).
 */
import cluster from 'node:cluster'
import { availableParallelism } from 'node:os'
import { createLogger } from '../log.js'
import { startProxy, type ProxyRole } from '../server.js'
import type { Command } from './command.js'

/** The process count `workers` asks for ('auto': one per CPU this process may use). */
export function workerCount (setting: number | 'auto', cpus: number = availableParallelism()): number {
  return setting === 'auto' ? Math.max(1, cpus) : setting
}

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Run the proxy: traffic listener (default :8080) and ops listener (default :9394).',
  usage: 'tenant-proxy serve [--config <file>]',
  help: `Loads the registry snapshot (migrating the schema first), then routes every request by Host.
SIGHUP reloads the registry; SIGTERM drains (/up answers 503, in-flight requests finish) and exits.
Without registry.databaseUrl (REGISTRY_DATABASE_URL) an embedded PostgreSQL is started under registry.embedded.dataDir.
With workers > 1 (TENANT_PROXY_WORKERS), that many processes share the traffic port; signals go to the primary.`,
  options: {},
  positionals: [0, 0],
  async run (ctx) {
    const config = ctx.config()
    const count = workerCount(config.workers)
    const role: ProxyRole = cluster.isWorker ? { kind: 'worker' } : count > 1 ? { kind: 'primary', workers: count } : { kind: 'single' }
    const base = createLogger(config.log.level)
    // A worker's lines (access lines too) carry its cluster id, which the primary's "worker
    // listening" line maps to a pid: the group writes to one stdout.
    const logger = role.kind === 'worker' ? base.child({ worker: cluster.worker?.id }) : base
    const proxy = await startProxy(config, logger, role)
    ctx.onReload(() => {
      logger.info('SIGHUP: reloading the registry')
      void proxy.reload()
    })
    const reason = await Promise.race([ctx.stopSignal, proxy.stopRequest])
    logger.info({ reason }, 'stopping')
    await proxy.stop()
    return 0
  }
}
