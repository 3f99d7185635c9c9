/**
 * `tenant-proxy serve` (and `npm start`): runs the proxy until SIGTERM/SIGINT.
 */
import { createLogger } from '../log.js'
import { startProxy } from '../server.js'
import type { Command } from './command.js'

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Run the proxy: traffic listener (default :8080) and ops listener (default :9394).',
  usage: 'tenant-proxy serve [--config <file>]',
  help: `Loads the registry snapshot (migrating the schema first), then routes every request by Host.
SIGHUP reloads the registry; SIGTERM drains (/up answers 503, in-flight requests finish) and exits.
Without registry.databaseUrl (REGISTRY_DATABASE_URL) an embedded PostgreSQL is started under registry.embedded.dataDir.`,
  options: {},
  positionals: [0, 0],
  async run (ctx) {
    const config = ctx.config()
    const logger = createLogger(config.log.level)
    const proxy = await startProxy(config, logger)
    ctx.onReload(() => {
      logger.info('SIGHUP: reloading the registry')
      void proxy.reload()
    })
    const signal = await ctx.stopSignal
    logger.info({ signal }, 'stopping')
    await proxy.stop()
    return 0
  }
}
