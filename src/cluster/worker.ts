/**
 * A cluster worker's index: built from what the primary sends over IPC (src/cluster/messages.ts)
 * instead of a registry connection of its own, so N workers cost the registry one feed, not N.
 * It announces to the same listeners (src/registry/listener.ts) a RegistrySync would.
 * Also answers the primary's questions (metrics, status) and turns its `drain` (or its
 * disappearance) into the same shutdown SIGTERM starts.
 */
import cluster from 'node:cluster'
import type { Logger } from 'pino'
import { collectGarbage } from '../gc.js'
import type { ProxyMetrics } from '../ops/metrics.js'
import { applyDelta, buildIndex, type DatabaseDefaults, type RegistryIndex } from '../registry/index.js'
import type { FeedStatus, RegistryListener } from '../registry/listener.js'
import { isMessage, preciseNow, type ToPrimary, type ToWorker, type WorkerStatus } from './messages.js'

/** What the follower needs; built by server.ts in a worker. */
export interface FollowerOptions {
  readonly defaults: DatabaseDefaults
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  /** Told of every index change and feed status, as a RegistrySync tells its listeners. */
  readonly listeners: readonly RegistryListener[]
}

/** The index of one worker process, fed by the primary. */
export class IndexFollower {
  readonly #o: FollowerOptions
  readonly #log: Logger
  readonly #worker = cluster.worker
  #first: { resolve: () => void, promise: Promise<void> }
  #index: RegistryIndex | null = null
  #draining = false
  #indexHeapBytes: number | null = null
  #awaitingFull = false
  #drainListeners: Array<() => void> = []
  #onMessage = (message: unknown): void => { this.#handle(message) }
  #onDisconnect = (): void => {
    this.#log.warn('the primary is gone: draining')
    this.#drain()
  }

  constructor (opts: FollowerOptions) {
    if (this.#worker === undefined) throw new Error('IndexFollower runs in a cluster worker only')
    this.#o = opts
    this.#log = opts.logger.child({ component: 'registry' })
    let resolve: () => void = () => {}
    const promise = new Promise<void>((r) => { resolve = r })
    this.#first = { resolve, promise }
  }

  /** Asks the primary for the index and resolves once the first one is installed. */
  async start (): Promise<void> {
    const worker = this.#worker
    if (worker === undefined) return
    worker.on('message', this.#onMessage)
    worker.on('disconnect', this.#onDisconnect)
    this.#awaitingFull = true
    this.#send({ tp: 'hello' })
    await this.#first.promise
  }

  /** A reload in a worker asks the primary for a full copy of its index (SIGHUP goes to the primary). */
  async reload (): Promise<boolean> {
    this.#resync('reload')
    return true
  }

  async stop (): Promise<void> {
    this.#worker?.off('message', this.#onMessage)
    this.#worker?.off('disconnect', this.#onDisconnect)
  }

  /** Calls `fn` once the primary asks this worker to drain (or disappears). */
  onDrain (fn: () => void): void {
    this.#drainListeners.push(fn)
  }

  #drain (): void {
    this.#draining = true
    const listeners = this.#drainListeners
    this.#drainListeners = []
    for (const fn of listeners) fn()
  }

  #send (message: ToPrimary): void {
    const worker = this.#worker
    if (worker === undefined || !worker.isConnected()) return
    worker.send(message)
  }

  #resync (reason: string): void {
    if (this.#awaitingFull) return
    this.#awaitingFull = true
    this.#log.warn({ reason }, 'asking the primary for a full copy of the index')
    this.#send({ tp: 'resync', reason })
  }

  #handle (message: unknown): void {
    if (!isMessage<ToWorker>(message)) return
    switch (message.tp) {
      case 'full': return this.#full(message)
      case 'delta': return this.#delta(message)
      case 'status': return this.#feed(message.status)
      case 'drain': return this.#drain()
      case 'ask': return this.#answer(message.id, message.what)
    }
  }

  #full (m: Extract<ToWorker, { tp: 'full' }>): void {
    const o = this.#o
    // The first index is measured: a full collection on either side of the build leaves the
    // index's own heap as the difference (the message's rows are alive in both readings).
    const measure = this.#index === null && collectGarbage()
    const before = measure ? process.memoryUsage().heapUsed : 0
    const index = buildIndex(m, o.defaults, this.#index, m.loadedAt)
    this.#index = index
    this.#awaitingFull = false
    for (const l of o.listeners) l.indexReplaced?.(index, { source: 'registry', reason: 'start' })
    if (measure && collectGarbage()) {
      this.#indexHeapBytes = Math.max(0, process.memoryUsage().heapUsed - before)
      o.metrics.indexHeapBytes.set(this.#indexHeapBytes)
    }
    this.#feed(m.status)
    // The message's rows (and a previous index) are garbage once this handler returns: collect
    // them then, as the sync does after a full load, or an idle worker keeps them resident.
    setImmediate(() => { collectGarbage() })
    this.#log.info({ ms: Math.round(preciseNow() - m.sentAt), version: index.version, tenants: index.bySlug.size, domains: index.byHost.size, indexHeapBytes: this.#indexHeapBytes }, 'index received from the primary')
    this.#first.resolve()
  }

  #delta (m: Extract<ToWorker, { tp: 'delta' }>): void {
    const o = this.#o
    const index = this.#index
    // Waiting for a full: the deltas before it are in it already.
    if (this.#awaitingFull || index === null) return
    const { delta } = m
    if (delta.since !== index.version || delta.registryId !== index.registryId) return this.#resync(`delta from version ${delta.since}, index at ${index.version}`)
    const result = applyDelta(index, delta, o.defaults)
    if (!result.consistent) return this.#resync('delta names a tenant the index lacks')
    const change = { from: delta.since, to: delta.version, touchedSlugs: [...delta.tenantSlugs, ...delta.tenants.map((t) => t.slug)], removedHosts: result.removedHosts, delta }
    for (const l of o.listeners) l.changesApplied?.(index, change)
    o.metrics.observeWorkerLag((preciseNow() - m.sentAt) / 1000)
    this.#feed(m.status)
  }

  #feed (status: FeedStatus): void {
    for (const l of this.#o.listeners) l.feedChanged?.(status)
  }

  #answer (id: number, what: 'metrics' | 'status'): void {
    if (what === 'status') {
      this.#send({ tp: 'answer', id, status: this.status() })
      return
    }
    this.#o.metrics.registry.getMetricsAsJSON().then((metrics) => this.#send({ tp: 'answer', id, metrics }), (err: unknown) => {
      this.#log.warn({ err }, 'cannot collect metrics for the primary')
      this.#send({ tp: 'answer', id, metrics: [] })
    })
  }

  /** This worker as /ready lists it. */
  status (): WorkerStatus {
    const index = this.#index
    const memory = process.memoryUsage()
    return { pid: process.pid, version: index?.version ?? null, tenants: index?.bySlug.size ?? 0, draining: this.#draining, heapUsedBytes: memory.heapUsed, rssBytes: memory.rss, indexHeapBytes: this.#indexHeapBytes }
  }
}
