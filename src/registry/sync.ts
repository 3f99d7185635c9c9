/**
 * Keeps the proxy's registry index current and survives registry outages:
 *
 *   connect → LISTEN on the schema's channel → (migrate) → full snapshot → synced
 *   notification or periodic version check → read the change log after our version → apply
 *   connection lost → not synced (unknown hosts get 503) → reconnect with backoff → full resync
 *
 * LISTEN comes before the snapshot, so a write that commits after the snapshot is always
 * notified; a notification only says "something after version N" and the change log says what,
 * so coalesced or duplicate notifications lose nothing. Every index write (full load or delta)
 * goes through one queue. Known hosts keep routing from memory for as long as the registry is
 * away; the last-known-good file carries the index across a restart during an outage.
 */
import { hostname } from 'node:os'
import pg from 'pg'
import type { Logger } from 'pino'
import type { DescriptorCache } from '../descriptor/sign.js'
import type { ProxyMetrics } from '../ops/metrics.js'
import type { ProxyState } from '../proxy/state.js'
import { collectGarbage } from '../gc.js'
import { describeError } from './connect.js'
import { feedApplicationName } from './feed-name.js'
import { applyDelta, type DatabaseDefaults, type RegistryIndex } from './index.js'
import { indexFromFile, indexFromRegistry } from './load-index.js'
import { SnapshotFileError, SnapshotFileMissing, SnapshotWriteAborted, writeSnapshotFile } from './snapshot-file.js'
import type { RegistryDelta, RegistryStore } from './store.js'

/** Changes applied incrementally at most; a bigger backlog is cheaper as a full snapshot. */
const DELTA_LIMIT = 10_000
/** How long the start waits for the registry before routing from the snapshot file meanwhile. */
const FILE_FALLBACK_MS = 1_000
/** What reading the last-known-good file at start came to (see #loadFile). */
type FileOutcome = 'loaded' | 'not-needed' | 'none'
/** Pruning of the change log runs at most this often per proxy. */
const PRUNE_EVERY_MS = 3_600_000
/**
 * The snapshot file is rewritten once the index has been quiet this long (a burst of changes
 * costs one write, and a write never competes with the changes it would have to abort for).
 */
const FILE_QUIET_MS = 1_000

/** What the sync needs; built once by server.ts. */
export interface SyncOptions {
  readonly store: RegistryStore
  /** Connection string for the dedicated LISTEN connection (never logged). */
  readonly url: string
  readonly schema: string
  readonly applicationName: string
  readonly connectTimeoutMs: number
  readonly statementTimeoutMs: number
  readonly defaults: DatabaseDefaults
  readonly versionCheckIntervalMs: number
  readonly reconnectMinMs: number
  readonly reconnectMaxMs: number
  readonly changeRetentionS: number
  /** Last-known-good file path, or null. */
  readonly snapshotFile: string | null
  readonly fingerprint: string
  /** Runs after each (re)connection, before the resync (schema migrations). */
  readonly onConnect: () => Promise<void>
  readonly state: ProxyState
  readonly metrics: ProxyMetrics
  readonly descriptors: DescriptorCache
  readonly logger: Logger
  /**
   * Told after the index changed: the slugs of the tenants a delta touched (old and new slugs of a
   * renamed one), or null after a full load (any tenant may have changed). Held requests of paused
   * tenants are decided again on it (src/proxy/held-requests.ts).
   */
  readonly onTenantsChanged?: (slugs: readonly string[] | null) => void
  /**
   * Told of every index change as it is installed, in order: a new index (read state.index), or a
   * delta applied to it. The cluster primary forwards them to its workers (src/cluster/primary.ts).
   */
  readonly onIndexChange?: (change: IndexChange) => void
  /** Randomness for the backoff jitter (tests pin it). */
  readonly random?: () => number
}

/** A change of the index, as onIndexChange reports it. */
export type IndexChange = { readonly kind: 'full' } | { readonly kind: 'delta', readonly delta: Extract<RegistryDelta, { complete: true }> }

/** The registry sync of one proxy process. */
export class RegistrySync {
  readonly #o: SyncOptions
  readonly #log: Logger
  #client: pg.Client | null = null
  #queue: Promise<unknown> = Promise.resolve()
  #catchUpPending = false
  #reconnectTimer: NodeJS.Timeout | null = null
  #checkTimer: NodeJS.Timeout | null = null
  #attempt = 0
  #stopped = false
  #lastPruneAt = 0
  #fileTimer: NodeJS.Timeout | null = null
  #fileWriting: Promise<void> | null = null
  #fileDirty = false
  /** A full load happened since the last collection (see #collect). */
  #collectAfterWrite = false
  /** A version report is in flight on the feed connection (see #reportVersion). */
  #reporting = false
  /** The feed connection and the application_name last reported on it. */
  #reported: { client: pg.Client, name: string } | null = null

  constructor (opts: SyncOptions) {
    this.#o = opts
    this.#log = opts.logger.child({ component: 'registry' })
  }

  /**
   * Connects and loads the first index. When the registry cannot be reached, falls back to the
   * last-known-good file and keeps reconnecting in the background; throws only when neither works.
   */
  async start (): Promise<void> {
    const connecting = this.#connect()
    // A registry host that does not answer at all would hold the start for the whole connect
    // timeout: after FILE_FALLBACK_MS, start from the last-known-good file (when there is one)
    // and let the connection attempt finish in the background.
    let fallbackTimer: NodeJS.Timeout | undefined
    const slow = new Promise<'slow'>((resolve) => { fallbackTimer = setTimeout(() => resolve('slow'), FILE_FALLBACK_MS) })
    // The file is read at most once per start, so a refusal is logged once.
    let file: FileOutcome | null = null
    try {
      const first = await Promise.race([connecting.then(() => 'connected' as const), slow])
      if (first === 'slow') file = await this.#loadFile()
      if (file === 'loaded') {
        this.#log.warn('registry slow to answer at start: routing known hosts from the last-known-good snapshot file meanwhile')
        connecting.then(() => {
          this.#log.info('registry answered: routing from the registry, no longer from the snapshot file')
        }, (err: unknown) => {
          this.#dropClient()
          this.#log.warn({ error: describeError(err) }, 'registry unreachable at start: routing known hosts from the last-known-good snapshot file')
          this.#scheduleReconnect()
        })
      } else {
        await connecting
      }
    } catch (err) {
      this.#dropClient()
      if (this.#o.state.index === null) {
        file ??= await this.#loadFile()
        if (file !== 'loaded') throw err
        this.#log.warn({ error: describeError(err) }, 'registry unreachable at start: routing known hosts from the last-known-good snapshot file')
      } else {
        // The index came from the registry, whose connection broke right after the load.
        this.#log.warn({ error: describeError(err) }, 'registry connection lost right after the first load: routing known hosts from that load, reconnecting')
      }
      this.#scheduleReconnect()
    } finally {
      clearTimeout(fallbackTimer)
    }
    if (this.#o.versionCheckIntervalMs > 0) {
      this.#checkTimer = setInterval(() => { void this.#check() }, this.#o.versionCheckIntervalMs)
      this.#checkTimer.unref()
    }
  }

  /** Loads a full snapshot now (SIGHUP); keeps the current index on failure. */
  async reload (): Promise<boolean> {
    try {
      await this.#serial(async () => await this.#fullLoad('reload'))
      return true
    } catch (err) {
      this.#o.metrics.registryLoads.labels('error').inc()
      this.#log.error({ error: describeError(err) }, this.#o.state.index === null ? 'registry load failed' : 'registry reload failed; keeping the loaded index')
      return false
    }
  }

  /** Applies whatever the change log holds after the loaded version (also what a notification triggers). */
  async catchUp (): Promise<void> {
    // Coalesce: while one catch-up waits in the queue, more notifications add nothing.
    if (this.#catchUpPending) return await this.#queue.then(() => undefined, () => undefined)
    this.#catchUpPending = true
    try {
      await this.#serial(async () => {
        this.#catchUpPending = false
        await this.#applyChanges()
      })
    } catch (err) {
      this.#lost(this.#client, err)
    }
  }

  /** Stops the feed, timers and pending file write (the last write completes). */
  async stop (): Promise<void> {
    this.#stopped = true
    for (const timer of [this.#reconnectTimer, this.#checkTimer]) if (timer !== null) clearTimeout(timer)
    this.#dropClient()
    await this.#queue.catch(() => undefined)
    await this.#fileWriting
    // A change applied within the last write interval is not on disk yet: write it now.
    if (this.#fileTimer !== null || this.#fileDirty) {
      if (this.#fileTimer !== null) clearTimeout(this.#fileTimer)
      this.#fileTimer = null
      this.#writeFile()
      await this.#fileWriting
    }
  }

  async #connect (): Promise<void> {
    const o = this.#o
    const client = new pg.Client({
      connectionString: o.url,
      // Visible in pg_stat_activity (and `tenant-proxy registry status`) as this proxy's feed;
      // without a version until the first load on this connection (see #reportVersion).
      application_name: feedApplicationName(o.applicationName, null, hostname(), process.pid),
      connectionTimeoutMillis: o.connectTimeoutMs,
      query_timeout: o.statementTimeoutMs,
      keepAlive: true
    })
    this.#client = client
    client.on('error', (err) => this.#lost(client, err))
    client.on('end', () => this.#lost(client, null))
    client.on('notification', (msg) => {
      if (msg.channel !== o.schema) return
      const version = Number(msg.payload)
      const index = o.state.index
      if (index === null || !(version <= index.version)) void this.catchUp()
    })
    await client.connect()
    await client.query(`LISTEN "${o.schema}"`)
    await o.onConnect()
    await this.#serial(async () => await this.#fullLoad(this.#attempt > 0 ? 'resync after reconnect' : 'start'))
    if (this.#client !== client) throw new Error('registry connection lost during the resync')
    o.state.synced = true
    o.state.stale = false
    o.metrics.registryFeedConnected.set(1)
    o.metrics.registryStale.set(0)
  }

  /** Full snapshot → new index swapped in; cached descriptors of vanished hosts dropped. */
  async #fullLoad (reason: string): Promise<void> {
    const started = performance.now()
    const index = await indexFromRegistry(this.#o.store, this.#o.defaults, this.#o.state.index)
    this.#install(index)
    this.#o.descriptors.retain((host) => index.byHost.has(host))
    this.#o.onTenantsChanged?.(null)
    this.#reportVersion()
    this.#log.info({ reason, version: index.version, tenants: index.bySlug.size, domains: index.byHost.size, ms: Math.round(performance.now() - started) }, 'registry loaded')
    // The load's rows and the previous index are garbage now: collect them at once, and once more
    // after the snapshot file write that follows (its serialisation makes as much again).
    this.#collect()
    if (this.#o.snapshotFile !== null) {
      this.#collectAfterWrite = true
      this.#scheduleFileWrite(0)
    }
  }

  #install (index: RegistryIndex): void {
    const o = this.#o
    o.state.index = index
    o.state.lastSyncAt = index.loadedAt
    o.metrics.observeRegistryLoad(index)
    o.onIndexChange?.({ kind: 'full' })
  }

  /** One full garbage collection, to hand the memory of a big load back (see src/gc.ts). */
  #collect (): void {
    this.#collectAfterWrite = false
    const started = performance.now()
    if (collectGarbage()) this.#log.debug({ ms: Math.round(performance.now() - started) }, 'collected the garbage of a full registry load')
  }

  async #applyChanges (): Promise<void> {
    const o = this.#o
    const index = o.state.index
    if (index === null) return await this.#fullLoad('no index')
    const started = performance.now()
    const delta = await o.store.delta(index.version, DELTA_LIMIT)
    if (o.state.index !== index) return await this.#applyChanges()
    if (!delta.complete) return await this.#fullLoad(delta.reason)
    if (delta.registryId !== index.registryId) return await this.#fullLoad('registry id changed')
    const now = Date.now()
    if (delta.version > index.version) {
      const result = applyDelta(index, delta, o.defaults)
      if (!result.consistent) return await this.#fullLoad('change log names a tenant the index lacks')
      for (const host of result.removedHosts) o.descriptors.delete(host)
      o.onIndexChange?.({ kind: 'delta', delta })
      o.onTenantsChanged?.([...delta.tenantSlugs, ...delta.tenants.map((t) => t.slug)])
      o.metrics.observeIndex(index)
      this.#log.debug({ from: delta.since, to: delta.version, changes: delta.changes, ms: Math.round((performance.now() - started) * 100) / 100 }, 'registry changes applied')
      this.#scheduleFileWrite()
    }
    o.state.lastSyncAt = now
    o.metrics.registryLastSync.set(now / 1000)
    // Also when nothing changed: a report that failed or was overtaken by a reconnect is redone.
    this.#reportVersion()
  }

  /**
   * Publishes the index's version as the feed connection's application_name, which `--wait` and
   * `registry status` read from pg_stat_activity (format and reasons in feed-name.ts). Runs after
   * the index is installed, so a reader that sees version N knows requests already route by N.
   * At most one report is in flight; when it returns, the loop reports the version current then,
   * so a burst of changes costs one or two round trips and the latest version wins. A failed
   * report means the feed connection is not trustworthy: it is dropped and re-established.
   */
  #reportVersion (): void {
    if (this.#reporting) return
    this.#reporting = true
    void this.#reportLoop()
  }

  async #reportLoop (): Promise<void> {
    try {
      for (;;) {
        const client = this.#client
        const index = this.#o.state.index
        if (client === null || index === null) return
        const name = feedApplicationName(this.#o.applicationName, index.version, hostname(), process.pid)
        if (this.#reported?.client === client && this.#reported.name === name) return
        try {
          // SET cannot take bind parameters; set_config can (false: for the session, not the transaction).
          await client.query("SELECT set_config('application_name', $1, false)", [name])
          this.#reported = { client, name }
        } catch (err) {
          this.#lost(client, err)
          return
        }
      }
    } finally {
      // Cleared in the same step as the last check, so a change installed after it starts a new loop.
      this.#reporting = false
    }
  }

  /** Periodic check over the feed connection: heals missed notifications, detects a dead connection. */
  async #check (): Promise<void> {
    const client = this.#client
    if (client === null || !this.#o.state.synced) return
    try {
      const r = await client.query<{ version: string }>(`SELECT version FROM "${this.#o.schema}".registry_state`)
      const version = Number(r.rows[0]?.version ?? 0)
      const index = this.#o.state.index
      // Usually the notification of that version is just behind this answer on the same
      // connection; the catch-up is what matters, so this is only worth a debug line.
      if (index !== null && version > index.version) this.#log.debug({ loaded: index.version, registry: version }, 'version check found newer changes; catching up')
      await this.catchUp()
      await this.#prune()
    } catch (err) {
      this.#lost(client, err)
    }
  }

  async #prune (): Promise<void> {
    if (this.#o.changeRetentionS === 0 || Date.now() - this.#lastPruneAt < PRUNE_EVERY_MS) return
    this.#lastPruneAt = Date.now()
    const deleted = await this.#o.store.pruneChanges(this.#o.changeRetentionS)
    if (deleted > 0) this.#log.info({ deleted, retentionS: this.#o.changeRetentionS }, 'pruned the registry change log')
  }

  /** The feed connection (or a query on it) failed: stop trusting the index, reconnect. */
  #lost (client: pg.Client | null, err: unknown): void {
    if (client === null || client !== this.#client) return
    this.#dropClient()
    const o = this.#o
    const wasUp = o.state.synced
    o.state.synced = false
    o.metrics.registryFeedConnected.set(0)
    // A feed that was not up yet has nothing to lose: the attempt connecting it fails, and its
    // caller reports that and retries (a start without a registry is not a "lost" feed).
    if (this.#stopped || !wasUp) return
    this.#log.warn({ error: err === null ? 'connection closed' : describeError(err) }, 'registry change feed lost; known hosts keep routing, unknown hosts get 503 until it is back')
    this.#scheduleReconnect()
  }

  #dropClient (): void {
    const client = this.#client
    this.#client = null
    if (client !== null) {
      client.removeAllListeners('notification')
      // Keep an error listener: a late socket error on a dropped client must not crash the process.
      client.on('error', () => {})
      client.end().catch(() => undefined)
    }
  }

  #scheduleReconnect (): void {
    if (this.#stopped || this.#reconnectTimer !== null) return
    const o = this.#o
    // Exponential backoff with equal jitter: spreads many proxies' reconnects after a registry restart.
    const ceiling = Math.min(o.reconnectMaxMs, o.reconnectMinMs * 2 ** Math.min(this.#attempt, 20))
    const delay = Math.round(ceiling / 2 + (o.random ?? Math.random)() * ceiling / 2)
    this.#attempt++
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null
      this.#connect().then(() => {
        this.#o.metrics.registryFeedReconnects.inc()
        this.#log.info({ attempts: this.#attempt }, 'registry change feed reconnected and resynced')
        this.#attempt = 0
      }, (err: unknown) => {
        this.#dropClient()
        this.#log.debug({ error: describeError(err), attempt: this.#attempt }, 'registry reconnect failed')
        this.#scheduleReconnect()
      })
    }, delay)
    this.#reconnectTimer.unref()
  }

  /** Runs index writers one at a time, in order. */
  async #serial<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn)
    this.#queue = run.catch(() => undefined)
    return await run
  }

  /**
   * Routes from the last-known-good file while the registry has not answered. 'not-needed': the
   * registry's index arrived while the file was read (it is fresher; the file is not used);
   * 'none': no file, or one refused (logged with the reason).
   */
  async #loadFile (): Promise<FileOutcome> {
    const o = this.#o
    if (o.snapshotFile === null) return 'none'
    try {
      const { index, writtenAt } = await indexFromFile(o.snapshotFile, o.fingerprint, o.defaults)
      if (o.state.index !== null) {
        this.#log.debug({ file: o.snapshotFile }, 'the registry answered while the snapshot file was read; the file is not used')
        return 'not-needed'
      }
      o.state.index = index
      o.state.stale = true
      o.state.synced = false
      o.metrics.observeRegistryLoad(index)
      o.metrics.registryStale.set(1)
      o.onIndexChange?.({ kind: 'full' })
      this.#log.warn({ file: o.snapshotFile, version: index.version, tenants: index.bySlug.size, domains: index.byHost.size, writtenAt }, 'loaded the last-known-good snapshot file')
      this.#collect()
      return 'loaded'
    } catch (err) {
      // No file is what a first start looks like (the file is written after the first load).
      if (err instanceof SnapshotFileMissing) {
        if (o.state.index === null) this.#log.info({ file: o.snapshotFile }, 'no last-known-good snapshot file yet (it is written after the first registry load); waiting for the registry')
      } else {
        const reason = err instanceof SnapshotFileError ? err.message : describeError(err)
        this.#log.error({ file: o.snapshotFile, reason }, 'last-known-good snapshot file refused')
      }
      return o.state.index === null ? 'none' : 'not-needed'
    }
  }

  #scheduleFileWrite (delayMs = FILE_QUIET_MS): void {
    if (this.#o.snapshotFile === null || this.#stopped) return
    if (this.#fileWriting !== null) {
      this.#fileDirty = true
      return
    }
    // Restart the quiet period on every change.
    if (this.#fileTimer !== null) clearTimeout(this.#fileTimer)
    this.#fileTimer = setTimeout(() => {
      this.#fileTimer = null
      this.#writeFile()
    }, delayMs)
  }

  /** Starts writing the current index to the snapshot file (never a stale one: it came from there). */
  #writeFile (): void {
    const file = this.#o.snapshotFile
    const index = this.#o.state.index
    if (file === null || index === null || this.#o.state.stale) return
    this.#fileDirty = false
    const version = index.version
    const unchanged = (): boolean => this.#o.state.index === index && index.version === version
    const serialized = (): void => { if (this.#collectAfterWrite) this.#collect() }
    this.#fileWriting = writeSnapshotFile(file, index, this.#o.fingerprint, unchanged, serialized).then(({ bytes }) => {
      this.#log.debug({ file, version, bytes }, 'wrote the last-known-good snapshot file')
    }, (err: unknown) => {
      if (err instanceof SnapshotWriteAborted) {
        this.#fileDirty = true
        return
      }
      this.#log.error({ file, error: describeError(err) }, 'cannot write the last-known-good snapshot file')
    }).finally(() => {
      this.#fileWriting = null
      if (this.#collectAfterWrite && !this.#fileDirty) this.#collect()
      if (this.#fileDirty && !this.#stopped) this.#scheduleFileWrite()
    })
  }
}
