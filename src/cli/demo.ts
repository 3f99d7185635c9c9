/**
 * `tenant-proxy demo` (`npm run demo`): the whole thing on one machine with nothing installed
 * but Node: the embedded registry, two example tenants, an echo app that verifies descriptors,
 * and the proxy in front, with curl lines to try.
 */
import type { Config } from '../config/load.js'
import { generateKey } from '../descriptor/generate.js'
import { loadKeyring } from '../descriptor/keyring.js'
import { startEchoUpstream } from '../demo/echo-upstream.js'
import { isTpError } from '../errors.js'
import { createLogger } from '../log.js'
import { openRegistry } from '../registry/connect.js'
import { migrate } from '../registry/migrate.js'
import type { RegistryStore } from '../registry/store.js'
import { startProxy } from '../server.js'
import type { Command } from './command.js'

/** The example tenants the demo makes sure exist. */
export const DEMO_TENANTS = [
  { slug: 'acme', databaseName: 'acme_production', domains: ['acme.localhost'] },
  { slug: 'globex', databaseName: 'globex_production', domains: ['globex.localhost', 'www.globex.localhost'] }
] as const

export const demoCommand: Command = {
  name: 'demo',
  summary: 'Run a self-contained demo: embedded registry, two tenants, an echo app that verifies descriptors.',
  usage: 'tenant-proxy demo [--config <file>]',
  help: 'Uses the configured registry (embedded by default) and ports; signs with the configured key, or a throwaway ES256 key when none is set.',
  options: {},
  positionals: [0, 0],
  async run (ctx) {
    const base = ctx.config()
    const keys = base.descriptor.keys.length > 0 ? base.descriptor.keys : [{ kid: null, alg: 'ES256' as const, key: generateKey('ES256').key }]
    const keyring = loadKeyring(keys)
    const echo = await startEchoUpstream({ keyring, issuer: base.deploymentId, audience: base.descriptor.audience, header: base.descriptor.header })
    const config: Config = {
      ...base,
      descriptor: { ...base.descriptor, keys },
      upstream: { ...base.upstream, urls: [echo.origin], pools: {} },
      shutdown: { drainDelayMs: 0, graceMs: 5_000 }
    }
    const logger = createLogger(config.log.level)
    try {
      // The proxy starts (and owns) the embedded registry; seeding then joins it and we reload.
      const proxy = await startProxy(config, logger)
      await seedTenants(config, logger)
      await proxy.reload()
      const url = `http://127.0.0.1:${proxy.traffic.port}`
      ctx.io.err([
        '',
        `tenant-proxy demo is running: traffic ${url}, ops http://127.0.0.1:${proxy.ops.port}, echo app ${echo.origin}`,
        'Try (each host reaches its own database; the echo app verifies the signed descriptor):',
        `  curl -s -H 'Host: acme.localhost' ${url}/`,
        `  curl -s -H 'Host: globex.localhost' ${url}/orders`,
        `  curl -s -H 'Host: www.globex.localhost' ${url}/      # www. alias`,
        `  curl -s -H 'Host: nobody.localhost' ${url}/          # unknown host: 404 with an error code`,
        `  curl -s -H 'Host: anything' ${url}${config.traffic.healthPath}                 # health, for any host`,
        `  curl -s http://127.0.0.1:${proxy.ops.port}/metrics | grep tenant_proxy_requests_total`,
        '  node dist/src/main.js tenants state acme suspended   # in another shell, then: kill -HUP <pid> (or wait for the reload interval)',
        'Ctrl-C stops.',
        ''
      ].join('\n'))
      await ctx.stopSignal
      await proxy.stop()
    } finally {
      await echo.close()
    }
    return 0
  }
}

async function seedTenants (config: Config, logger: ReturnType<typeof createLogger>): Promise<void> {
  const registry = await openRegistry(config, { debug: (m) => logger.debug(m), info: (m) => logger.info(m), warn: (m) => logger.warn(m) }, { max: 1 })
  try {
    await migrate(registry.pool, registry.schema)
    for (const t of DEMO_TENANTS) await addIfMissing(registry.store, t)
  } finally {
    await registry.close()
  }
}

async function addIfMissing (store: RegistryStore, t: typeof DEMO_TENANTS[number]): Promise<void> {
  try {
    await store.addTenant({ slug: t.slug, databaseName: t.databaseName, databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: t.domains })
  } catch (err) {
    if (!isTpError(err, 'TENANT_PROXY_ERR_TENANT_EXISTS')) throw err
  }
}
