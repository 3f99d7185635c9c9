/**
 * The compact registry index by itself (no database): lookups of every kind through the
 * resolver, live changes (renames, domain moves, removals) compared with a fresh build, hash
 * collisions, growth from a tiny index, the arena rebuild after heavy churn, strings that are not
 * short ASCII, and generations (what cached descriptors are keyed on).
 *
 * Guards: src/registry/index.ts, src/registry/key-table.ts, src/registry/string-arena.ts.
 */
import t from 'tap'
import { applyDelta, buildIndex, primaryHostOf, type RegistryIndex, type Route } from '../src/registry/index.js'
import { KeyTable } from '../src/registry/key-table.js'
import { StringArena, decodeRef, hashString } from '../src/registry/string-arena.js'
import type { DomainRow, RegistryDelta, TenantRow } from '../src/registry/store.js'
import { Resolver } from '../src/routing/resolve.js'

const DEFAULTS = { defaultHost: 'db.internal', defaultPort: 5432 }
type Delta = Extract<RegistryDelta, { complete: true }>

const row = (id: number, slug: string, extra: Partial<TenantRow> = {}): TenantRow =>
  ({ id, slug, databaseName: `${slug.replace(/-/g, '_')}_db`, databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: `${slug}.example.com`, holdMs: null, ...extra })

/** The registry as plain rows, edited by the tests and turned into snapshots and deltas. */
class Model {
  tenants = new Map<number, TenantRow>()
  domains = new Map<string, number>()
  version = 1

  put (r: TenantRow, ...aliases: string[]): void {
    this.tenants.set(r.id, r)
    if (r.primaryHost !== null) this.domains.set(r.primaryHost, r.id)
    for (const a of aliases) this.domains.set(a, r.id)
  }

  snapshot (): { version: number, registryId: string, tenants: TenantRow[], domains: DomainRow[] } {
    return { version: this.version, registryId: 'r', tenants: [...this.tenants.values()], domains: [...this.domains].map(([hostname, tenantId]) => ({ hostname, tenantId })) }
  }

  /** A delta as the store reads it: current rows of the touched tenants, all their domains, and the touched hostnames. */
  delta (touchedSlugs: string[], touchedIds: number[], touchedHosts: string[] = []): Delta {
    const since = this.version++
    const tenants = touchedIds.map((id) => this.tenants.get(id)).filter((x): x is TenantRow => x !== undefined)
    const ids = new Set(touchedIds)
    const slugOf = (id: number): string => (this.tenants.get(id) as TenantRow).slug
    const domains = [...this.domains].filter(([h, id]) => ids.has(id) || touchedHosts.includes(h)).map(([hostname, id]) => ({ hostname, slug: slugOf(id) }))
    return { complete: true, since, version: this.version, registryId: 'r', changes: 1, tenantSlugs: touchedSlugs, tenants, hostnames: touchedHosts, domains }
  }
}

/** Everything a caller can read, in a canonical order. */
async function shape (index: RegistryIndex): Promise<unknown> {
  const facts = (r: Route): unknown[] => [r.id, r.slug, r.state, r.upstream, r.epoch, r.dbName, r.dbHost, r.dbPort, r.primaryHost, r.holdMs]
  return {
    hosts: [...index.byHost].map(([h, r]) => [h, ...facts(r)]).sort(),
    slugs: [...index.bySlug].map(([s, r]) => [s, ...facts(r), primaryHostOf(index, r)]).sort(),
    sizes: [index.byHost.size, index.bySlug.size],
    order: [...await index.slugOrder.sorted()]
  }
}

const resolver = new Resolver({ wwwFallback: true, wildcardDomains: ['apps.example', 'eu.apps.example'], reservedLabels: ['admin'], passthroughHosts: ['status.example'] })
const who = (index: RegistryIndex, host: string): string => {
  const d = resolver.resolve(index, host)
  return d.kind === 'tenant' ? d.route.slug : d.kind
}

t.test('lookups of every kind', async (t) => {
  const m = new Model()
  m.put(row(1, 'acme'), 'shop.acme.com')
  m.put(row(2, 'beta', { state: 'suspended', upstream: 'reports', databaseHost: 'db9.internal', databasePort: 6543, epoch: 4 }))
  m.put(row(3, 'admin'))
  m.put(row(4, 'naked', { primaryHost: null }))
  m.put(row(5, 'paused', { holdMs: 30_000 }))
  const index = buildIndex(m.snapshot(), DEFAULTS)
  const cases: Array<[string, string]> = [
    ['acme.example.com', 'acme'], // exact, primary
    ['shop.acme.com', 'acme'], // exact, alias
    ['www.acme.example.com', 'acme'], // www. fallback
    ['www.shop.acme.com', 'acme'],
    ['www.www.acme.example.com', 'unknown'],
    ['acme.apps.example', 'acme'], // wildcard: the slug
    ['naked.apps.example', 'naked'], // a tenant without domains, by slug
    ['naked.example.com', 'unknown'],
    ['acme.eu.apps.example', 'acme'], // the longest wildcard base
    ['a.acme.apps.example', 'unknown'], // one label only
    ['admin.apps.example', 'unknown'], // reserved
    ['admin.example.com', 'admin'], // reserved only under wildcards
    ['nobody.apps.example', 'unknown'],
    ['status.example', 'passthrough'],
    ['acme.example.co', 'unknown'],
    ['cme.example.com', 'unknown'],
    ['', 'unknown']
  ]
  for (const [host, expect] of cases) t.equal(who(index, host), expect, host || '(empty)')
  const beta = index.byHost.get('beta.example.com') as Route
  t.same([beta.id, beta.slug, beta.state, beta.upstream, beta.epoch, beta.db, beta.primaryHost, beta.holdMs], [2, 'beta', 'suspended', 'reports', 4, { name: 'beta_db', host: 'db9.internal', port: 6543 }, 'beta.example.com', null])
  t.equal(index.bySlug.get('paused')?.holdMs, 30_000, 'hold time')
  t.equal(index.bySlug.get('naked')?.primaryHost, null)
  t.equal(index.bySlug.get('acme')?.dbHost, 'db.internal', 'the default database server')
  t.equal(index.byHost.get('acme.example.com'), index.bySlug.get('acme'), 'one route object for host and slug lookups while cached')
  t.equal(index.byHost.size, 5)
  t.equal(index.bySlug.size, 5)
  t.ok(index.byHost.has('shop.acme.com'))
  t.notOk(index.byHost.has('www.shop.acme.com'))
  t.same([...index.bySlug.keys()], ['acme', 'beta', 'admin', 'naked', 'paused'], 'slugs in load order')
})

t.test('live changes equal a fresh build', async (t) => {
  const m = new Model()
  for (let i = 1; i <= 20; i++) m.put(row(i, `t${i}`), `alias${i}.example.org`)
  const live = buildIndex(m.snapshot(), DEFAULTS)
  await live.slugOrder.sorted() // tracked from now on
  const steps: Array<[string, () => Delta]> = [
    ['state change', () => { m.put({ ...(m.tenants.get(1) as TenantRow), state: 'maintenance' }); return m.delta(['t1'], [1]) }],
    ['rename (old and new slug logged)', () => {
      const r = m.tenants.get(2) as TenantRow
      m.put({ ...r, slug: 'renamed' })
      return m.delta(['t2', 'renamed'], [2])
    }],
    ['slugs swapped between two tenants', () => {
      const a = m.tenants.get(3) as TenantRow
      const b = m.tenants.get(4) as TenantRow
      m.put({ ...a, slug: b.slug })
      m.put({ ...b, slug: a.slug })
      return m.delta([a.slug, b.slug], [3, 4])
    }],
    ['domain moved to another tenant', () => {
      m.domains.set('alias5.example.org', 6)
      return m.delta([], [6], ['alias5.example.org'])
    }],
    ['primary domain moved, as an alias, by a writer that logs only its new tenant', () => {
      m.domains.set('t7.example.com', 8)
      return m.delta([], [8], ['t7.example.com'])
    }],
    ['domain removed', () => {
      m.domains.delete('alias9.example.org')
      return m.delta([], [9], ['alias9.example.org'])
    }],
    ['tenant removed (domains cascade)', () => {
      m.tenants.delete(10)
      for (const [h, id] of m.domains) if (id === 10) m.domains.delete(h)
      return m.delta(['t10'], [10], ['t10.example.com', 'alias10.example.org'])
    }],
    ['tenant added', () => {
      m.put(row(21, 'newcomer', { upstream: 'canary' }), 'new.example.net')
      return m.delta(['newcomer'], [21], ['newcomer.example.com', 'new.example.net'])
    }],
    ['removed slug reused by a new tenant', () => {
      m.put(row(22, 't10'))
      return m.delta(['t10'], [22], ['t10.example.com'])
    }],
    ['paused and resumed', () => {
      m.put({ ...(m.tenants.get(11) as TenantRow), holdMs: 5_000 })
      return m.delta(['t11'], [11])
    }],
    ['new primary domain', () => {
      const r = m.tenants.get(12) as TenantRow
      m.put({ ...r, primaryHost: 'alias12.example.org' })
      m.domains.set('t12.example.com', 12)
      return m.delta(['t12'], [12], ['alias12.example.org'])
    }]
  ]
  for (const [what, step] of steps) {
    const result = applyDelta(live, step(), DEFAULTS)
    t.ok(result.consistent, `${what}: consistent`)
    t.same(await shape(live), await shape(buildIndex(m.snapshot(), DEFAULTS)), `${what}: the live index equals a fresh build`)
  }
  t.equal(who(live, 'alias5.example.org'), 't6', 'the moved domain routes to its new tenant')
  t.equal(primaryHostOf(live, live.bySlug.get('t7') as Route), null, 'the old tenant of a moved primary has none while it routes elsewhere')
  t.equal(who(live, 't10.apps.example'), 't10', 'the reused slug')
  t.equal(live.bySlug.get('t10')?.id, 22)
  t.equal(live.bySlug.get('t11')?.holdMs, 5_000)
  const gone = applyDelta(live, { ...m.delta(['nobody'], []), domains: [{ hostname: 'x.example', slug: 'nobody' }] }, DEFAULTS)
  t.notOk(gone.consistent, 'a domain of a tenant the index does not know: not consistent')
})

t.test('generations: unchanged tenants keep theirs, across deltas and full loads', async (t) => {
  const m = new Model()
  m.put(row(1, 'a'))
  m.put(row(2, 'b'))
  const first = buildIndex(m.snapshot(), DEFAULTS)
  const a = first.bySlug.get('a') as Route
  const b = first.bySlug.get('b') as Route
  m.domains.set('extra.example', 1)
  applyDelta(first, m.delta([], [1], ['extra.example']), DEFAULTS)
  t.equal(first.bySlug.get('a'), a, 'a tenant touched only through its domains keeps its route object')
  m.put({ ...(m.tenants.get(2) as TenantRow), epoch: 2 })
  applyDelta(first, m.delta(['b'], [2]), DEFAULTS)
  t.not(first.bySlug.get('b')?.generation, b.generation, 'a changed tenant gets a new generation')
  const b2 = first.bySlug.get('b') as Route
  const second = buildIndex(m.snapshot(), DEFAULTS, first)
  t.equal(second.bySlug.get('a')?.generation, a.generation, 'a full load keeps the generation of an unchanged tenant')
  t.equal(second.bySlug.get('b')?.generation, b2.generation)
  t.not(buildIndex(m.snapshot(), DEFAULTS).bySlug.get('a')?.generation, a.generation, 'without the previous index: new generations')
})

t.test('hash collisions: every key on the same hash, and a tiny table', async (t) => {
  const arena = new StringArena(16)
  const keys = Array.from({ length: 300 }, (_, i) => `k${i}.example`)
  let refs = new Int32Array(keys.length)
  keys.forEach((k, i) => { refs[i] = arena.add(k) })
  // Sized so that no rebuild runs: a rebuild rehashes with the real hash, which 42 is not.
  const same = new KeyTable(keys.length)
  for (let i = 0; i < keys.length; i++) same.insert(arena, refs, i, 42)
  t.equal(same.size, 300)
  t.ok(keys.every((k, i) => same.find(arena, refs, k, 42) === i), 'all found on one probe chain')
  for (let i = 0; i < keys.length; i += 2) t.equal(same.remove(arena, refs, keys[i] as string, 42), i)
  t.ok(keys.every((k, i) => same.find(arena, refs, k, 42) === (i % 2 === 0 ? -1 : i)), 'past deleted slots')
  for (let i = 0; i < keys.length; i += 2) same.insert(arena, refs, i, 42)
  t.ok(keys.every((k, i) => same.find(arena, refs, k, 42) === i), 'deleted slots reused')
  t.equal(same.find(arena, refs, 'absent', 42), -1)
  // Real hashes through a table that grows from 16 slots.
  const grown = new KeyTable(0)
  refs = new Int32Array(5000)
  const many = Array.from({ length: 5000 }, (_, i) => `h${i * 7919}.example.net`)
  many.forEach((k, i) => { refs[i] = arena.add(k); grown.insert(arena, refs, i, hashString(k)) })
  t.ok(many.every((k, i) => grown.find(arena, refs, k, hashString(k)) === i), 'all found after growth')
  t.same([...grown.rows()].sort((x, y) => x - y), many.map((_, i) => i))
})

t.test('growth from a tiny index by deltas, then an arena rebuild after heavy churn', async (t) => {
  const m = new Model()
  m.put(row(1, 'seed'))
  const live = buildIndex(m.snapshot(), DEFAULTS)
  const before = live.bySlug.get('seed') as Route
  for (let i = 2; i <= 3000; i++) {
    m.put(row(i, `grow-${i}`), `alias-${i}.example.org`)
    applyDelta(live, m.delta([`grow-${i}`], [i]), DEFAULTS)
  }
  t.same(await shape(live), await shape(buildIndex(m.snapshot(), DEFAULTS)), '3,000 tenants added one by one equal a fresh build')
  // Renames leave dead strings behind: enough of them rebuild the arena (over 1 MB dead, half of it).
  for (let round = 0; round < 12; round++) {
    for (let i = 2; i <= 3000; i++) {
      const r = m.tenants.get(i) as TenantRow
      const slug = `r${round}-${'x'.repeat(20)}-${i}`
      m.put({ ...r, slug, databaseName: `db_${round}_${i}_${'y'.repeat(20)}` })
      applyDelta(live, m.delta([r.slug, slug], [i]), DEFAULTS)
    }
  }
  t.same(await shape(live), await shape(buildIndex(m.snapshot(), DEFAULTS)), 'after 36,000 renames the live index equals a fresh build')
  t.equal(before.slug, 'seed', 'a route made before the rebuild still reads its strings')
  t.equal(who(live, 'alias-2999.example.org'), 'r11-xxxxxxxxxxxxxxxxxxxx-2999')
})

t.test('strings that are not short ASCII round-trip', async (t) => {
  const long = `${'l'.repeat(300)}.example`
  const arena = new StringArena(16)
  for (const s of ['', 'plain', 'büro.example', '例え.テスト', long, '\u007f']) t.equal(decodeRef(arena, arena.add(s)), s, JSON.stringify(s.slice(0, 20)))
  const m = new Model()
  m.put(row(1, 'odd', { primaryHost: long, databaseName: 'datenbank_ü' }), 'xn--bro-hoa.example')
  const index = buildIndex(m.snapshot(), DEFAULTS)
  t.equal(who(index, long), 'odd')
  t.equal(index.byHost.get(long)?.dbName, 'datenbank_ü')
  t.equal(primaryHostOf(index, index.bySlug.get('odd') as Route), long)
})
