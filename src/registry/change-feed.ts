/**
 * The change feed: one connection to the registry that LISTENs on the schema's channel and says
 * when something changed after a version, and when the connection died. The sync runs its other
 * registry queries (deltas, version checks, reports) on the same connection through run(), one at
 * a time, so a proxy holds one registry connection in steady state.
 *
 * Only a dead connection is "lost": an 'error' or 'end' event, or a query failing in a way that
 * leaves the connection unusable (see isConnectionError). A query refused by the server (a
 * statement timeout, a missing privilege) leaves a working connection and is the caller's to retry.
 */
import { hostname } from 'node:os'
import pg from 'pg'
import { parseAnnouncement, type Announcement } from './announcement.js'
import { feedApplicationName } from './feed-name.js'

/** What a feed connection needs; the URL carries credentials and is never logged. */
export interface ChangeFeedOptions {
  readonly url: string
  readonly schema: string
  readonly applicationName: string
  readonly connectTimeoutMs: number
  readonly statementTimeoutMs: number
  /** This process's heartbeat channel (src/registry/heartbeat.ts), LISTENed beside the schema's. */
  readonly heartbeatChannel?: string
}

/** What the feed tells its owner. */
export interface ChangeFeedEvents {
  /** A notification on the channel: the registry committed a version, with the change when it is small (src/registry/announcement.ts). */
  notified (announcement: Announcement): void
  /** A notification on the heartbeat channel. */
  heartbeat? (payload: string | undefined): void
  /** The connection died (null: it ended); called at most once, never after close(). */
  lost (err: unknown): void
}

/** One LISTEN connection; open it once, close it once, make a new one to reconnect. */
export class ChangeFeed {
  readonly #o: ChangeFeedOptions
  readonly #events: ChangeFeedEvents
  readonly #client: pg.Client
  #queue: Promise<unknown> = Promise.resolve()
  #dead = false

  constructor (opts: ChangeFeedOptions, events: ChangeFeedEvents) {
    this.#o = opts
    this.#events = events
    this.#client = new pg.Client({
      connectionString: opts.url,
      // Visible in pg_stat_activity (and `tenant-proxy registry status`) as this proxy's feed;
      // without a version until the first load on this connection (see reportVersion).
      application_name: feedApplicationName(opts.applicationName, null, hostname(), process.pid),
      connectionTimeoutMillis: opts.connectTimeoutMs,
      // The server-side limit: a statement over it is cancelled (57014) and the connection stays
      // usable. pg's client-side query_timeout is not set: it gives up on the answer without
      // cancelling, leaving the connection busy with a statement nobody reads.
      statement_timeout: opts.statementTimeoutMs,
      keepAlive: true
    })
    this.#client.on('error', (err) => this.#die(err))
    this.#client.on('end', () => this.#die(null))
    this.#client.on('notification', (msg) => {
      if (msg.channel === opts.schema) this.#events.notified(parseAnnouncement(msg.payload))
      else if (msg.channel === opts.heartbeatChannel) this.#events.heartbeat?.(msg.payload)
    })
  }

  /** True until the connection died or was closed. */
  get alive (): boolean {
    return !this.#dead
  }

  /** Connects and LISTENs; throws (and closes) on failure. */
  async open (): Promise<void> {
    try {
      await this.#client.connect()
      // One statement, so both LISTENs hold on the same server session even behind a pooler.
      const heartbeat = this.#o.heartbeatChannel
      await this.#client.query(`LISTEN "${this.#o.schema}"${heartbeat === undefined ? '' : `; LISTEN "${heartbeat}"`}`)
    } catch (err) {
      this.close()
      throw err
    }
  }

  /**
   * Runs `fn` with the connection, after any run before it: a transaction inside `fn` never
   * interleaves with another caller's statements. A connection-level failure marks the feed lost.
   */
  async run<T> (fn: (client: pg.ClientBase) => Promise<T>): Promise<T> {
    const go = async (): Promise<T> => {
      if (this.#dead) throw new Error('registry feed connection closed')
      try {
        return await fn(this.#client)
      } catch (err) {
        if (isConnectionError(err)) this.#die(err)
        throw err
      }
    }
    const run = this.#queue.then(go, go)
    this.#queue = run.catch(() => undefined)
    return await run
  }

  /** Closes the connection; no event follows. */
  close (): void {
    this.#dead = true
    this.#client.removeAllListeners('notification')
    this.#client.removeAllListeners('end')
    // Keep an error listener: a late socket error on a closed client must not crash the process.
    this.#client.removeAllListeners('error')
    this.#client.on('error', () => {})
    this.#client.end().catch(() => undefined)
  }

  #die (err: unknown): void {
    if (this.#dead) return
    this.close()
    this.#events.lost(err)
  }
}

/**
 * SQLSTATE classes and codes after which the connection is gone or going: connection exceptions
 * (08), the server shutting down or not accepting (57P01–57P03), too many connections (53300).
 * An error without a SQLSTATE is the client's own (socket closed, connection terminated).
 */
export function isConnectionError (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return true
  return code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300'
}
