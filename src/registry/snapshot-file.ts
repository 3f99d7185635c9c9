/**
 * The last-known-good snapshot file: the index as of a registry version, so a proxy that starts
 * while the registry is down still routes the tenants it knew. Written atomically (temp file,
 * fsync, rename), checksummed, and tied to the registry it came from; a file that fails any check
 * is refused whole, never half-loaded.
 *
 * Format 4 (written since issue 12: a million tenants from the file to `/up` within 5 s): a JSON
 * header line, the index's columns as raw little-endian arrays (IndexColumns, each section padded
 * to 8 bytes), and a JSON trailer line with the SHA-256 of everything before it. Reading is a few
 * large reads straight into the arrays the index keeps, a checksum and one pass that checks every
 * reference and rebuilds the hash tables: no JSON of the rows, no row objects, no string per name.
 *
 * Formats 1–3 (three JSON lines: header, body of row arrays, trailer) are still read, so an
 * upgraded proxy starts from the file its predecessor wrote. Their tenant rows are [id, slug,
 * dbName, dbHost, dbPort, state, upstream, epoch, primaryHost, holdMs] (primaryHost since 2,
 * holdMs since 3), domains [hostname, tenantId].
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { buildIndex, indexColumns, indexFromColumns, IndexColumnsInvalid, type DatabaseDefaults, type IndexColumns, type RegistryIndex } from './index.js'
import { TENANT_STATES, type TenantState } from './names.js'
import type { DomainRow, TenantRow } from './store.js'

const FORMAT = 'tenant-proxy/last-known-good'
/**
 * 2 added each tenant's primary domain, 3 the hold time of a paused tenant (a proxy that restarts
 * from the file during a `tenants move` must hold the tenant's requests, not forward them to a
 * database being moved), 4 the binary columns. Older files are still read: version 1 tenants
 * without a primary domain until the registry answers, version 1 and 2 tenants not paused. A
 * proxy older than a file's version refuses it and waits for the registry, as without a file.
 */
const FORMAT_VERSION = 4
const READABLE_VERSIONS: readonly unknown[] = [1, 2, 3, 4]
/** Bytes written between two yields to the event loop (a millisecond or two of hashing). */
const CHUNK = 1 << 20

interface Header {
  format: string
  formatVersion: number
  /** Fingerprint of the registry location (see registryFingerprint); a file for another is foreign. */
  registry: string
  registryId: string
  version: number
  writtenAt: string
  /** Tenants and domains in the index (rows of deleted tenants and free domain rows not counted). */
  tenants: number
  domains: number
}

/** Format 4's header: where the columns are and the few strings kept outside them. */
interface ColumnsHeader extends Header {
  byteOrder: 'LE' | 'BE'
  tenantRows: number
  domainRows: number
  arenaBytes: number
  bodyBytes: number
  strings: string[]
  odd: string[]
  hold: Array<[number, number]>
}

type Column = Float64Array | Uint16Array | Uint8Array | Uint32Array | Int32Array
type ColumnName = 'id' | 'epoch' | 'port' | 'state' | 'dbHost' | 'upstream' | 'slug' | 'dbName' | 'primary' | 'host' | 'tenant' | 'arena'

interface Section { name: ColumnName, make: (n: number) => Column, rows: (h: ColumnsHeader) => number }

/** Each section with its array type's bytes per element. */
function withWidths (sections: Section[]): Array<Section & { width: number }> {
  return sections.map((section) => ({ ...section, width: section.make(0).BYTES_PER_ELEMENT }))
}

/**
 * The body's sections in file order: which column, its array type, how many elements it has, and
 * the bytes per element (the array type's own).
 */
const SECTIONS: ReadonlyArray<Section & { width: number }> = withWidths([
  { name: 'id', make: (n) => new Float64Array(n), rows: (h) => h.tenantRows },
  { name: 'epoch', make: (n) => new Float64Array(n), rows: (h) => h.tenantRows },
  { name: 'port', make: (n) => new Uint16Array(n), rows: (h) => h.tenantRows },
  { name: 'state', make: (n) => new Uint8Array(n), rows: (h) => h.tenantRows },
  { name: 'dbHost', make: (n) => new Uint32Array(n), rows: (h) => h.tenantRows },
  { name: 'upstream', make: (n) => new Uint32Array(n), rows: (h) => h.tenantRows },
  { name: 'slug', make: (n) => new Int32Array(n), rows: (h) => h.tenantRows },
  { name: 'dbName', make: (n) => new Int32Array(n), rows: (h) => h.tenantRows },
  { name: 'primary', make: (n) => new Int32Array(n), rows: (h) => h.tenantRows },
  { name: 'host', make: (n) => new Int32Array(n), rows: (h) => h.domainRows },
  { name: 'tenant', make: (n) => new Int32Array(n), rows: (h) => h.domainRows },
  { name: 'arena', make: (n) => new Uint8Array(n), rows: (h) => h.arenaBytes }
])

const padded = (n: number): number => Math.ceil(n / 8) * 8

function bodyBytes (h: ColumnsHeader): number {
  return SECTIONS.reduce((sum, s) => sum + padded(s.rows(h) * s.width), 0)
}

/** A content read from a snapshot file, validated, with its index built. */
export interface SnapshotFileContent {
  readonly registryId: string
  readonly version: number
  readonly writtenAt: string
  readonly formatVersion: number
  readonly index: RegistryIndex
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
 * Writes the index to `file` atomically, in format 4. The columns are written a megabyte at a time
 * with a yield to the event loop between writes (hashing a million tenants' 90 MB at once would
 * stall requests and the change feed); `unchanged()` is asked after every yield and a false answer
 * aborts the write, because a file mixing two versions would be worse than an older one.
 */
export async function writeSnapshotFile (file: string, index: RegistryIndex, fingerprint: string, unchanged: () => boolean = () => true, serialized: () => void = () => {}): Promise<{ bytes: number }> {
  const cols = indexColumns(index)
  const header: ColumnsHeader = {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    registry: fingerprint,
    registryId: index.registryId,
    version: index.version,
    writtenAt: new Date().toISOString(),
    tenants: index.bySlug.size,
    domains: index.byHost.size,
    byteOrder: os.endianness(),
    tenantRows: cols.tenantRows,
    domainRows: cols.domainRows,
    arenaBytes: cols.arenaUsed,
    bodyBytes: 0,
    strings: [...cols.strings],
    odd: [...cols.odd],
    hold: cols.hold.map(([t, ms]) => [t, ms])
  }
  header.bodyBytes = bodyBytes(header)
  await fs.mkdir(path.dirname(file), { recursive: true })
  const tmp = `${file}.tmp-${process.pid}`
  const handle = await fs.open(tmp, 'w', 0o600)
  const hash = createHash('sha256')
  let bytes = 0
  const write = async (data: Uint8Array | string): Promise<void> => {
    const buf = typeof data === 'string' ? Buffer.from(data) : data
    hash.update(buf)
    bytes += (await handle.write(buf)).bytesWritten
    if (!unchanged()) throw new SnapshotWriteAborted('the index changed during the write')
  }
  try {
    await write(JSON.stringify(header) + '\n')
    for (const section of SECTIONS) {
      const column = cols[section.name]
      const all = new Uint8Array(column.buffer, column.byteOffset, section.rows(header) * section.width)
      for (let at = 0; at < all.length; at += CHUNK) await write(all.subarray(at, at + CHUNK))
      const pad = padded(all.length) - all.length
      if (pad > 0) await write(new Uint8Array(pad))
    }
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

/**
 * Reads and validates a snapshot file and builds its index; throws SnapshotFileError naming the
 * first problem (SnapshotFileMissing when there is no file).
 */
export async function readSnapshotFile (file: string, fingerprint: string, defaults: DatabaseDefaults): Promise<SnapshotFileContent> {
  let handle: fs.FileHandle
  try {
    handle = await fs.open(file, 'r')
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') throw new SnapshotFileMissing('no snapshot file')
    throw new SnapshotFileError(`cannot read: ${(err as Error).message}`)
  }
  try {
    // Read front to back, never by position or size: the file may be a pipe (the tests make the
    // read wait with a FIFO).
    const input = new SequentialReader(handle)
    const headerBytes = await input.line()
    const header = parseJson(headerBytes.subarray(0, -1).toString('utf8'), 'header') as Partial<Header>
    if (header.format !== FORMAT) throw new SnapshotFileError('not a tenant-proxy snapshot file (format)')
    if (!READABLE_VERSIONS.includes(header.formatVersion)) throw new SnapshotFileError(`snapshot format version ${String(header.formatVersion)} is not one of ${READABLE_VERSIONS.join(', ')}`)
    if (header.registry !== fingerprint) throw new SnapshotFileError('written for another registry (database location or schema differ)')
    if (typeof header.version !== 'number' || typeof header.registryId !== 'string' || typeof header.writtenAt !== 'string') throw new SnapshotFileError('header fields missing')
    const meta = { version: header.version, registryId: header.registryId, writtenAt: header.writtenAt, formatVersion: header.formatVersion as number }
    if (header.formatVersion !== 4) {
      const text = Buffer.concat([headerBytes, await input.rest(Infinity)]).toString('utf8')
      return { ...meta, index: indexFromRows(text, header as Header, defaults) }
    }
    return { ...meta, index: await indexFromBody(input, header, headerBytes) }
  } catch (err) {
    if (err instanceof SnapshotFileError) throw err
    throw new SnapshotFileError(`cannot read: ${(err as Error).message}`, { cause: err })
  } finally {
    await handle.close()
  }
}

/** Reads a file front to back: a line, then byte ranges straight into the caller's arrays. */
class SequentialReader {
  readonly #handle: fs.FileHandle
  /** Bytes read past the header line, served first. */
  #pending: Buffer = Buffer.alloc(0)

  constructor (handle: fs.FileHandle) { this.#handle = handle }

  /** The first line, newline included. */
  async line (): Promise<Buffer> {
    const chunks: Buffer[] = []
    for (;;) {
      const chunk = Buffer.alloc(64 * 1024)
      const { bytesRead } = await this.#handle.read(chunk, 0, chunk.length, null)
      if (bytesRead === 0) throw new SnapshotFileError('not a tenant-proxy snapshot file (layout)')
      const got = chunk.subarray(0, bytesRead)
      const nl = got.indexOf(0x0a)
      if (nl !== -1) {
        chunks.push(got.subarray(0, nl + 1))
        this.#pending = got.subarray(nl + 1)
        return Buffer.concat(chunks)
      }
      chunks.push(got)
    }
  }

  /** Fills `into` with the next bytes; a file that ends first is a truncated one. */
  async fill (into: Uint8Array): Promise<void> {
    let done = Math.min(this.#pending.length, into.length)
    into.set(this.#pending.subarray(0, done))
    this.#pending = this.#pending.subarray(done)
    while (done < into.length) {
      const { bytesRead } = await this.#handle.read(into, done, into.length - done, null)
      if (bytesRead === 0) throw new SnapshotFileError('checksum mismatch (truncated or modified)')
      done += bytesRead
    }
  }

  /** Everything up to the end, refused past `max` bytes. */
  async rest (max: number): Promise<Buffer> {
    const chunks = [this.#pending]
    let total = this.#pending.length
    for (;;) {
      const chunk = Buffer.alloc(64 * 1024)
      const { bytesRead } = await this.#handle.read(chunk, 0, chunk.length, null)
      if (bytesRead === 0) return Buffer.concat(chunks)
      chunks.push(chunk.subarray(0, bytesRead))
      total += bytesRead
      if (total > max) throw new SnapshotFileError('not a tenant-proxy snapshot file (layout)')
    }
  }
}

/** Format 4: the columns read straight into the arrays the index keeps, checksummed, then checked. */
async function indexFromBody (input: SequentialReader, h: Partial<ColumnsHeader>, headerBytes: Buffer): Promise<RegistryIndex> {
  if (h.byteOrder !== os.endianness()) throw new SnapshotFileError(`written on a machine of another byte order (${String(h.byteOrder)})`)
  const counts = [h.tenantRows, h.domainRows, h.arenaBytes, h.bodyBytes, h.tenants, h.domains]
  if (!counts.every((n) => Number.isSafeInteger(n) && (n as number) >= 0) || !Array.isArray(h.strings) || !Array.isArray(h.odd) || !Array.isArray(h.hold) ||
    !h.hold.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'number' && typeof e[1] === 'number')) {
    throw new SnapshotFileError('header fields missing')
  }
  const header = h as ColumnsHeader
  if (header.bodyBytes !== bodyBytes(header)) throw new SnapshotFileError('row counts differ from the header')
  const hash = createHash('sha256').update(headerBytes)
  const columns = new Map<ColumnName, Column>()
  for (const section of SECTIONS) {
    const rows = section.rows(header)
    // Room for the deltas to come, as after a load from the registry (Columns.trim).
    const column = section.make(rows + Math.max(1024, rows >> 5))
    const bytes = new Uint8Array(column.buffer, column.byteOffset, rows * section.width)
    await input.fill(bytes)
    hash.update(bytes)
    const pad = new Uint8Array(padded(bytes.length) - bytes.length)
    await input.fill(pad)
    hash.update(pad)
    columns.set(section.name, column)
  }
  const trailerBytes = await input.rest(1024)
  if (trailerBytes.at(-1) !== 0x0a) throw new SnapshotFileError('not a tenant-proxy snapshot file (layout)')
  const trailer = parseJson(trailerBytes.subarray(0, -1).toString('utf8'), 'trailer') as { sha256?: unknown }
  if (trailer.sha256 !== hash.digest('hex')) throw new SnapshotFileError('checksum mismatch (truncated or modified)')
  const column = <T extends Column>(name: ColumnName): T => columns.get(name) as T
  const cols: IndexColumns = {
    tenantRows: header.tenantRows,
    id: column('id'),
    epoch: column('epoch'),
    port: column('port'),
    state: column('state'),
    dbHost: column('dbHost'),
    upstream: column('upstream'),
    slug: column('slug'),
    dbName: column('dbName'),
    primary: column('primary'),
    domainRows: header.domainRows,
    host: column('host'),
    tenant: column('tenant'),
    arena: column('arena'),
    arenaUsed: header.arenaBytes,
    odd: header.odd,
    strings: header.strings,
    hold: header.hold
  }
  let index: RegistryIndex
  try {
    index = indexFromColumns({ version: header.version, registryId: header.registryId, loadedAt: Date.parse(header.writtenAt) }, cols)
  } catch (err) {
    if (err instanceof IndexColumnsInvalid) throw new SnapshotFileError(`columns malformed: ${err.message}`, { cause: err })
    throw err
  }
  if (index.bySlug.size !== header.tenants || index.byHost.size !== header.domains) throw new SnapshotFileError('row counts differ from the header')
  return index
}

/** Formats 1–3: three JSON lines, rows as arrays. */
function indexFromRows (text: string, header: Header, defaults: DatabaseDefaults): RegistryIndex {
  const first = text.indexOf('\n')
  const last = text.lastIndexOf('\n', text.length - 2)
  if (first === -1 || last <= first || !text.endsWith('\n')) throw new SnapshotFileError('not a tenant-proxy snapshot file (layout)')
  const trailer = parseJson(text.slice(last + 1), 'trailer') as { sha256?: unknown }
  const digest = createHash('sha256').update(text.slice(0, last + 1)).digest('hex')
  if (trailer.sha256 !== digest) throw new SnapshotFileError('checksum mismatch (truncated or modified)')
  const body = parseJson(text.slice(first + 1, last), 'body') as { tenants?: unknown, domains?: unknown }
  if (!Array.isArray(body.tenants) || !Array.isArray(body.domains)) throw new SnapshotFileError('body lacks tenants or domains')
  if (body.tenants.length !== header.tenants || body.domains.length !== header.domains) throw new SnapshotFileError('row counts differ from the header')
  const width = header.formatVersion === 1 ? 8 : header.formatVersion === 2 ? 9 : 10
  const tenants = body.tenants.map((r: unknown, i) => tenantRow(r, i, width))
  const domains = body.domains.map((r: unknown, i) => domainRow(r, i))
  // Rows in the file carry resolved database hosts and ports already.
  return buildIndex({ version: header.version, registryId: header.registryId, tenants, domains }, defaults, null, Date.parse(header.writtenAt))
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
