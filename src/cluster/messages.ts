/**
 * The protocol between a cluster primary and its workers over node:cluster's IPC channel (with
 * 'advanced' serialization: structured clone, so rows travel as plain objects and arrays).
 *
 * The primary owns the registry feed; a worker owns an index built from what it is sent: one
 * `full` (the rows of the primary's index) when it says `hello` or asks for a `resync`, then every
 * `delta` the primary applies, in order. Channels are ordered, so a worker's index follows the
 * primary's version by version; a delta that does not start at the worker's version means a
 * message was lost and the worker asks for a full again.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { RegistryIndex } from '../registry/index.js'
import type { FeedStatus } from '../registry/listener.js'
import type { DomainRow, RegistryDelta, TenantRow } from '../registry/store.js'


/** A worker's own view, for /ready and `registry status`-like checks. */
export interface WorkerStatus {
  readonly pid: number
  /** Index version, or null before the first full load arrived. */
  readonly version: number | null
  readonly tenants: number
  readonly draining: boolean
  readonly heapUsedBytes: number
  readonly rssBytes: number
  /** Heap the index took when it was first built (a full GC before and after), or null if unmeasured. */
  readonly indexHeapBytes: number | null
}

export type MetricsJson = Array<MetricObjectWithValues<MetricValue<string>>>

/** Milliseconds since the epoch with sub-millisecond precision, comparable between processes. */
export function preciseNow (): number {
  return performance.timeOrigin + performance.now()
}

/** Primary → worker. */
export type ToWorker =
  | { readonly tp: 'full', readonly version: number, readonly registryId: string, readonly loadedAt: number, readonly tenants: TenantRow[], readonly domains: DomainRow[], readonly status: FeedStatus, readonly sentAt: number }
  | { readonly tp: 'delta', readonly delta: Extract<RegistryDelta, { complete: true }>, readonly status: FeedStatus, readonly sentAt: number }
  | { readonly tp: 'status', readonly status: FeedStatus }
  | { readonly tp: 'ask', readonly id: number, readonly what: 'metrics' | 'status' }
  | { readonly tp: 'drain' }

/** Worker → primary. */
export type ToPrimary =
  | { readonly tp: 'hello' }
  | { readonly tp: 'resync', readonly reason: string }
  | { readonly tp: 'answer', readonly id: number, readonly metrics?: MetricsJson, readonly status?: WorkerStatus }

/** True for this protocol's messages (the IPC channel may carry others). */
export function isMessage<T extends { tp: string }> (value: unknown): value is T {
  return typeof value === 'object' && value !== null && typeof (value as { tp?: unknown }).tp === 'string'
}

/**
 * The rows of an index, as a full load message carries them: database hosts and ports resolved
 * already (like the snapshot file's), pauses kept (unlike it: a worker must hold their requests).
 */
export function fullMessage (index: RegistryIndex, status: FeedStatus): Extract<ToWorker, { tp: 'full' }> {
  const tenants: TenantRow[] = []
  for (const r of index.bySlug.values()) {
    tenants.push({ id: r.id, slug: r.slug, databaseName: r.dbName, databaseHost: r.dbHost, databasePort: r.dbPort, state: r.state, upstream: r.upstream, epoch: r.epoch, primaryHost: r.primaryHost, holdMs: r.holdMs })
  }
  const domains: DomainRow[] = []
  for (const [hostname, route] of index.byHost) domains.push({ hostname, tenantId: route.id })
  return { tp: 'full', version: index.version, registryId: index.registryId, loadedAt: index.loadedAt, tenants, domains, status, sentAt: preciseNow() }
}
