/**
 * The sync loop: keeps the proxy's registry index current and survives registry outages.
 *
 *   connect the feed (LISTEN) → (migrate) → resync → synced
 *   notification carrying the change that follows our version → apply it (no query)
 *   other notification or periodic version check → read the change log after our version → apply
 *   feed connection lost → not synced (unknown hosts get 503) → reconnect with backoff → resync
 *
 * LISTEN comes before the resync, so a write that commits after it is always notified; a
 * notification says "version N committed", with N's changes when they are small (an announcement,
 * src/registry/announcement.ts), and is applied only when the index is at N - 1; otherwise the
 * change log says what changed, so coalesced, duplicate or lost notifications lose nothing. Every index write (full load or delta) goes through one
 * queue. Known hosts keep routing from memory for as long as the registry is away; the
 * last-known-good file carries the index across a restart during an outage.
 *
 * The loop owns the index and announces what happened to its listeners (src/registry/listener.ts:
 * the proxy state, metrics, descriptor cache, held requests and the snapshot writer, wired up by
 * src/server.ts); it writes into none of them.
 */
import { hostname } from 'node:os'
import type pg from 'pg'
import type { Logger } from 'pino'
import { collectGarbage } from '../gc.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { ChangeFeed, isConnectionError } from './change-feed.js'
import { describeError } from './connect.js'
import { feedApplicationName } from './feed-name.js'
import { FeedHeartbeat, type DeafReason } from './heartbeat.js'
import { applyDelta, type DatabaseDefaults, type RegistryIndex } from './index.js'
import type { DeltaSource, FeedStatus, FullLoadReason, RegistryListener, SyncEvent, SyncQuery } from './listener.js'
import { indexFromFile, indexFromRegistry, PagedLoadIncomplete } from './load-index.js'
import { pruneChangeLog } from './prune.js'
import { ChangeLogPruner } from './pruner.js'
import { SnapshotFileError, SnapshotFileMissing } from './snapshot-file.js'
import type { CompleteDelta, RegistryDelta, RegistryStore } from './store.js'

/** Changes applied incrementally at most; a bigger backlog is cheaper as a full snapshot. */
const DELTA_LIMIT = 10_000
/** How long the start waits for the registry before routing from the snapshot file meanwhile. */
const FILE_FALLBACK_MS = 1_000
/** What reading the last-known-good file at start came to (see #loadFile). */
type FileOutcome = 'loaded' | 'not-needed' | 'none'
/** A paged load whose catch-up from the change log failed is tried again this many times at most. */
const PAGED_LOAD_ATTEMPTS = 3
/** First and longest wait for a full-load slot (with jitter). */
const SLOT_WAIT_MIN_MS = 200
const SLOT_WAIT_MAX_MS = 5_000

/** What the sync needs; built once by server.ts. */
export interface SyncOptions {
  readonly store: RegistryStore
  /** Connection string for the feed connection (never logged). */
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
  /** Full loads at once across the registry's proxies (advisory-lock slots); 0: no cap. */
  readonly maxConcurrentFullLoads: number
  /** Rows per page of a full load. */
  readonly pageSize: number
  /** Last-known-good file path to start from when the registry does not answer, or null. */
  readonly snapshotFile: string | null
  readonly fingerprint: string
  /**
   * Runs after each (re)connection, before the resync (schema migrations), given the feed
   * connection for its reads, so a reconnect opens no second connection when nothing is to migrate.
   */
  readonly onConnect: (feed: pg.ClientBase) => Promise<void>
  /** Told about every index change and feed status, in this order. */
  readonly listeners: readonly RegistryListener[]
  readonly logger: Logger
  /** Randomness for the backoff jitter (tests pin it). */
  readonly random?: () => number
}

/** The registry sync of one proxy process. */
export class RegistrySync {
  readonly #o: SyncOptions
  readonly #log: Logger
  #feed: ChangeFeed | null = null
  #index: RegistryIndex | null = null
  #synced = false
  #stale = false
  #lastSyncAt = 0
  #queue: Promise<unknown> = Promise.resolve()
  #catchUpPending = false
  #reconnectTimer: NodeJS.Timeout | null = null
  /** A failed query's retry (see #failed). */
  #retryTimer: NodeJS.Timeout | null = null
  #retryAttempt = 0
  #checkTimer: NodeJS.Timeout | null = null
  #attempt = 0
  #stopped = false
  readonly #pruner: ChangeLogPruner
  readonly #heartbeat: FeedHeartbeat
  /** Why the feed is deaf, or null (see #deafChanged). */
  #deaf: string | null = null
  /** A version report is in flight on the feed connection (see #reportVersion). */
  #reporting = false
  /** The feed connection and the application_name last reported on it. */
  #reported: { feed: ChangeFeed, name: string } | null = null

  constructor (opts: SyncOptions) {
    this.#o = opts
    this.#log = opts.logger.child({ component: 'registry' })
    this.#heartbeat = new FeedHeartbeat(opts.schema, (deaf, misses, why) => this.#deafChanged(deaf, misses, why))
    // On the feed connection, in one transaction under a try-lock (src/registry/prune.ts); its own
    // schedule and outcomes (src/registry/pruner.ts): a failed or denied prune is never a feed problem.
    this.#pruner = new ChangeLogPruner({
      retentionS: opts.changeRetentionS,
      prune: async (retentionS) => {
        const feed = this.#feed
        if (feed === null) throw new Error('registry change feed not connected')
        return await feed.run(async (c) => await pruneChangeLog(c, opts.schema, retentionS))
      },
      logger: this.#log,
      count: (result) => {
        this.#emit({ kind: 'prune', result })
        if (result === 'error') this.#emit({ kind: 'query-failed', query: 'prune' })
      }
    })
  }

  /** The served index (null until the first load). */
  get index (): RegistryIndex | null {
    return this.#index
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
          this.#dropFeed()
          this.#log.warn({ error: describeError(err) }, 'registry unreachable at start: routing known hosts from the last-known-good snapshot file')
          this.#scheduleReconnect()
        })
      } else {
        await connecting
      }
    } catch (err) {
      this.#dropFeed()
      if (this.#index === null) {
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
      const feed = this.#feed
      if (feed === null || !feed.alive) throw new Error('the registry change feed is not connected')
      await this.#serial(async () => await this.#fullLoad(feed, 'reload'))
      return true
    } catch (err) {
      this.#log.error({ error: describeError(err) }, this.#index === null ? 'registry load failed' : 'registry reload failed; keeping the loaded index')
      return false
    }
  }

  /**
   * Applies whatever the change log holds after the loaded version (also what a notification
   * triggers); on a feed connected but not resynced yet, resyncs. A query that fails on a live
   * connection is retried on its own schedule; only a dead connection resets the feed.
   */
  async catchUp (): Promise<void> {
    await this.#catchUp(null)
  }

  /**
   * catchUp, or with `announced` (a change that came with its notification) applies that change
   * without a query when the index is at the version before it, the usual case: announcements
   * arrive in commit order. Otherwise the change log says what changed (a notification was
   * missed, or a full load was under way).
   */
  async #catchUp (announced: CompleteDelta | null): Promise<void> {
    // Coalesce: while one catch-up waits in the queue, more notifications add nothing. An
    // announcement is never coalesced away: applying it costs no query.
    if (announced === null) {
      if (this.#catchUpPending) return await this.#queue.then(() => undefined, () => undefined)
      this.#catchUpPending = true
    }
    const feed = this.#feed
    try {
      await this.#serial(async () => {
        if (announced === null) this.#catchUpPending = false
        const index = this.#index
        if (feed === null || feed !== this.#feed || !feed.alive) return
        if (announced !== null && index !== null && index.version >= announced.version) return
        if (announced !== null && this.#synced && index?.version === announced.since) await this.#install(feed, index, announced, false, 'announcement')
        else if (this.#synced) await this.#applyChanges(feed)
        else await this.#resync(feed)
      })
      this.#retryAttempt = 0
    } catch (err) {
      this.#failed(feed, this.#synced ? 'delta' : 'load', err)
    }
  }

  /** Stops the feed and timers; an index write under way completes. */
  async stop (): Promise<void> {
    this.#stopped = true
    for (const timer of [this.#reconnectTimer, this.#checkTimer, this.#retryTimer]) if (timer !== null) clearTimeout(timer)
    this.#dropFeed()
    await this.#queue.catch(() => undefined)
  }

  /** Connects the feed and resyncs; false when connected but the resync failed on a live connection (retried on its own). */
  async #connect (): Promise<boolean> {
    const o = this.#o
    const feed: ChangeFeed = new ChangeFeed({ ...o, heartbeatChannel: this.#heartbeat.channel }, {
      notified: ({ version, delta }) => {
        if (Number.isFinite(version)) this.#heartbeat.announced(version)
        const index = this.#index
        if (index === null || !(version <= index.version)) void this.#catchUp(this.#synced ? delta : null)
      },
      heartbeat: (payload) => this.#heartbeat.receive(this.#heartbeat.channel, payload),
      lost: (err) => this.#lost(feed, err)
    })
    this.#feed = feed
    await feed.open()
    this.#heartbeat.connected()
    await feed.run(async (c) => await o.onConnect(c))
    try {
      // A notification that arrived meanwhile may have resynced this feed already (see catchUp).
      await this.#serial(async () => { if (!this.#synced || this.#feed !== feed) await this.#resync(feed) })
    } catch (err) {
      // A query the registry refused (a statement timeout, a privilege) on a connection that works:
      // keep the connection and the index, and try the resync again on its own schedule.
      if (this.#index === null || !feed.alive || this.#feed !== feed || isConnectionError(err)) throw err
      this.#failed(feed, 'load', err)
      return false
    }
    return true
  }

  /**
   * Brings the index current on a (re)connected feed: from the change log when it still covers
   * the index's version (a registry restart, a failover, a network blip, a start from the
   * snapshot file), otherwise by a full load.
   */
  async #resync (feed: ChangeFeed): Promise<void> {
    const index = this.#index
    if (index === null) {
      await this.#fullLoad(feed, 'start')
    } else {
      const from = this.#stale ? 'file' : 'reconnect'
      if (await this.#applyChanges(feed, from === 'file')) {
        this.#emit({ kind: 'resume', from })
        this.#log.info({ from, version: this.#index?.version }, from === 'file' ? 'resumed from the snapshot file\'s version with the change log; no full load' : 'resumed from the change log after reconnecting; no full load')
      }
    }
    if (this.#feed !== feed || !feed.alive) throw new Error('registry connection lost during the resync')
    this.#synced = true
    this.#stale = false
    this.#lastSyncAt = Date.now()
    this.#publishFeed()
  }

  /** Full snapshot, read in pages on the feed connection under a full-load slot → new index swapped in. */
  async #fullLoad (feed: ChangeFeed, reason: FullLoadReason): Promise<void> {
    const started = performance.now()
    const first = this.#index === null
    let loaded: RegistryIndex
    try {
      loaded = await this.#withSlot(feed, async () => {
        for (let attempt = 1; ; attempt++) {
          try {
            return await indexFromRegistry(this.#o.store, async (fn) => await feed.run(fn), this.#o.defaults, this.#index, { pageSize: this.#o.pageSize, deltaLimit: DELTA_LIMIT })
          } catch (err) {
            if (!(err instanceof PagedLoadIncomplete) || attempt >= PAGED_LOAD_ATTEMPTS) throw err
            this.#log.info({ reason: err.message, attempt }, 'full registry load could not catch up; loading again')
          }
        }
      })
    } catch (err) {
      this.#emit({ kind: 'full-load', reason, ok: false })
      throw err
    }
    this.#index = loaded
    this.#lastSyncAt = loaded.loadedAt
    for (const l of this.#o.listeners) l.indexReplaced?.(loaded, { source: 'registry', reason })
    this.#emit({ kind: 'full-load', reason, ok: true })
    this.#reportVersion()
    this.#log.info({ reason, version: loaded.version, tenants: loaded.bySlug.size, domains: loaded.byHost.size, ms: Math.round(performance.now() - started) }, 'registry loaded')
    // The load's rows are garbage now: at start, before any request is served, collect them at
    // once (the snapshot writer collects once more after serialising the index). Not later: a
    // full collection blocks the event loop (tens of ms at 100,000 tenants) and requests with it.
    if (first) this.#collect()
  }

  /**
   * Runs `fn` holding one of the registry-wide full-load slots: session advisory locks
   * (pg_try_advisory_lock(hashtext('<schema> full load'), slot)) on the feed connection, so a
   * slot is freed when the load ends or its connection dies. Without a free slot, waits with
   * jitter and tries again: many proxies booting together queue instead of loading at once.
   */
  async #withSlot<T> (feed: ChangeFeed, fn: () => Promise<T>): Promise<T> {
    const n = this.#o.maxConcurrentFullLoads
    if (n === 0) return await fn()
    const key = `${this.#o.schema} full load`
    const random = this.#o.random ?? Math.random
    let slot = -1
    let waits = 0
    try {
      for (;;) {
        const start = Math.floor(random() * n)
        for (let i = 0; i < n && slot < 0; i++) {
          const candidate = (start + i) % n
          const r = await feed.run(async (c) => await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1), $2) AS ok', [key, candidate]))
          if (r.rows[0]?.ok === true) slot = candidate
        }
        if (slot >= 0) break
        if (waits === 0) {
          this.#emit({ kind: 'full-load-wait', waiting: true })
          this.#log.info({ maxConcurrentFullLoads: n }, 'every full-load slot of the registry is taken; waiting for one (known hosts keep routing)')
        }
        const ceiling = Math.min(SLOT_WAIT_MAX_MS, SLOT_WAIT_MIN_MS * 2 ** Math.min(waits, 10))
        waits++
        await sleep(Math.round(ceiling / 2 + random() * ceiling / 2), undefined, { ref: false })
        if (this.#stopped || this.#feed !== feed || !feed.alive) throw new Error('registry feed closed while waiting for a full-load slot')
      }
    } finally {
      if (waits > 0) this.#emit({ kind: 'full-load-wait', waiting: false })
    }
    try {
      return await fn()
    } finally {
      await feed.run(async (c) => await c.query('SELECT pg_advisory_unlock(hashtext($1), $2)', [key, slot])).catch(() => undefined)
    }
  }

  /** One full garbage collection, to hand the memory of a big load back (see src/gc.ts). */
  #collect (): void {
    const started = performance.now()
    if (collectGarbage()) this.#log.debug({ ms: Math.round(performance.now() - started) }, 'collected the garbage of a full registry load')
  }

  /**
   * Reads the change log after the index's version on the feed connection and applies it, or
   * falls back to a full load when the log cannot tell. True when the log was applied (no full load).
   * `paused`: also re-read paused tenants (the index came from the snapshot file, which has no pauses).
   */
  async #applyChanges (feed: ChangeFeed, paused = false): Promise<boolean> {
    const o = this.#o
    const index = this.#index
    if (index === null) {
      await this.#fullLoad(feed, 'start')
      return false
    }
    const delta = await feed.run(async (c) => await o.store.delta(index.version, DELTA_LIMIT, { client: c, paused }))
    if (this.#index !== index) return await this.#applyChanges(feed, paused)
    return await this.#install(feed, index, delta, paused, 'query')
  }

  /**
   * Applies a delta read from the change log or announced with its notification to the index, or
   * falls back to a full load when the delta cannot tell. True when applied (no full load).
   */
  async #install (feed: ChangeFeed, index: RegistryIndex, delta: RegistryDelta, paused: boolean, source: DeltaSource): Promise<boolean> {
    const o = this.#o
    const started = performance.now()
    const fallback = !delta.complete ? delta.reason : delta.registryId !== index.registryId ? 'registry_changed' : null
    if (fallback !== null) {
      await this.#fullLoad(feed, fallback)
      return false
    }
    if (!delta.complete) return false
    const now = Date.now()
    if (delta.version > index.version || paused) {
      const from = index.version
      const result = applyDelta(index, delta, o.defaults)
      if (!result.consistent) {
        await this.#fullLoad(feed, 'inconsistent')
        return false
      }
      const change = { from, to: delta.version, touchedSlugs: [...delta.tenantSlugs, ...delta.tenants.map((t) => t.slug)], removedHosts: result.removedHosts, delta }
      for (const l of o.listeners) l.changesApplied?.(index, change)
      this.#emit({ kind: 'changes', source })
      this.#log.debug({ from: delta.since, to: delta.version, changes: delta.changes, source, ms: Math.round((performance.now() - started) * 100) / 100 }, 'registry changes applied')
    }
    this.#lastSyncAt = now
    this.#publishFeed()
    // Also when nothing changed: a report that failed or was overtaken by a reconnect is redone.
    this.#reportVersion()
    return true
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
        const feed = this.#feed
        const index = this.#index
        if (feed === null || index === null || !feed.alive) return
        const name = feedApplicationName(this.#o.applicationName, index.version, hostname(), process.pid)
        if (this.#reported?.feed === feed && this.#reported.name === name) return
        try {
          // SET cannot take bind parameters; set_config can (false: for the session, not the transaction).
          await feed.run(async (c) => await c.query("SELECT set_config('application_name', $1, false)", [name]))
          this.#reported = { feed, name }
        } catch (err) {
          // Redone after the next applied change or version check.
          this.#failed(feed, 'report', err, false)
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
    const feed = this.#feed
    if (feed === null || !this.#synced) return
    try {
      const r = await feed.run(async (c) => await c.query<{ version: string }>(`SELECT version FROM "${this.#o.schema}".registry_state`))
      const version = Number(r.rows[0]?.version ?? 0)
      const index = this.#index
      // Usually the notification of that version is just behind this answer on the same
      // connection; the catch-up is what matters, so this is only worth a debug line.
      if (index !== null && version > index.version) {
        this.#log.debug({ loaded: index.version, registry: version }, 'version check found newer changes; catching up')
        this.#heartbeat.unannounced(version)
      }
    } catch (err) {
      // The next check is the retry.
      this.#failed(feed, 'check', err, false)
      return
    }
    await this.catchUp()
    await this.#beat(feed)
    await this.#pruner.tick()
  }

  /** The heartbeat, judged and sent at each check on the feed connection (see heartbeat.ts). */
  async #beat (feed: ChangeFeed): Promise<void> {
    if (feed !== this.#feed || !this.#synced) return
    const beat = this.#heartbeat.beat()
    if (beat === null) return
    if (beat.reconnect) return this.#lost(feed, null, 'deaf')
    try {
      await feed.run(async (c) => await c.query('SELECT pg_notify($1, $2)', [this.#heartbeat.channel, beat.payload]))
      this.#heartbeat.sent(true)
    } catch (err) {
      this.#heartbeat.sent(false)
      // Not sent: nothing to judge; the next check sends another.
      this.#failed(feed, 'check', err, false)
    }
  }

  /** The heartbeat found the feed deaf, or hearing again (see heartbeat.ts). */
  #deafChanged (deaf: boolean, misses: number, why: DeafReason): void {
    if (deaf) {
      const seconds = Math.round(misses * this.#o.versionCheckIntervalMs / 100) / 10
      this.#deaf = why === 'heartbeat'
        ? `none of its own heartbeat notifications arrived in ${seconds} s (${misses} checks); behind a pooler in transaction mode set registry.listenUrl direct to PostgreSQL`
        : `the registry's changes reached it only by the periodic check, unannounced by any notification (${misses} checks in a row); behind a pooler in transaction mode set registry.listenUrl direct to PostgreSQL`
      this.#log.warn({ misses, seconds, why }, 'registry change feed is deaf: notifications do not reach it (a pooler in transaction mode?); changes arrive only by the periodic version check; reconnecting')
    } else {
      this.#deaf = null
      this.#log.info('registry change feed hears notifications again')
    }
    this.#publishFeed()
  }

  /**
   * A registry query failed. On a dead connection the feed is lost (the feed itself said so when
   * the query ran on it); on a live one the query is counted, logged and, with `retry`, tried
   * again after a backoff: a refused query is never a lost feed.
   */
  #failed (feed: ChangeFeed | null, query: SyncQuery, err: unknown, retry = true): void {
    if (feed === null || feed !== this.#feed || this.#stopped) return
    if (!feed.alive || isConnectionError(err)) {
      this.#lost(feed, err)
      return
    }
    this.#emit({ kind: 'query-failed', query })
    this.#log.warn({ query, error: describeError(err) }, retry ? 'registry query failed on a live connection; retrying it (the feed stays up)' : 'registry query failed on a live connection; the next period retries it (the feed stays up)')
    if (retry) this.#scheduleRetry()
  }

  #scheduleRetry (): void {
    if (this.#stopped || this.#retryTimer !== null) return
    const o = this.#o
    const ceiling = Math.min(o.reconnectMaxMs, o.reconnectMinMs * 2 ** Math.min(this.#retryAttempt, 20))
    const delay = Math.round(ceiling / 2 + (o.random ?? Math.random)() * ceiling / 2)
    this.#retryAttempt++
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null
      void this.catchUp()
    }, delay)
    this.#retryTimer.unref()
  }

  /** The feed connection died: stop trusting the index, reconnect. */
  #lost (feed: ChangeFeed | null, err: unknown, why: 'lost' | 'deaf' = 'lost'): void {
    if (feed === null || feed !== this.#feed) return
    this.#dropFeed()
    const wasUp = this.#synced
    this.#synced = false
    this.#publishFeed()
    // A feed that was not up yet has nothing to lose: the attempt connecting it fails, and its
    // caller reports that and retries (a start without a registry is not a "lost" feed).
    if (this.#stopped || !wasUp) return
    if (why === 'deaf') this.#log.info({ misses: this.#heartbeat.misses }, 'reconnecting the deaf registry change feed')
    else this.#log.warn({ error: err === null ? 'connection closed' : describeError(err) }, 'registry change feed lost; known hosts keep routing, unknown hosts get 503 until it is back')
    this.#scheduleReconnect()
  }

  #dropFeed (): void {
    const feed = this.#feed
    this.#feed = null
    feed?.close()
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
      this.#connect().then((synced) => {
        this.#emit({ kind: 'reconnect' })
        this.#log.info({ attempts: this.#attempt }, synced ? 'registry change feed reconnected and resynced' : 'registry change feed reconnected; the resync is retried')
        this.#attempt = 0
      }, (err: unknown) => {
        this.#dropFeed()
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

  #publishFeed (): void {
    const status: FeedStatus = { synced: this.#synced, stale: this.#stale, lastSyncAt: this.#lastSyncAt, deaf: this.#deaf }
    for (const l of this.#o.listeners) l.feedChanged?.(status)
  }

  #emit (event: SyncEvent): void {
    for (const l of this.#o.listeners) l.syncEvent?.(event)
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
      if (this.#index !== null) {
        this.#log.debug({ file: o.snapshotFile }, 'the registry answered while the snapshot file was read; the file is not used')
        return 'not-needed'
      }
      this.#index = index
      this.#stale = true
      this.#synced = false
      for (const l of o.listeners) l.indexReplaced?.(index, { source: 'file', reason: 'file' })
      this.#publishFeed()
      this.#log.warn({ file: o.snapshotFile, version: index.version, tenants: index.bySlug.size, domains: index.byHost.size, writtenAt }, 'loaded the last-known-good snapshot file')
      this.#collect()
      return 'loaded'
    } catch (err) {
      // No file is what a first start looks like (the file is written after the first load).
      if (err instanceof SnapshotFileMissing) {
        if (this.#index === null) this.#log.info({ file: o.snapshotFile }, 'no last-known-good snapshot file yet (it is written after the first registry load); waiting for the registry')
      } else {
        const reason = err instanceof SnapshotFileError ? err.message : describeError(err)
        this.#log.error({ file: o.snapshotFile, reason }, 'last-known-good snapshot file refused')
      }
      return this.#index === null ? 'none' : 'not-needed'
    }
  }
}
