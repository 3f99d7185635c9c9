/**
 * `registry adopt`: a Rails app's own tenants table (the shape of the usual hand-written
 * registry: domain, database_name, active, settings) turned into registry tenants. This module is
 * the pure part: source rows → tenants to write, and every row that cannot be taken with why.
 *
 * Hosts are read the way such an app looked them up: it stripped a leading `www.` from the request
 * host before its `find_by(domain:)`, so `www.shop.example` and `shop.example` were one tenant. The
 * registry stores the bare domain; the proxy's routing.wwwFallback (on by default) routes the www.
 * form to it, or --www-aliases registers `www.<domain>` explicitly. A stored domain that starts with
 * `www.` was never found by that lookup (the lookup had already stripped it), so it is taken as its
 * bare form, with a note; if the bare form is another row's domain, that row wins. The app's regular
 * expression (`/^www./`, dot unescaped) also stripped `wwwX` for any character X; that slip is not
 * reproduced: only `www.` is a www form here.
 *
 * Slugs come from --slug-column, or else from the bare domain: lower-case, every character that
 * is not a letter or digit becomes '-', runs of '-' collapse (`shop.example.com` → `shop-example-com`);
 * a slug over 63 characters keeps 54 and adds '-' and 8 hex digits of the domain's SHA-256. Two
 * rows that derive the same slug are both refused (naming each other): choosing one would depend
 * on row order and change between runs.
 */
import { createHash } from 'node:crypto'
import { canonicalHost } from '../routing/host.js'
import { checkDatabaseName, checkSlug, type TenantState } from './names.js'

/** One row of the source table, as read (values untyped). */
export interface SourceRow {
  /** How the row is named in reports: its id column's value, or its position. */
  readonly key: string
  readonly domain: unknown
  readonly database: unknown
  /** undefined when there is no active column (every row active). */
  readonly active?: unknown
  /** undefined when there is no settings column. */
  readonly settings?: unknown
  /** undefined without --slug-column. */
  readonly slug?: unknown
}

/** A tenant to write. */
export interface AdoptCandidate {
  readonly key: string
  readonly slug: string
  /** Primary first. */
  readonly domains: readonly string[]
  readonly databaseName: string
  readonly state: TenantState
  readonly settings: Record<string, unknown>
}

/** A row that is not taken, and why. */
export interface AdoptRefusal { readonly key: string, readonly domain: string | null, readonly reason: string }

/** A row that is taken with a change worth telling. */
export interface AdoptNote { readonly key: string, readonly domain: string, readonly note: string }

/** Options of the mapping. */
export interface AdoptOptions {
  readonly inactiveState: TenantState
  readonly wwwAliases: boolean
}

/** Maps the source rows; every row ends up in exactly one of candidates and refused. */
export function mapSourceRows (rows: readonly SourceRow[], opts: AdoptOptions): { candidates: AdoptCandidate[], refused: AdoptRefusal[], notes: AdoptNote[] } {
  const refused: AdoptRefusal[] = []
  const notes: AdoptNote[] = []
  interface Mapped { key: string, stored: string, domain: string, wasWww: boolean, slug: string, database: string, state: TenantState, settings: Record<string, unknown> }
  const mapped: Mapped[] = []
  for (const row of rows) {
    const stored = typeof row.domain === 'string' ? row.domain.trim() : null
    const refuse = (reason: string): void => { refused.push({ key: row.key, domain: stored, reason }) }
    if (stored === null || stored === '') { refuse('no domain'); continue }
    const canonical = canonicalHost(stored)
    if (!canonical.ok) { refuse(`domain ${JSON.stringify(stored)} is not a host name the proxy can route (${canonical.reason})`); continue }
    const wasWww = canonical.host.startsWith('www.') && canonical.host.length > 4
    const domain = wasWww ? canonical.host.slice(4) : canonical.host
    if (wasWww && !canonicalHost(domain).ok) { refuse(`domain ${JSON.stringify(stored)} without its www. is not a host name`); continue }
    if (typeof row.database !== 'string' || row.database === '') { refuse('no database name'); continue }
    try {
      checkDatabaseName(row.database)
    } catch (err) {
      refuse((err as Error).message.replace(/ \(TENANT_PROXY_ERR_[A-Z_]+\)$/, ''))
      continue
    }
    let slug: string
    if (row.slug !== undefined) {
      if (typeof row.slug !== 'string') { refuse('the slug column is empty'); continue }
      try {
        slug = checkSlug(row.slug)
      } catch (err) {
        refuse((err as Error).message.replace(/ \(TENANT_PROXY_ERR_[A-Z_]+\)$/, ''))
        continue
      }
    } else {
      slug = slugFromDomain(domain)
    }
    // Rails' boolean: true is active; false and NULL are not (`active?` is false for nil).
    const active = row.active === undefined || row.active === true || row.active === 't' || row.active === 'true' || row.active === 1
    let settings: Record<string, unknown> = {}
    if (row.settings !== undefined && row.settings !== null) {
      let value: unknown = row.settings
      if (typeof value === 'string') {
        try {
          value = JSON.parse(value) as unknown
        } catch {
          refuse('settings is not JSON')
          continue
        }
      }
      if (value === null) value = {}
      if (typeof value !== 'object' || Array.isArray(value)) { refuse('settings is not a JSON object'); continue }
      settings = value as Record<string, unknown>
    }
    mapped.push({ key: row.key, stored, domain, wasWww, slug, database: row.database, state: active ? 'active' : opts.inactiveState, settings })
  }

  // Conflicts within the source. A bare row beats a www. row for the same domain (the app found
  // the bare one); otherwise every row of a conflict is refused, naming the others.
  const take = new Set(mapped)
  const group = (keyOf: (m: Mapped) => string): Map<string, Mapped[]> => {
    const groups = new Map<string, Mapped[]>()
    for (const m of take) {
      const k = keyOf(m)
      groups.set(k, [...groups.get(k) ?? [], m])
    }
    return groups
  }
  const drop = (m: Mapped, reason: string): void => {
    if (!take.delete(m)) return
    refused.push({ key: m.key, domain: m.stored, reason })
  }
  for (const [domain, ms] of group((m) => m.domain)) {
    if (ms.length < 2) continue
    const bare = ms.filter((m) => !m.wasWww)
    if (bare.length === 1 && bare[0] !== undefined) {
      const winner = bare[0]
      for (const m of ms) if (m !== winner) drop(m, `the app looked ${m.stored} up as ${domain}, which is row ${winner.key}: this row was never reached`)
    } else {
      for (const m of ms) drop(m, `domain ${domain} is also the domain of row(s) ${ms.filter((o) => o !== m).map((o) => o.key).join(', ')}`)
    }
  }
  for (const [slug, ms] of group((m) => m.slug)) {
    if (ms.length < 2) continue
    for (const m of ms) drop(m, `slug ${slug} is also derived for row(s) ${ms.filter((o) => o !== m).map((o) => `${o.key} (${o.domain})`).join(', ')}; give slugs with --slug-column`)
  }
  for (const [database, ms] of group((m) => m.database)) {
    if (ms.length < 2) continue
    for (const m of ms) drop(m, `database ${database} is also the database of row(s) ${ms.filter((o) => o !== m).map((o) => o.key).join(', ')}`)
  }
  const candidates: AdoptCandidate[] = []
  for (const m of mapped) {
    if (!take.has(m)) continue
    if (m.wasWww) notes.push({ key: m.key, domain: m.stored, note: `stored as ${m.stored}, which the app never matched (it looked hosts up without www.); registered as ${m.domain}` })
    const www = `www.${m.domain}`
    const domains = opts.wwwAliases && canonicalHost(www).ok ? [m.domain, www] : [m.domain]
    candidates.push({ key: m.key, slug: m.slug, domains, databaseName: m.database, state: m.state, settings: m.settings })
  }
  return { candidates, refused, notes }
}

/** The slug derived from a (canonical, bare) domain; see the module comment. */
export function slugFromDomain (domain: string): string {
  const slug = domain.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')
  if (slug.length <= 63) return slug === '' ? `t-${hash8(domain)}` : slug
  return `${slug.slice(0, 54).replace(/-+$/, '')}-${hash8(domain)}`
}

function hash8 (text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 8)
}
