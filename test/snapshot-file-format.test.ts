/**
 * The last-known-good snapshot file carries each tenant's primary domain since format version 2
 * and a paused tenant's hold time since 3; version 1 and 2 files (written by a proxy before the
 * upgrade) still load, their tenants without a primary domain (1) and not paused (1, 2) until the
 * registry answers. Real files in a temporary directory.
 *
 * Guards: src/registry/snapshot-file.ts (FORMAT_VERSION, READABLE_VERSIONS, the tenant row width).
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { buildIndex, primaryHostOf, type Route } from '../src/registry/index.js'
import { readSnapshotFile, SnapshotFileError, writeSnapshotFile } from '../src/registry/snapshot-file.js'

const DEFAULTS = { defaultHost: 'db.internal', defaultPort: 5432 }

/** A file's three lines rewritten by `edit` (header, body), with a valid checksum. */
function rewrite (text: string, edit: (header: Record<string, unknown>, body: { tenants: unknown[][], domains: unknown[][] }) => void): string {
  const [header = '', body = ''] = text.split('\n')
  const h = JSON.parse(header) as Record<string, unknown>
  const b = JSON.parse(body) as { tenants: unknown[][], domains: unknown[][] }
  edit(h, b)
  const content = `${JSON.stringify(h)}\n${JSON.stringify(b)}\n`
  return `${content}${JSON.stringify({ sha256: createHash('sha256').update(content).digest('hex') })}\n`
}

t.test('version 3 keeps the primary domain and hold time; versions 1 and 2 load without them; others are refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-snapshot-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'lkg.json')
  const tenants = [
    { id: 1, slug: 'acme', databaseName: 'acme', databaseHost: null, databasePort: null, state: 'active' as const, upstream: null, epoch: 3, primaryHost: 'acme.example.com' },
    { id: 2, slug: 'bare', databaseName: 'bare', databaseHost: 'db2', databasePort: 6432, state: 'maintenance' as const, upstream: 'canary', epoch: 1, primaryHost: null },
    { id: 3, slug: 'moving', databaseName: 'moving', databaseHost: null, databasePort: null, state: 'active' as const, upstream: null, epoch: 2, primaryHost: null, holdMs: 30_000 }
  ]
  const domains = [{ hostname: 'acme.example.com', tenantId: 1 }, { hostname: 'www.acme.example.com', tenantId: 1 }, { hostname: 'bare.example.com', tenantId: 2 }]
  const index = buildIndex({ version: 7, registryId: 'reg', tenants, domains }, DEFAULTS)
  await writeSnapshotFile(file, index, 'fp')
  const text = await readFile(file, 'utf8')
  t.match(JSON.parse(text.split('\n')[0] ?? ''), { formatVersion: 3 })

  const read = await readSnapshotFile(file, 'fp')
  t.same(read.tenants.map((r) => [r.slug, r.primaryHost, r.holdMs]), [['acme', 'acme.example.com', null], ['bare', null, null], ['moving', null, 30_000]], 'the primary domain and the hold time of a paused tenant round-trip')
  const again = buildIndex({ version: read.version, registryId: read.registryId, tenants: read.tenants, domains: read.domains }, DEFAULTS)
  t.equal(primaryHostOf(again, again.bySlug.get('acme') as Route), 'acme.example.com')
  t.equal((again.bySlug.get('acme') as Route).primaryHost, [...again.byHost.keys()].find((h) => h === 'acme.example.com'), 'one string for the primary domain and its key')

  const v1 = path.join(dir, 'v1.json')
  await writeFile(v1, rewrite(text, (h, b) => {
    h.formatVersion = 1
    b.tenants = b.tenants.map((row) => row.slice(0, 8))
  }))
  const old = await readSnapshotFile(v1, 'fp')
  t.same(old.tenants.map((r) => [r.slug, r.primaryHost, r.epoch, r.holdMs]), [['acme', null, 3, null], ['bare', null, 1, null], ['moving', null, 2, null]], 'a version 1 file loads, without primary domains')

  const v2 = path.join(dir, 'v2.json')
  await writeFile(v2, rewrite(text, (h, b) => {
    h.formatVersion = 2
    b.tenants = b.tenants.map((row) => row.slice(0, 9))
  }))
  t.same((await readSnapshotFile(v2, 'fp')).tenants.map((r) => [r.slug, r.primaryHost, r.holdMs]), [['acme', 'acme.example.com', null], ['bare', null, null], ['moving', null, null]], 'a version 2 file loads, its tenants not paused')

  const v4 = path.join(dir, 'v4.json')
  await writeFile(v4, rewrite(text, (h) => { h.formatVersion = 4 }))
  await t.rejects(readSnapshotFile(v4, 'fp'), new SnapshotFileError('snapshot format version 4 is not one of 1, 2, 3'))
  const narrow = path.join(dir, 'narrow.json')
  await writeFile(narrow, rewrite(text, (_h, b) => { b.tenants = b.tenants.map((row) => row.slice(0, 8)) }))
  await t.rejects(readSnapshotFile(narrow, 'fp'), /tenant row 0 malformed/, 'a version 3 file with version 1 rows is refused')
})
