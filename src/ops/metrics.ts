/**
 * Prometheus metrics of one proxy process (own registry, never prom-client's global one, so tests
 * and several apps in one process do not collide). No per-host or per-tenant labels: label sets
 * stay bounded whatever the number of tenants.
 */
import client from 'prom-client'
import { IndexedCounter, IndexedHistogram } from './fast-metrics.js'
import { UPSTREAM_ERROR_KINDS, type UpstreamErrorKind } from '../proxy/upstream-errors.js'
import { TLS_ASK_RESULTS, type TlsAskResult } from '../proxy/tls-ask.js'
import { DELTA_SOURCES, FULL_LOAD_REASONS, RESUME_FROM, SYNC_QUERIES, type DeltaSource, type FeedStatus, type FullLoadReason, type ResumeFrom, type SyncEvent, type SyncQuery } from '../registry/listener.js'

/** How a request ended, as counted and logged. */
export type Outcome = 'routed' | 'unknown_host' | 'suspended' | 'maintenance' | 'passthrough' | 'health' | 'bad_request' | 'registry_unavailable' | 'paused'

export const OUTCOMES: readonly Outcome[] = ['routed', 'unknown_host', 'suspended', 'maintenance', 'passthrough', 'health', 'bad_request', 'registry_unavailable', 'paused']

/** How a request held for a paused tenant (src/proxy/held-requests.ts) left the queue. */
export type HeldEnd = 'released' | 'timeout' | 'client_closed' | 'draining'
export const HELD_ENDS: readonly HeldEnd[] = ['released', 'timeout', 'client_closed', 'draining']
/** Why a paused tenant's request was answered 503 instead of forwarded. */
export type HeldRefusal = 'timeout' | 'overflow' | 'draining'
export const HELD_REFUSALS: readonly HeldRefusal[] = ['timeout', 'overflow', 'draining']
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const
const OUTCOME_INDEX = Object.fromEntries(OUTCOMES.map((o, i) => [o, i])) as Record<Outcome, number>

/** What the registry gauges read from an index. */
interface IndexView { version: number, byHost: { size: number }, bySlug: { size: number } }

/** What the address gauge reads from the upstream pools. */
interface PoolsView { all (): Array<{ name: string | null, addresses: ReadonlyArray<{ usable (now: number): boolean }> }> }

/** Endpoints of the ops descriptor API (src/ops/descriptor-api.ts) and how a call to one ended. */
export type OpsApiEndpoint = 'descriptor' | 'tenants'
export type OpsApiResult = 'ok' | 'unauthorized' | 'rate_limited' | 'not_found' | 'disabled' | 'bad_request' | 'unavailable'
const OPS_API_ENDPOINTS: readonly OpsApiEndpoint[] = ['descriptor', 'tenants']
const OPS_API_RESULTS: readonly OpsApiResult[] = ['ok', 'unauthorized', 'rate_limited', 'not_found', 'disabled', 'bad_request', 'unavailable']

/** Kinds of upstream failure. */

/** The proxy's metrics, with label children bound once so the hot path does no label hashing. */
export class ProxyMetrics {
  readonly registry = new client.Registry()
  readonly #requests: IndexedCounter
  readonly #duration: IndexedHistogram
  readonly #upstreamDuration: IndexedHistogram
  /** Requests being handled; a plain number on the hot path, read by the gauge at scrape time. */
  inFlight = 0
  readonly registryTenants: client.Gauge
  readonly registryDomains: client.Gauge
  readonly registryVersion: client.Gauge
  readonly registryLastLoad: client.Gauge
  readonly registryLoads: client.Counter<'result'>
  readonly registryLastSync: client.Gauge
  readonly registryFeedConnected: client.Gauge
  readonly registryFeedReconnects: client.Counter
  readonly registryStale: client.Gauge
  readonly registryFeedDeaf: client.Gauge
  readonly registryPrunes: client.Counter<'result'>
  readonly registryFullLoads: client.Counter<'reason'>
  readonly registryResumes: client.Counter<'from'>
  readonly registryChangesApplied: client.Counter<'source'>
  readonly registryQueryFailures: client.Counter<'query'>
  readonly registryFullLoadWaiting: client.Gauge
  readonly descriptorSignatures: client.Counter
  readonly upstreamErrors: client.Counter<'kind'>
  readonly upstreamAttemptErrors: client.Counter<'kind'>
  readonly upstreamRetries: client.Counter
  readonly upstreamEjections: client.Counter
  readonly opsApiRequests: client.Counter<'endpoint' | 'result'>
  #pools: PoolsView | null = null
  readonly draining: client.Gauge
  readonly tlsAsks: client.Counter<'result'>
  /** Requests held for paused tenants now; a plain number kept by HeldRequests, read at scrape time. */
  heldNow = 0
  readonly heldTotal: client.Counter
  readonly heldDuration: client.Histogram<'end'>
  readonly heldRefused: client.Counter<'reason'>
  readonly workersUp: client.Gauge
  readonly workerRestarts: client.Counter
  readonly indexHeapBytes: client.Gauge
  readonly #workerLag: client.Histogram

  constructor () {
    const registers = [this.registry]
    client.collectDefaultMetrics({ register: this.registry })
    // prom-client's *_total gauges break the Prometheus naming rule promtool enforces; the same
    // counts exist without the suffix (nodejs_active_handles, …).
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name)
    const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    // Every series exists from the start, so dashboards see zeros instead of gaps.
    this.#requests = new IndexedCounter('tenant_proxy_requests_total', 'Requests on the traffic listener by outcome and status class.',
      OUTCOMES.flatMap((outcome) => STATUS_CLASSES.map((cls) => ({ outcome, status_class: cls }))))
    this.#duration = new IndexedHistogram('tenant_proxy_request_duration_seconds', 'Time from request start to response end on the traffic listener.',
      buckets, OUTCOMES.map((outcome) => ({ outcome })))
    this.#upstreamDuration = new IndexedHistogram('tenant_proxy_upstream_duration_seconds', 'Time from forwarding a request to receiving the upstream response headers.', buckets)
    for (const metric of [this.#requests, this.#duration, this.#upstreamDuration]) this.registry.registerMetric(metric as unknown as client.Metric)
    const inFlight = (): number => this.inFlight
    new client.Gauge({ name: 'tenant_proxy_requests_in_flight', help: 'Requests being handled on the traffic listener.', registers, collect () { this.set(inFlight()) } })
    this.registryTenants = new client.Gauge({ name: 'tenant_proxy_registry_tenants', help: 'Tenants in the loaded registry index.', registers, aggregator: 'max' })
    this.registryDomains = new client.Gauge({ name: 'tenant_proxy_registry_domains', help: 'Domains in the loaded registry index.', registers, aggregator: 'max' })
    this.registryVersion = new client.Gauge({ name: 'tenant_proxy_registry_version', help: 'Registry change version of the loaded index.', registers, aggregator: 'max' })
    this.registryLastLoad = new client.Gauge({ name: 'tenant_proxy_registry_last_load_timestamp_seconds', help: 'Unix time of the last successful registry load.', registers, aggregator: 'max' })
    this.registryLoads = new client.Counter({ name: 'tenant_proxy_registry_loads_total', help: 'Registry snapshot loads by result.', labelNames: ['result'], registers })
    this.registryLastSync = new client.Gauge({ name: 'tenant_proxy_registry_last_sync_timestamp_seconds', help: 'Unix time the index was last confirmed current with the registry (load, applied change or version check).', registers, aggregator: 'max' })
    this.registryFeedConnected = new client.Gauge({ name: 'tenant_proxy_registry_feed_connected', help: '1 while the LISTEN connection to the registry change feed is up and resynced.', registers, aggregator: 'max' })
    this.registryFeedReconnects = new client.Counter({ name: 'tenant_proxy_registry_feed_reconnects_total', help: 'Reconnections of the registry change feed.', registers })
    this.registryFullLoads = new client.Counter({ name: 'tenant_proxy_registry_full_loads_total', help: 'Full registry loads (the whole snapshot read) by why they ran: start, reload, gap, registry_changed, backlog, inconsistent.', labelNames: ['reason'], registers })
    this.registryResumes = new client.Counter({ name: 'tenant_proxy_registry_resumes_total', help: 'Resyncs done from the change log instead of a full load, by what was resumed: reconnect (the index in memory) or file (the snapshot file).', labelNames: ['from'], registers })
    this.registryChangesApplied = new client.Counter({ name: 'tenant_proxy_registry_changes_applied_total', help: 'Registry changes applied to the index in place, by how they arrived: announcement (with their notification, no query) or query (read from the change log: a change too big to announce, a missed notification, a resume).', labelNames: ['source'], registers })
    this.registryQueryFailures = new client.Counter({ name: 'tenant_proxy_registry_query_failures_total', help: 'Registry queries that failed on a live feed connection and are retried on their own (the feed is not reset), by query.', labelNames: ['query'], registers })
    this.registryFullLoadWaiting = new client.Gauge({ name: 'tenant_proxy_registry_full_load_waiting', help: '1 while a full load waits for one of the registry-wide full-load slots (registry.maxConcurrentFullLoads).', registers })
    this.registryStale = new client.Gauge({ name: 'tenant_proxy_registry_stale', help: '1 while the index comes from the last-known-good snapshot file, not yet confirmed by the registry.', registers, aggregator: 'max' })
    this.registryFeedDeaf = new client.Gauge({ name: 'tenant_proxy_registry_feed_deaf', help: '1 while the change feed connection receives none of its own heartbeat notifications (a pooler in transaction mode): changes arrive only by the periodic version check.', registers, aggregator: 'max' })
    this.registryPrunes = new client.Counter({ name: 'tenant_proxy_registry_prunes_total', help: "This proxy's attempts to prune the registry change log, by result (pruned, nothing, busy: another process pruning, denied: no privilege, error).", labelNames: ['result'], registers })
    this.descriptorSignatures = new client.Counter({ name: 'tenant_proxy_descriptor_signatures_total', help: 'Descriptors signed (cache misses and refreshes).', registers })
    this.upstreamErrors = new client.Counter({ name: 'tenant_proxy_upstream_errors_total', help: 'Upstream failures by kind.', labelNames: ['kind'], registers })
    // Per attempt, like retries: a refused connection that a retry hid still shows here (an address
    // failing behind retries is invisible in upstream_errors_total, which counts what clients see).
    this.upstreamAttemptErrors = new client.Counter({ name: 'tenant_proxy_upstream_attempt_errors_total', help: 'Upstream attempts that failed, by kind: those repeated on another address and those that failed their request.', labelNames: ['kind'], registers })
    this.upstreamRetries = new client.Counter({ name: 'tenant_proxy_upstream_retries_total', help: 'Upstream attempts repeated on another address (nothing reached the app, or an idempotent bodyless request lost its connection).', registers })
    this.upstreamEjections = new client.Counter({ name: 'tenant_proxy_upstream_ejections_total', help: 'Upstream addresses taken out of rotation after repeated connection failures.', registers })
    const pools = (): PoolsView | null => this.#pools
    new client.Gauge({
      name: 'tenant_proxy_upstream_addresses',
      help: 'Upstream addresses by pool: usable, or not (ejected, failing since an ejection without answering or accepting a connection, or failing health checks).',
      labelNames: ['pool', 'state'],
      registers,
      // With workers, each process has its own view of the addresses: the highest count, not the sum.
      aggregator: 'max',
      collect () {
        this.reset()
        const now = Date.now()
        for (const pool of pools()?.all() ?? []) {
          const usable = pool.addresses.filter((a) => a.usable(now)).length
          this.labels(pool.name ?? 'default', 'usable').set(usable)
          this.labels(pool.name ?? 'default', 'unusable').set(pool.addresses.length - usable)
        }
      }
    })
    this.draining = new client.Gauge({ name: 'tenant_proxy_draining', help: '1 while the process is shutting down.', registers, aggregator: 'max' })
    this.opsApiRequests = new client.Counter({ name: 'tenant_proxy_ops_api_requests_total', help: 'Calls of the ops descriptor API by endpoint and result.', labelNames: ['endpoint', 'result'], registers })
    this.tlsAsks = new client.Counter({ name: 'tenant_proxy_tls_ask_total', help: 'On-demand TLS asks answered (ops and traffic listeners), by result.', labelNames: ['result'], registers })
    const heldNow = (): number => this.heldNow
    new client.Gauge({ name: 'tenant_proxy_requests_held', help: 'Requests held now because their tenant is paused.', registers, collect () { this.set(heldNow()) } })
    this.heldTotal = new client.Counter({ name: 'tenant_proxy_held_requests_total', help: 'Requests held because their tenant was paused.', registers })
    this.heldDuration = new client.Histogram({ name: 'tenant_proxy_held_duration_seconds', help: 'Time a request was held for a paused tenant, by how the hold ended (released, timeout, client_closed, draining).', labelNames: ['end'], buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers })
    this.heldRefused = new client.Counter({ name: 'tenant_proxy_held_refused_total', help: "A paused tenant's requests answered 503 + Retry-After, by reason: held past the pause's timeout, over a cap on held requests, or the proxy shutting down.", labelNames: ['reason'], registers })
    this.workersUp = new client.Gauge({ name: 'tenant_proxy_workers_up', help: 'Worker processes listening with an index (workers > 1; 0 in a single-process proxy).', registers })
    this.workerRestarts = new client.Counter({ name: 'tenant_proxy_worker_restarts_total', help: 'Worker processes that exited unexpectedly and were restarted.', registers })
    this.indexHeapBytes = new client.Gauge({ name: 'tenant_proxy_index_heap_bytes', help: 'Heap the registry index took when first built, per worker process (summed over workers).', registers })
    this.#workerLag = new client.Histogram({ name: 'tenant_proxy_worker_index_lag_seconds', help: 'Time from the primary applying a registry change to a worker applying it (workers > 1).', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers })

    // prom-client prints a labelled series only once it has a value (labels() alone creates
    // nothing): without these zeros, dashboards show "no data" and rate() misses the first error.
    for (const kind of UPSTREAM_ERROR_KINDS) {
      this.upstreamErrors.labels(kind).inc(0)
      this.upstreamAttemptErrors.labels(kind).inc(0)
    }
    for (const result of ['ok', 'error'] as const) this.registryLoads.labels(result).inc(0)
    for (const result of ['pruned', 'nothing', 'busy', 'denied', 'error'] as const) this.registryPrunes.labels(result).inc(0)
    for (const reason of FULL_LOAD_REASONS) this.registryFullLoads.labels(reason).inc(0)
    for (const from of RESUME_FROM) this.registryResumes.labels(from).inc(0)
    for (const source of DELTA_SOURCES) this.registryChangesApplied.labels(source).inc(0)
    for (const query of SYNC_QUERIES) this.registryQueryFailures.labels(query).inc(0)
    for (const endpoint of OPS_API_ENDPOINTS) for (const result of OPS_API_RESULTS) this.opsApiRequests.labels(endpoint, result).inc(0)
    for (const result of TLS_ASK_RESULTS) this.tlsAsks.labels(result).inc(0)
    for (const end of HELD_ENDS) this.heldDuration.zero({ end })
    for (const reason of HELD_REFUSALS) this.heldRefused.labels(reason).inc(0)
  }

  /** Makes the address gauge read these pools at scrape time. */
  watchPools (pools: PoolsView): void {
    this.#pools = pools
  }

  /** Counts one finished request. */
  observeRequest (outcome: Outcome, status: number, seconds: number): void {
    const o = OUTCOME_INDEX[outcome]
    const cls = status >= 500 ? 4 : status >= 400 ? 3 : status >= 300 ? 2 : status >= 200 ? 1 : 0
    this.#requests.inc(o * STATUS_CLASSES.length + cls)
    this.#duration.observe(o, seconds)
  }

  /** Records the time to the upstream's response headers. */
  observeUpstream (seconds: number): void {
    this.#upstreamDuration.observe(0, seconds)
  }

  /** Records the size and version of the index (after a load or an applied change). */
  observeIndex (index: IndexView): void {
    this.registryTenants.set(index.bySlug.size)
    this.registryDomains.set(index.byHost.size)
    this.registryVersion.set(index.version)
  }

  /** Records how long a change took from the primary to this worker. */
  observeWorkerLag (seconds: number): void {
    this.#workerLag.observe(seconds)
  }

  /** Counts an upstream attempt that failed and was repeated on another address. */
  observeRetry (kind: UpstreamErrorKind): void {
    this.upstreamRetries.inc()
    this.upstreamAttemptErrors.labels(kind).inc()
  }

  /** Counts a request that failed because of the upstream (its last attempt failed). */
  observeUpstreamError (kind: UpstreamErrorKind): void {
    this.upstreamErrors.labels(kind).inc()
    this.upstreamAttemptErrors.labels(kind).inc()
  }

  /** Counts one on-demand TLS ask. */
  observeTlsAsk (result: TlsAskResult): void {
    this.tlsAsks.labels(result).inc()
  }

  /** Records a registry index being loaded. */
  observeRegistryLoad (index: IndexView & { loadedAt: number }): void {
    this.observeIndex(index)
    this.registryLastLoad.set(index.loadedAt / 1000)
    this.registryLastSync.set(index.loadedAt / 1000)
    this.registryLoads.labels('ok').inc()
  }

  /** Records the registry feed's status (src/registry/listener.ts). */
  observeFeed (status: FeedStatus): void {
    this.registryFeedConnected.set(status.synced ? 1 : 0)
    this.registryStale.set(status.stale ? 1 : 0)
    this.registryFeedDeaf.set(status.deaf === null ? 0 : 1)
    if (status.lastSyncAt > 0) this.registryLastSync.set(status.lastSyncAt / 1000)
  }

  /** Counts what the registry sync did (src/registry/listener.ts). */
  observeSync (event: SyncEvent): void {
    switch (event.kind) {
      case 'full-load':
        if (event.ok) this.registryFullLoads.labels(event.reason satisfies FullLoadReason).inc()
        else this.registryLoads.labels('error').inc()
        break
      case 'resume':
        this.registryResumes.labels(event.from satisfies ResumeFrom).inc()
        break
      case 'changes':
        this.registryChangesApplied.labels(event.source satisfies DeltaSource).inc()
        break
      case 'reconnect':
        this.registryFeedReconnects.inc()
        break
      case 'query-failed':
        this.registryQueryFailures.labels(event.query satisfies SyncQuery).inc()
        break
      case 'full-load-wait':
        this.registryFullLoadWaiting.set(event.waiting ? 1 : 0)
        break
      case 'prune':
        this.registryPrunes.labels(event.result).inc()
        break
    }
  }
}
