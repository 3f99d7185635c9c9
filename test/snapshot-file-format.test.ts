/**
 * The last-known-good snapshot file. Format 4 stores the index's columns: every fact of every
 * tenant and domain round-trips, including what deltas leave behind (rows of deleted tenants, freed
 * domain rows, strings outside the arena), and the index read back takes further deltas. Formats
 * 1–3 (JSON rows, written by a proxy before an upgrade) still load: version 1 tenants without a
 * primary domain, version 1 and 2 tenants not paused, until the registry answers. A file whose
 * checksum holds but whose columns break a rule is refused whole. Real files in a temporary
 * directory.
 *
 * Guards: src/registry/snapshot-file.ts (FORMAT_VERSION, READABLE_VERSIONS, SECTIONS) and
 * indexFromColumns in src/registry/index.ts.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { applyDelta, buildIndex, primaryHostOf, type RegistryIndex, type Route } from '../src/registry/index.js'
import { readSnapshotFile, SnapshotFileError, writeSnapshotFile } from '../src/registry/snapshot-file.js'
import type { DomainRow, TenantRow } from '../src/registry/store.js'
import { joinSnapshot, splitSnapshot, withHeader } from './helpers/snapshot-file.js'

const DEFAULTS = { defaultHost: 'db.internal', defaultPort: 5432 }

const TENANTS: TenantRow[] = [
  { id: 1, slug: 'acme', databaseName: 'acme', databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 3, primaryHost: 'acme.example.com' },
  { id: 2, slug: 'bare', databaseName: 'bare', databaseHost: 'db2', databasePort: 6432, state: 'maintenance', upstream: 'canary', epoch: 1, primaryHost: null },
  { id: 3, slug: 'moving', databaseName: 'moving', databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 2, primaryHost: null, holdMs: 30_000 },
  // Not short ASCII: kept outside the arena's bytes.
  { id: 4, slug: 'umlaut', databaseName: 'datenbank_ü', databaseHost: null, databasePort: null, state: 'suspended', upstream: 'canary', epoch: 9, primaryHost: 'umlaut.example.com' },
  { id: 5, slug: 'gone', databaseName: 'gone', databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: 'gone.example.com' }
]
const DOMAINS: DomainRow[] = [
  { hostname: 'acme.example.com', tenantId: 1 }, { hostname: 'www.acme.example.com', tenantId: 1 }, { hostname: 'old.acme.example.com', tenantId: 1 },
  { hostname: 'bare.example.com', tenantId: 2 }, { hostname: 'umlaut.example.com', tenantId: 4 }, { hostname: 'gone.example.com', tenantId: 5 }
]

/** Every fact the data path reads, per host and per slug, in a comparable form. */
async function facts (index: RegistryIndex): Promise<unknown> {
  const route = (r: Route): unknown[] => [r.id, r.slug, r.dbName, r.dbHost, r.dbPort, r.state, r.upstream, r.epoch, r.holdMs, r.primaryHost, primaryHostOf(index, r)]
  return {
    version: index.version,
    registryId: index.registryId,
    hosts: [...index.byHost.entries()].map(([h, r]) => [h, ...route(r)]).sort(),
    slugs: await index.slugOrder.sorted(),
    bySlug: [...index.bySlug.entries()].map(([s, r]) => [s, ...route(r)]).sort()
  }
}

/** An index with what deltas leave behind: a deleted tenant's row, a freed domain row. */
function lived (): RegistryIndex {
  const index = buildIndex({ version: 7, registryId: 'reg', tenants: TENANTS, domains: DOMAINS }, DEFAULTS)
  applyDelta(index, { complete: true, since: 7, version: 8, registryId: 'reg', changes: 2, tenantSlugs: ['gone'], tenants: [], hostnames: ['gone.example.com', 'old.acme.example.com'], domains: [] }, DEFAULTS)
  return index
}

async function tmpDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-snapshot-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

t.test('format 4 round-trips every fact, and the index read back takes further deltas', async (t) => {
  const file = path.join(await tmpDir(t), 'lkg.json')
  const index = lived()
  t.notOk(index.bySlug.has('gone'), 'control: the tenant is deleted')
  await writeSnapshotFile(file, index, 'fp')
  const { header } = splitSnapshot(await readFile(file))
  t.match(header, { format: 'tenant-proxy/last-known-good', formatVersion: 4, registryId: 'reg', version: 8, tenants: 4, domains: 4, tenantRows: 5, domainRows: 6, byteOrder: os.endianness() })

  const read = await readSnapshotFile(file, 'fp', DEFAULTS)
  t.match(read, { registryId: 'reg', version: 8, formatVersion: 4 })
  t.same(await facts(read.index), await facts(index), 'every route, slug and primary domain as written')
  t.equal(read.index.byHost.get('old.acme.example.com'), undefined, 'a removed domain stays removed')
  t.equal(read.index.bySlug.get('moving')?.holdMs, 30_000, 'a paused tenant is still held after a restart from the file')
  t.equal(read.index.bySlug.get('umlaut')?.dbName, 'datenbank_ü')

  // Deltas on the read index: a new tenant (the columns grow past the file's rows), a changed one, a new domain.
  applyDelta(read.index, {
    complete: true, since: 8, version: 9, registryId: 'reg', changes: 3, tenantSlugs: ['acme', 'fresh'],
    tenants: [{ ...(TENANTS[0] as TenantRow), epoch: 4 }, { id: 6, slug: 'fresh', databaseName: 'fresh', databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: 'fresh.example.com' }],
    hostnames: ['fresh.example.com'], domains: [{ hostname: 'fresh.example.com', slug: 'fresh' }]
  }, DEFAULTS)
  t.match(read.index.byHost.get('fresh.example.com'), { slug: 'fresh', dbHost: 'db.internal' })
  t.equal(read.index.byHost.get('www.acme.example.com')?.epoch, 4)
  t.equal(read.index.bySlug.size, 5)

  // Routes of a file's index are new to this process: never the generation of another tenant.
  const again = await readSnapshotFile(file, 'fp', DEFAULTS)
  const gens = [...again.index.bySlug.values()].map((r) => r.generation)
  t.equal(new Set([...gens, ...[...read.index.bySlug.values()].map((r) => r.generation)]).size, gens.length + 5, 'generations are unique within the process')
})

/** A format 1–3 file: three JSON lines, rows as arrays of the version's width. */
function jsonFile (version: 1 | 2 | 3, tenants: TenantRow[], domains: DomainRow[], width = version === 1 ? 8 : version === 2 ? 9 : 10): string {
  const header = { format: 'tenant-proxy/last-known-good', formatVersion: version, registry: 'fp', registryId: 'reg', version: 7, writtenAt: new Date().toISOString(), tenants: tenants.length, domains: domains.length }
  const body = {
    tenants: tenants.map((r) => [r.id, r.slug, r.databaseName, r.databaseHost ?? DEFAULTS.defaultHost, r.databasePort ?? DEFAULTS.defaultPort, r.state, r.upstream, r.epoch, r.primaryHost, r.holdMs ?? null].slice(0, width)),
    domains: domains.map((d) => [d.hostname, d.tenantId])
  }
  const content = `${JSON.stringify(header)}\n${JSON.stringify(body)}\n`
  return `${content}${JSON.stringify({ sha256: createHash('sha256').update(content).digest('hex') })}\n`
}

t.test('formats 1–3 still load: version 3 keeps the primary domain and hold time, 2 the primary domain, 1 neither', async (t) => {
  const dir = await tmpDir(t)
  const load = async (name: string, text: string): Promise<RegistryIndex> => {
    await writeFile(path.join(dir, name), text)
    return (await readSnapshotFile(path.join(dir, name), 'fp', DEFAULTS)).index
  }
  const summary = (index: RegistryIndex): unknown[][] => [...index.bySlug.values()].map((r) => [r.slug, r.primaryHost, r.holdMs, r.dbHost, r.epoch])
  const v3 = await load('v3.json', jsonFile(3, TENANTS, DOMAINS))
  t.same(summary(v3), summary(buildIndex({ version: 7, registryId: 'reg', tenants: TENANTS, domains: DOMAINS }, DEFAULTS)), 'version 3: as the registry had it')
  t.equal(v3.byHost.size, DOMAINS.length)
  t.same(summary(await load('v2.json', jsonFile(2, TENANTS, DOMAINS))), summary(v3).map(([slug, primary, , ...rest]) => [slug, primary, null, ...rest]), 'version 2: not paused')
  t.same(summary(await load('v1.json', jsonFile(1, TENANTS, DOMAINS))), summary(v3).map(([slug, , , ...rest]) => [slug, null, null, ...rest]), 'version 1: no primary domains either')
  await t.rejects(load('narrow.json', jsonFile(3, TENANTS, DOMAINS, 8)), /tenant row 0 malformed/, 'a version 3 file with version 1 rows is refused')
})

/** Byte offset of a section of the body (the layout docs/operations.md states). */
function sectionAt (header: Record<string, unknown>, name: string): number {
  const t = header.tenantRows as number
  const d = header.domainRows as number
  const order: Array<[string, number]> = [['id', t * 8], ['epoch', t * 8], ['port', t * 2], ['state', t], ['dbHost', t * 4], ['upstream', t * 4], ['slug', t * 4], ['dbName', t * 4], ['primary', t * 4], ['host', d * 4], ['tenant', d * 4], ['arena', header.arenaBytes as number]]
  let at = 0
  for (const [n, bytes] of order) {
    if (n === name) return at
    at += Math.ceil(bytes / 8) * 8
  }
  throw new Error(`no section ${name}`)
}

t.test('a file is refused whole when its checksum, layout, version, byte order or columns are wrong', async (t) => {
  const dir = await tmpDir(t)
  const good = path.join(dir, 'good.json')
  await writeSnapshotFile(good, lived(), 'fp')
  const bytes = await readFile(good)
  /** The read of `content` as a file (a function: t.rejects and t.resolves call it). */
  const attempt = async (content: Buffer | string): Promise<() => Promise<unknown>> => {
    const f = path.join(dir, 'attempt.json')
    await writeFile(f, content)
    return async () => await readSnapshotFile(f, 'fp', DEFAULTS)
  }
  /** The good file with body bytes changed by `edit`, and a checksum that holds. */
  const body = (edit: (body: Buffer, header: Record<string, unknown>) => void): Buffer => {
    const parts = splitSnapshot(bytes)
    const copy = Buffer.from(parts.body)
    edit(copy, parts.header)
    return joinSnapshot({ header: parts.header, body: copy })
  }
  await t.resolves(await attempt(bytes), 'control: the good file loads')
  await t.rejects(readSnapshotFile(good, 'another', DEFAULTS), new SnapshotFileError('written for another registry (database location or schema differ)'))
  await t.rejects(await attempt(withHeader(bytes, (h) => { h.formatVersion = 5 })), new SnapshotFileError('snapshot format version 5 is not one of 1, 2, 3, 4'))
  await t.rejects(await attempt(withHeader(bytes, (h) => { h.byteOrder = os.endianness() === 'LE' ? 'BE' : 'LE' })), /another byte order/)
  await t.rejects(await attempt(withHeader(bytes, (h) => { h.tenants = 5 })), /row counts differ/)
  await t.rejects(await attempt(withHeader(bytes, (h) => { h.tenantRows = 6 })), /row counts differ|layout/)

  const flipped = Buffer.from(bytes)
  const at = flipped.indexOf('www.acme', bytes.indexOf(0x0a))
  flipped[at] = 'v'.charCodeAt(0)
  await t.rejects(await attempt(flipped), /checksum mismatch/, 'a flipped byte of a hostname')
  await t.rejects(await attempt(bytes.subarray(0, Math.floor(bytes.length / 2))), /checksum|layout/, 'truncated')
  await t.rejects(await attempt(bytes.subarray(0, bytes.length - 1)), /layout/, 'the last newline missing')
  await t.rejects(await attempt(''), /layout/, 'empty')
  await t.rejects(await attempt('{"hello":"world"}\n{}\n{}\n'), /format/, 'not ours')

  // Checksums that hold over columns that break the index's rules: a writer's bug, never followed.
  await t.rejects(await attempt(body((b, h) => { b[sectionAt(h, 'state')] = 9 })), /columns malformed: state of row 0 unknown/)
  await t.rejects(await attempt(body((b, h) => { b.writeInt32LE(h.arenaBytes as number, sectionAt(h, 'slug')) })), /columns malformed: slug of row 0 out of range/)
  await t.rejects(await attempt(body((b, h) => { b.writeInt32LE(-99, sectionAt(h, 'dbName') + 4) })), /columns malformed: database name of row 1 out of range/)
  await t.rejects(await attempt(body((b, h) => { b.writeInt32LE(99, sectionAt(h, 'tenant')) })), /columns malformed: tenant of domain row 0 out of range/)
  await t.rejects(await attempt(body((b, h) => { b.writeUInt32LE(7, sectionAt(h, 'dbHost')) })), /columns malformed: database host or upstream of row 0 out of range/)
  await t.rejects(await attempt(body((b, h) => { b.writeInt32LE(b.readInt32LE(sectionAt(h, 'slug')), sectionAt(h, 'slug') + 4) })), /columns malformed: slug of row 1 named twice/)
})
