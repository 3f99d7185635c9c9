/**
 * The workers of a cluster primary (`workers` > 1): forks them (they listen on the traffic port,
 * which node:cluster shares; the primary hands each new connection to the next worker in turn),
 * feeds each the index (a full copy when it starts, then every change the primary's registry feed
 * applies), restarts one that dies with a growing delay, answers for all of them on the ops
 * listener (metrics summed, /up and /ready), and drains them all on shutdown.
 */
import cluster, { type Worker } from 'node:cluster'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { AggregatorRegistry } from 'prom-client'
import type { ProxyMetrics } from '../ops/metrics.js'
import type { RegistryIndex } from '../registry/index.js'
import type { AppliedChange, FeedStatus, IndexReplacedListener, ChangesAppliedListener, FeedListener } from '../registry/listener.js'
import { fullMessage, isMessage, preciseNow, type MetricsJson, type ToPrimary, type ToWorker, type WorkerStatus } from './messages.js'

/** A worker that lived shorter than this before dying counts as a crash loop (the delay grows). */
const HEALTHY_AFTER_MS = 10_000
const RESTART_MIN_MS = 250
const RESTART_MAX_MS = 30_000
/** How long the primary waits for a worker to answer a question (metrics, status). */
const ASK_TIMEOUT_MS = 2_000

export interface GroupOptions {
  readonly count: number
  readonly metrics: ProxyMetrics
  readonly logger: Logger
  /** After a drain request, how long a worker may take to exit before it is killed. */
  readonly stopTimeoutMs: number
}

/** A worker's slot: the process in it changes when it is restarted. */
interface Slot {
  readonly n: number
  worker: Worker | null
  startedAt: number
  /** Has the index (a full was sent); deltas go only to these. */
  fed: boolean
  /** Listening on the traffic port. */
  listening: boolean
  failures: number
  restartTimer: NodeJS.Timeout | null
}

/** What the ops app reads from the group. */
export interface GroupView {
  readonly expected: number
  /** Workers listening with an index. */
  up (): number
  statuses (): Promise<Array<WorkerStatus & { slot: number }>>
  /** The Prometheus text of every process's metrics, summed (or per each metric's aggregator). */
  metrics (): Promise<string>
  readonly contentType: string
}

/**
 * The workers of this primary. A listener of the primary's registry sync: the index it replaces or
 * changes, and its feed status, are what the workers are sent.
 */
export class WorkerGroup implements GroupView, IndexReplacedListener, ChangesAppliedListener, FeedListener {
  readonly #o: GroupOptions
  readonly #log: Logger
  readonly #slots: Slot[] = []
  #stopping = false
  #traffic: AddressInfo | null = null
  #askId = 0
  readonly #asks = new Map<number, (m: Extract<ToPrimary, { tp: 'answer' }>) => void>()
  #index: RegistryIndex | null = null
  #feed: FeedStatus = { synced: false, stale: false, lastSyncAt: 0, deaf: null }
  #firstListening: Array<() => void> = []
  readonly contentType = AggregatorRegistry.PROMETHEUS_CONTENT_TYPE

  constructor (opts: GroupOptions) {
    this.#o = opts
    this.#log = opts.logger.child({ component: 'cluster' })
  }

  get expected (): number { return this.#o.count }

  /** Forks the workers; resolves with the traffic address once every worker listens on it. */
  async start (): Promise<AddressInfo> {
    // Structured clone: a full index of 100,000 tenants is ~10 MB of rows, cheaper than as JSON text.
    cluster.setupPrimary({ serialization: 'advanced' })
    for (let n = 0; n < this.#o.count; n++) {
      const slot: Slot = { n, worker: null, startedAt: 0, fed: false, listening: false, failures: 0, restartTimer: null }
      this.#slots.push(slot)
      this.#fork(slot)
    }
    await new Promise<void>((resolve) => {
      const check = (): void => {
        if (this.#slots.every((s) => s.listening)) resolve()
        else this.#firstListening.push(check)
      }
      check()
    })
    return this.#traffic as AddressInfo
  }

  /** The primary's sync replaced its index: every fed worker gets the new one whole. */
  indexReplaced (index: RegistryIndex): void {
    this.#index = index
    if (!this.#slots.some((s) => s.fed)) return
    const message = fullMessage(index, this.#feed)
    for (const slot of this.#slots) if (slot.fed) this.#send(slot, message)
  }

  /** The primary's sync applied a delta: every fed worker applies the same rows. */
  changesApplied (index: RegistryIndex, change: AppliedChange): void {
    this.#index = index
    const message: ToWorker = { tp: 'delta', delta: change.delta, status: this.#feed, sentAt: preciseNow() }
    for (const slot of this.#slots) if (slot.fed) this.#send(slot, message)
  }

  /** Synced or not decides 404 or 503 for an unknown host in the workers too. */
  feedChanged (status: FeedStatus): void {
    this.#feed = status
    const message: ToWorker = { tp: 'status', status }
    for (const slot of this.#slots) if (slot.fed) this.#send(slot, message)
  }

  up (): number {
    return this.#slots.filter((s) => s.listening && s.fed).length
  }

  async statuses (): Promise<Array<WorkerStatus & { slot: number }>> {
    const answers = await Promise.all(this.#slots.map(async (slot) => {
      const a = await this.#ask(slot, 'status')
      return a?.status === undefined ? null : { slot: slot.n, ...a.status }
    }))
    return answers.filter((a) => a !== null)
  }

  async metrics (): Promise<string> {
    const own: MetricsJson = await this.#o.metrics.registry.getMetricsAsJSON()
    const theirs = await Promise.all(this.#slots.map(async (slot) => (await this.#ask(slot, 'metrics'))?.metrics ?? null))
    const all = [own, ...theirs.filter((m) => m !== null)]
    return await AggregatorRegistry.aggregate(all).metrics()
  }

  /** Tells every worker to drain and waits for all to exit; kills those still there after the timeout. */
  async drain (): Promise<void> {
    this.#stopping = true
    const exits: Array<Promise<void>> = []
    for (const slot of this.#slots) {
      if (slot.restartTimer !== null) clearTimeout(slot.restartTimer)
      const worker = slot.worker
      if (worker === null || worker.isDead()) continue
      exits.push(new Promise<void>((resolve) => worker.once('exit', () => resolve())))
      if (worker.isConnected()) worker.send({ tp: 'drain' } satisfies ToWorker)
      else worker.kill('SIGTERM')
    }
    const timer = setTimeout(() => {
      for (const slot of this.#slots) {
        if (slot.worker !== null && !slot.worker.isDead()) {
          this.#log.warn({ slot: slot.n, worker: slot.worker.id, pid: slot.worker.process.pid, timeoutMs: this.#o.stopTimeoutMs }, 'worker still running after the drain: killing it')
          slot.worker.process.kill('SIGKILL')
        }
      }
    }, this.#o.stopTimeoutMs)
    await Promise.all(exits)
    clearTimeout(timer)
    this.#o.metrics.workersUp.set(0)
  }

  #fork (slot: Slot): void {
    slot.restartTimer = null
    slot.fed = false
    slot.listening = false
    slot.startedAt = Date.now()
    const worker = cluster.fork()
    slot.worker = worker
    worker.on('message', (message: unknown) => { this.#onMessage(slot, worker, message) })
    worker.on('listening', (address: AddressInfo) => {
      if (slot.worker !== worker) return
      this.#traffic ??= address
      slot.listening = true
      this.#updateUp()
      this.#log.info({ slot: slot.n, worker: worker.id, pid: worker.process.pid }, 'worker listening')
      const waiting = this.#firstListening
      this.#firstListening = []
      for (const fn of waiting) fn()
    })
    worker.on('exit', (code, signal) => { this.#onExit(slot, worker, code, signal) })
  }

  #onMessage (slot: Slot, worker: Worker, message: unknown): void {
    if (slot.worker !== worker || !isMessage<ToPrimary>(message)) return
    switch (message.tp) {
      case 'hello':
      case 'resync': {
        if (message.tp === 'resync') this.#log.warn({ slot: slot.n, worker: worker.id, reason: message.reason }, 'worker asked for a full copy of the index')
        const index = this.#index
        // No index yet: the first full the feed loads goes to every worker marked fed.
        slot.fed = true
        if (index !== null) this.#send(slot, fullMessage(index, this.#feed))
        this.#updateUp()
        return
      }
      case 'answer': {
        const resolve = this.#asks.get(message.id)
        this.#asks.delete(message.id)
        resolve?.(message)
      }
    }
  }

  #onExit (slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return
    slot.worker = null
    slot.fed = false
    slot.listening = false
    this.#updateUp()
    if (this.#stopping) {
      this.#log.info({ slot: slot.n, worker: worker.id, pid: worker.process.pid, code, signal }, 'worker exited')
      return
    }
    const lived = Date.now() - slot.startedAt
    slot.failures = lived >= HEALTHY_AFTER_MS ? 1 : slot.failures + 1
    const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** Math.min(slot.failures - 1, 20))
    this.#o.metrics.workerRestarts.inc()
    this.#log.error({ slot: slot.n, worker: worker.id, pid: worker.process.pid, code, signal, livedMs: lived, restartInMs: delay }, 'worker exited unexpectedly: restarting it')
    slot.restartTimer = setTimeout(() => { if (!this.#stopping) this.#fork(slot) }, delay)
  }

  #updateUp (): void {
    this.#o.metrics.workersUp.set(this.up())
  }

  #send (slot: Slot, message: ToWorker): void {
    const worker = slot.worker
    if (worker === null || !worker.isConnected()) return
    worker.send(message)
  }

  async #ask (slot: Slot, what: 'metrics' | 'status'): Promise<Extract<ToPrimary, { tp: 'answer' }> | null> {
    const worker = slot.worker
    if (worker === null || !worker.isConnected() || !slot.fed) return null
    const id = ++this.#askId
    return await new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#asks.delete(id)
        resolve(null)
      }, ASK_TIMEOUT_MS)
      this.#asks.set(id, (answer) => {
        clearTimeout(timer)
        resolve(answer)
      })
      worker.send({ tp: 'ask', id, what } satisfies ToWorker)
    })
  }
}
