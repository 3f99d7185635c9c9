/**
 * Starts a real tenant-proxy (traffic and ops listeners on port 0) against a throwaway registry
 * database, with tenants created through the registry store.
 */
import { generateKeyPairSync } from 'node:crypto'
import pg from 'pg'
import { loadConfig, type Config } from '../../src/config/load.js'
import { createLogger } from '../../src/log.js'
import { migrate } from '../../src/registry/migrate.js'
import { RegistryStore, type NewTenant } from '../../src/registry/store.js'
import { startProxy, type ProxyHandle } from '../../src/server.js'
import type { Test } from 'tap'
import { throwawayDatabase } from './postgres.js'

/** A fresh P-256 private key PEM. */
export function es256Pem (): string {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
}

/** A tenant to seed, with defaults for everything but slug and domains. */
export type SeedTenant = Partial<NewTenant> & { slug: string, domains: string[] }

/** A registry database with the schema, plus a store to write to it. */
export interface TestRegistry { url: string, store: RegistryStore, pool: pg.Pool }

/** Creates a migrated throwaway registry and seeds tenants. */
export async function testRegistry (t: Test, tenants: readonly SeedTenant[] = []): Promise<TestRegistry> {
  const url = await throwawayDatabase(t)
  const pool = new pg.Pool({ connectionString: url, max: 2 })
  // The database is dropped WITH (FORCE) at teardown, which may end idle clients before pool.end().
  pool.on('error', () => {})
  t.teardown(async () => await pool.end())
  await migrate(pool, 'tenant_proxy')
  const store = new RegistryStore(pool, 'tenant_proxy')
  for (const tenant of tenants) {
    await store.addTenant({ databaseName: tenant.slug.replaceAll('-', '_'), databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, ...tenant })
  }
  return { url, store, pool }
}

/** A config for tests: loopback, port 0, silent logs, no drain delay; `env` overrides. */
export function testConfig (registryUrl: string, upstreamOrigin: string, env: Record<string, string> = {}): Config {
  return loadConfig({
    env: {
      REGISTRY_DATABASE_URL: registryUrl,
      TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
      TENANT_PROXY_TRAFFIC_PORT: '0',
      TENANT_PROXY_OPS_HOST: '127.0.0.1',
      TENANT_PROXY_OPS_PORT: '0',
      TENANT_PROXY_LOG_LEVEL: 'silent',
      TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
      TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: '0',
      TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
      TENANT_PROXY_UPSTREAM_URLS: upstreamOrigin,
      // A key file given by the caller replaces the generated key (the loader refuses both).
      ...(env.TENANT_PROXY_DESCRIPTOR_KEYS_FILE === undefined ? { TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem() } : {}),
      ...env
    }
  })
}

/** Starts a proxy and stops it at teardown. */
export async function startTestProxy (t: Test, config: Config, logLines?: string[]): Promise<ProxyHandle & { url: string, opsUrl: string }> {
  const destination = logLines === undefined ? undefined : { write: (line: string) => { logLines.push(line) } }
  const logger = createLogger(logLines === undefined ? config.log.level : 'info', destination)
  const proxy = await startProxy(config, logger)
  t.teardown(async () => await proxy.stop())
  return Object.assign(proxy, { url: `http://127.0.0.1:${proxy.traffic.port}`, opsUrl: `http://127.0.0.1:${proxy.ops.port}` })
}
