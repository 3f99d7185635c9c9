/**
 * Opens the registry database: the configured URL, or the embedded PostgreSQL when none is set.
 */
import pg from 'pg'
import type { Config } from '../config/load.js'
import { tpError } from '../errors.js'
import { redactUrls } from '../redact.js'
import type { EmbeddedRegistry } from './embedded.js'
import { RegistryStore } from './store.js'

/** A log sink the registry connection reports to (pino's logger fits). */
export interface RegistryLogger {
  debug (msg: string): void
  info (msg: string): void
  warn (msg: string): void
}

/** An open registry: pool, SQL store and whatever must be closed with it. */
export interface RegistryConnection {
  readonly pool: pg.Pool
  readonly store: RegistryStore
  readonly schema: string
  /** Connection string (with password): for dedicated clients such as the change feed; never log it. */
  readonly url: string
  /**
   * Connection string of the change feed's LISTEN connection: registry.listenUrl (direct to
   * PostgreSQL when `url` goes through a transaction-mode pooler, which loses notifications), else `url`.
   */
  readonly listenUrl: string
  readonly embedded: boolean
  close (): Promise<void>
}

/** Connects to the registry (starting the embedded one when no URL is configured) and checks it answers. */
export async function openRegistry (config: Config, logger: RegistryLogger, opts: { max?: number, check?: boolean } = {}): Promise<RegistryConnection> {
  const registry = config.registry
  let embedded: EmbeddedRegistry | null = null
  let url = registry.databaseUrl
  if (url === null) {
    // Loaded only here: a proxy or CLI with a registry URL never needs the embedded server's code.
    const { startEmbeddedRegistry } = await import('./embedded.js')
    embedded = await startEmbeddedRegistry({ dataDir: registry.embedded.dataDir, port: registry.embedded.port, logger })
    url = embedded.url
  }
  const pool = new pg.Pool({
    connectionString: url,
    application_name: registry.applicationName,
    connectionTimeoutMillis: registry.connectTimeoutMs,
    statement_timeout: registry.statementTimeoutMs,
    max: opts.max ?? 4
  })
  // An idle client that loses its server emits 'error' on the pool; without a listener Node would crash.
  pool.on('error', (err) => logger.warn(`registry connection lost: ${describeError(err)}`))
  // The proxy skips the check: it can start from its last-known-good file and connect later.
  if (opts.check !== false) {
    try {
      await pool.query('SELECT 1')
    } catch (err) {
      await pool.end().catch(() => undefined)
      await embedded?.stop()
      throw tpError('TENANT_PROXY_ERR_REGISTRY_UNREACHABLE', [describeError(err)], err)
    }
  }
  return {
    pool,
    store: new RegistryStore(pool, registry.schema),
    schema: registry.schema,
    url,
    listenUrl: registry.listenUrl ?? url,
    embedded: embedded !== null,
    async close () {
      await pool.end()
      await embedded?.stop()
    }
  }
}

/** A pg/network error as one line without credentials (every URL's userinfo redacted). */
export function describeError (err: unknown): string {
  const e = err as { code?: string, message?: string }
  const message = redactUrls(e.message ?? String(err))
  const described = e.code !== undefined && !message.includes(e.code) ? `${message} (${e.code})` : message
  // PgBouncer's refusal of a startup parameter it does not know (statement_timeout, sent by every
  // registry connection): the fix is in the pooler's configuration, so say where.
  return /unsupported startup parameter/.test(message)
    ? `${described}; PgBouncer refuses it unless its ignore_startup_parameters lists it (docs/operations.md, "Poolers (PgBouncer)")`
    : described
}
