/**
 * SQL on a tenant database server with its admin credentials: whether a database exists, creating
 * and dropping one, listing them, and checking that one accepts connections. Used by provisioning
 * (`tenants create`, `tenants drop`), `doctor`, and written so a move between servers can reuse it.
 * Database and role names are validated by the callers (src/registry/names.ts) and quoted here
 * regardless. Errors name the server, never the URL.
 */
import pg from 'pg'
import { tpError } from '../errors.js'
import { describeError } from '../registry/connect.js'
import { quoteIdent } from '../registry/sql.js'
import { urlForDatabase } from './credentials.js'

/** A database as the server lists it. */
export interface ServerDatabase {
  readonly name: string
  readonly isTemplate: boolean
  readonly allowConnections: boolean
  /** COMMENT ON DATABASE, which provisioning sets (doctor shows it for orphans). */
  readonly comment: string | null
  readonly owner: string
}

/** Options of an admin connection. */
export interface AdminOptions {
  readonly connectTimeoutMs: number
  readonly applicationName?: string
}

/** An admin session on one server, opened lazily and closed by `close()`. */
export class ServerAdmin {
  readonly name: string
  readonly #url: string
  readonly #opts: AdminOptions
  #client: pg.Client | null = null
  #connecting: Promise<pg.Client> | null = null

  /** `name` is the registry server's (for messages); `url` its admin URL (never printed). */
  constructor (name: string, url: string, opts: AdminOptions) {
    this.name = name
    this.#url = url
    this.#opts = opts
  }

  /** The admin URL with another database (for tools and per-database checks; never print it). */
  urlFor (database: string): string {
    return urlForDatabase(this.#url, database)
  }

  /** Runs one statement on the admin connection. */
  async query<R extends pg.QueryResultRow> (text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    const client = await this.#connect()
    return await client.query<R>(text, values)
  }

  /** The server's version number (server_version_num, e.g. 150020). */
  async versionNum (): Promise<number> {
    const r = await this.query<{ v: string }>('SHOW server_version_num')
    return Number(r.rows[0]?.v ?? 0)
  }

  async databaseExists (name: string): Promise<boolean> {
    const r = await this.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
    return r.rowCount === 1
  }

  async roleExists (name: string): Promise<boolean> {
    const r = await this.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [name])
    return r.rowCount === 1
  }

  /** Every database on the server. */
  async listDatabases (): Promise<ServerDatabase[]> {
    const r = await this.query<{ name: string, is_template: boolean, allow_conn: boolean, comment: string | null, owner: string }>(
      `SELECT d.datname AS name, d.datistemplate AS is_template, d.datallowconn AS allow_conn,
              shobj_description(d.oid, 'pg_database') AS comment, pg_get_userbyid(d.datdba) AS owner
       FROM pg_database d ORDER BY d.datname`)
    return r.rows.map((x) => ({ name: x.name, isTemplate: x.is_template, allowConnections: x.allow_conn, comment: x.comment, owner: x.owner }))
  }

  /** Size of a database in bytes, or null when it does not exist. */
  async databaseSize (name: string): Promise<number | null> {
    const r = await this.query<{ size: string | null }>('SELECT pg_database_size(oid) AS size FROM pg_database WHERE datname = $1', [name])
    const size = r.rows[0]?.size
    return size === undefined || size === null ? null : Number(size)
  }

  /**
   * CREATE DATABASE (never inside a transaction: PostgreSQL refuses that), with an owner, a
   * template and a comment saying who created it and why, so a database left behind by a process
   * that died mid-way is recognisable (`doctor` lists orphans with their comment).
   */
  async createDatabase (name: string, opts: { owner?: string | null, template?: string | null, comment?: string | null } = {}): Promise<void> {
    let sql = `CREATE DATABASE ${quoteIdent(name)}`
    if (opts.owner != null) sql += ` OWNER ${quoteIdent(opts.owner)}`
    if (opts.template != null) sql += ` TEMPLATE ${quoteIdent(opts.template)}`
    await this.query(sql)
    if (opts.comment != null) await this.query(`COMMENT ON DATABASE ${quoteIdent(name)} IS ${pg.escapeLiteral(opts.comment)}`)
  }

  /** Sets (or with null clears) a database's comment. */
  async commentDatabase (name: string, comment: string | null): Promise<void> {
    await this.query(`COMMENT ON DATABASE ${quoteIdent(name)} IS ${comment === null ? 'NULL' : pg.escapeLiteral(comment)}`)
  }

  /**
   * DROP DATABASE IF EXISTS, ending its sessions first (WITH (FORCE), PostgreSQL 13+): callers have
   * taken the tenant out of routing, so a session still open is an app's idle pool connection.
   */
  async dropDatabase (name: string): Promise<void> {
    const force = await this.versionNum() >= 130_000
    if (!force) {
      await this.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name])
    }
    await this.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}${force ? ' WITH (FORCE)' : ''}`)
  }

  /** Connects to `database` itself (with the admin credentials) and runs SELECT 1; the error, or null. */
  async probeDatabase (database: string): Promise<string | null> {
    const client = new pg.Client({ connectionString: this.urlFor(database), connectionTimeoutMillis: this.#opts.connectTimeoutMs, application_name: this.#opts.applicationName ?? 'tenant-proxy' })
    client.on('error', () => {})
    try {
      await client.connect()
      await client.query('SELECT 1')
      return null
    } catch (err) {
      return describeError(err)
    } finally {
      await client.end().catch(() => undefined)
    }
  }

  async close (): Promise<void> {
    const client = this.#client
    this.#client = null
    this.#connecting = null
    await client?.end().catch(() => undefined)
  }

  async #connect (): Promise<pg.Client> {
    if (this.#client !== null) return this.#client
    this.#connecting ??= (async () => {
      const client = new pg.Client({ connectionString: this.#url, connectionTimeoutMillis: this.#opts.connectTimeoutMs, application_name: this.#opts.applicationName ?? 'tenant-proxy' })
      // A server that goes away between statements surfaces on the next query; no crash meanwhile.
      client.on('error', () => {})
      try {
        await client.connect()
      } catch (err) {
        this.#connecting = null
        throw tpError('TENANT_PROXY_ERR_SERVER_UNREACHABLE', [this.name, describeError(err)], err)
      }
      this.#client = client
      return client
    })()
    return await this.#connecting
  }
}
