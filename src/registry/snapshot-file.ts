/**
 * The last-known-good snapshot file: the index as of a registry version, so a proxy that starts
 * while the registry is down still routes the tenants it knew. Written atomically (temp file,
 * fsync, rename), checksummed, and tied to the registry it came from; a file that fails any check
 * is refused whole, never half-loaded.
 *
 * Layout, three lines: a JSON header, a JSON body of row arrays, a JSON trailer with the SHA-256
 * of the first two lines. Tenants are [id, slug, dbName, dbHost, dbPort, state, upstream, epoch,
 * primaryHost, holdMs] (database host/port already resolved against the defaults; primaryHost
 * since format version 2, holdMs since 3), domains [hostname, tenantId].
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { TENANT_STATES, type TenantState } from './names.js'
import type { RegistryIndex } from './index.js'
import type { DomainRow, TenantRow } from './store.js'

const FORMAT = 'tenant-proxy/last-known-good'
/**
 * 2 added each tenant's primary domain, 3 the hold time of a paused tenant (a proxy that restarts
 * from the file during a `tenants move` must hold the tenant's requests, not forward them to a
 * database being moved). Older files are still read: version 1 tenants without a primary domain
 * until the registry answers, version 1 and 2 tenants not paused. A proxy older than a file's
 * version refuses it and waits for the registry, as without a file.
 */
const FORMAT_VERSION = 3
const READABLE_VERSIONS: readonly unknown[] = [1, 2, 3]
/** Rows serialised between two yields to the event loop (about a millisecond of work). */
const SLICE = 2_000

interface Header {
  format: string
  formatVersion: number
  /** Fingerprint of the registry location (see registryFingerprint); a file for another is foreign. */
  registry: string
  registryId: string
  version: number
  writtenAt: string
  tenants: number
  domains: number
}

/** A snapshot file's content, validated. */
export interface SnapshotFileContent {
  readonly registryId: string
  readonly version: number
  readonly writtenAt: string
  readonly tenants: TenantRow[]
  readonly domains: DomainRow[]
}

/** Why a file was refused (logged as is; never contains secrets). */
export class SnapshotFileError extends Error {}

/** There is no file yet: normal on a first start, or with a new path. Not a refusal. */
export class SnapshotFileMissing extends SnapshotFileError {}

/**
 * Identifies a registry location without its credentials: host, port, database and schema. A
 * snapshot file written for one location is refused by a proxy configured for another.
 */
export function registryFingerprint (databaseUrl: string | null, embeddedDataDir: string, schema: string): string {
  let where = `embedded:${path.resolve(embeddedDataDir)}`
  if (databaseUrl !== null) {
    const u = new URL(databaseUrl)
    where = `${u.hostname}:${u.port === '' ? '5432' : u.port}/${decodeURIComponent(u.pathname.slice(1))}`
  }
  return createHash('sha256').update(`${where}#${schema}`).digest('hex').slice(0, 32)
}

/** Thrown when the index changed while it was being written (the caller writes again later). */
export class SnapshotWriteAborted extends Error {}

/**
 * Writes the index to `file` atomically. Rows are serialised in small slices with a yield to the
 * event loop between them (a 100,000-tenant index must not stall requests or the change feed for
 * the ~100 ms a single pass takes); `unchanged()` is asked after every yield and a false answer
 * aborts the write, because a file mixing two versions would be worse than an older one.
 */
export async function writeSnapshotFile (file: string, index: RegistryIndex, fingerprint: string, unchanged: () => boolean = () => true, serialized: () => void = () => {}): Promise<{ bytes: number }> {
  const header: Header = {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    registry: fingerprint,
    registryId: index.registryId,
    version: index.version,
    writtenAt: new Date().toISOString(),
    tenants: index.bySlug.size,
    domains: index.byHost.size
  }
  await fs.mkdir(path.dirname(file), { recursive: true })
  const tmp = `${file}.tmp-${process.pid}`
  const handle = await fs.open(tmp, 'w', 0o600)
  const hash = createHash('sha256')
  let bytes = 0
  const write = async (text: string): Promise<void> => {
    hash.update(text)
    bytes += (await handle.write(text)).bytesWritten
    if (!unchanged()) throw new SnapshotWriteAborted('the index changed during the write')
  }
  try {
    await write(JSON.stringify(header) + '\n{"tenants":[')
    let parts: string[] = []
    let first = true
    const flush = async (): Promise<void> => {
      if (parts.length === 0) return
      const text = (first ? '' : ',') + parts.join(',')
      first = false
      parts = []
      await write(text)
    }
    for (const r of index.bySlug.values()) {
      parts.push(JSON.stringify([r.id, r.slug, r.dbName, r.dbHost, r.dbPort, r.state, r.upstream, r.epoch, r.primaryHost, r.holdMs]))
      if (parts.length === SLICE) await flush()
    }
    await flush()
    await write('],"domains":[')
    first = true
    for (const [hostname, route] of index.byHost) {
      parts.push(JSON.stringify([hostname, route.id]))
      if (parts.length === SLICE) await flush()
    }
    await flush()
    await write(']}\n')
    const trailer = JSON.stringify({ sha256: hash.digest('hex') }) + '\n'
    bytes += (await handle.write(trailer)).bytesWritten
    // Everything is in the kernel's hands now; the fsync below can take seconds on slow disks.
    serialized()
    await handle.sync()
  } catch (err) {
    await handle.close()
    await fs.rm(tmp, { force: true })
    throw err
  }
  await handle.close()
  try {
    await fs.rename(tmp, file)
  } catch (err) {
    await fs.rm(tmp, { force: true })
    throw err
  }
  // The rename is durable only once the directory entry is on disk.
  const dir = await fs.open(path.dirname(file), 'r')
  try { await dir.sync() } catch { /* some filesystems refuse fsync on directories */ } finally { await dir.close() }
  return { bytes }
}

/** Reads and validates a snapshot file; throws SnapshotFileError naming the first problem. */
export async function readSnapshotFile (file: string, fingerprint: string): Promise<SnapshotFileContent> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') throw new SnapshotFileMissing('no snapshot file')
    throw new SnapshotFileError(`cannot read: ${(err as Error).message}`)
  }
  const first = text.indexOf('\n')
  const last = text.lastIndexOf('\n', text.length - 2)
  if (first === -1 || last <= first || !text.endsWith('\n')) throw new SnapshotFileError('not a tenant-proxy snapshot file (layout)')
  const header = parseJson(text.slice(0, first), 'header') as Partial<Header>
  if (header.format !== FORMAT) throw new SnapshotFileError('not a tenant-proxy snapshot file (format)')
  if (!READABLE_VERSIONS.includes(header.formatVersion)) throw new SnapshotFileError(`snapshot format version ${String(header.formatVersion)} is not one of ${READABLE_VERSIONS.join(', ')}`)
  if (header.registry !== fingerprint) throw new SnapshotFileError('written for another registry (database location or schema differ)')
  const trailer = parseJson(text.slice(last + 1), 'trailer') as { sha256?: unknown }
  const digest = createHash('sha256').update(text.slice(0, last + 1)).digest('hex')
  if (trailer.sha256 !== digest) throw new SnapshotFileError('checksum mismatch (truncated or modified)')
  const body = parseJson(text.slice(first + 1, last), 'body') as { tenants?: unknown, domains?: unknown }
  if (!Array.isArray(body.tenants) || !Array.isArray(body.domains)) throw new SnapshotFileError('body lacks tenants or domains')
  if (body.tenants.length !== header.tenants || body.domains.length !== header.domains) throw new SnapshotFileError('row counts differ from the header')
  if (typeof header.version !== 'number' || typeof header.registryId !== 'string' || typeof header.writtenAt !== 'string') throw new SnapshotFileError('header fields missing')
  const width = header.formatVersion === 1 ? 8 : header.formatVersion === 2 ? 9 : 10
  const tenants = body.tenants.map((r: unknown, i) => tenantRow(r, i, width))
  const domains = body.domains.map((r: unknown, i) => domainRow(r, i))
  return { registryId: header.registryId, version: header.version, writtenAt: header.writtenAt, tenants, domains }
}

function parseJson (s: string, part: string): unknown {
  try {
    const v: unknown = JSON.parse(s)
    if (typeof v !== 'object' || v === null) throw new Error('not an object')
    return v
  } catch {
    throw new SnapshotFileError(`not a tenant-proxy snapshot file (${part} is not JSON)`)
  }
}

function tenantRow (r: unknown, i: number, width: number): TenantRow {
  if (!Array.isArray(r) || r.length !== width) throw new SnapshotFileError(`tenant row ${i} malformed`)
  const [id, slug, databaseName, databaseHost, databasePort, state, upstream, epoch, primaryHost = null, holdMs = null] = r as unknown[]
  if (typeof id !== 'number' || typeof slug !== 'string' || typeof databaseName !== 'string' || typeof databaseHost !== 'string' ||
    typeof databasePort !== 'number' || !TENANT_STATES.includes(state as TenantState) || !(upstream === null || typeof upstream === 'string') || typeof epoch !== 'number' ||
    !(primaryHost === null || typeof primaryHost === 'string') || !(holdMs === null || (typeof holdMs === 'number' && holdMs >= 0))) {
    throw new SnapshotFileError(`tenant row ${i} malformed`)
  }
  return { id, slug, databaseName, databaseHost, databasePort, state: state as TenantState, upstream, epoch, primaryHost, holdMs }
}

function domainRow (r: unknown, i: number): DomainRow {
  if (!Array.isArray(r) || r.length !== 2 || typeof r[0] !== 'string' || typeof r[1] !== 'number') throw new SnapshotFileError(`domain row ${i} malformed`)
  return { hostname: r[0], tenantId: r[1] }
}
