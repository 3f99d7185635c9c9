/**
 * `registry adopt` (issue 13, item 6): the Rails app's own tenants table, created in a throwaway
 * database in the seed's exact shape (domain, database_name, company_name, active, settings and
 * timestamps, unique domain and database_name), adopted into the registry in one transaction,
 * every row it could not take reported with why, a second run changing nothing, and the adopted
 * hosts routed by a real proxy the way the app routed them (www. included).
 */
import pg from 'pg'
import t from 'tap'
import { request } from 'undici'
import { decodeDescriptor } from '../src/descriptor/verify.js'
import { slugFromDomain } from '../src/registry/adopt.js'
import { runCli } from './helpers/cli.js'
import { throwawayDatabase } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

// The seed's registry migration (db/registry_migrate/20250107000001_create_tenants.rb) as SQL.
const SEED_TABLE = `
CREATE TABLE tenants (
  id bigserial PRIMARY KEY,
  domain character varying NOT NULL,
  database_name character varying NOT NULL,
  company_name character varying,
  active boolean DEFAULT true,
  settings json,
  created_at timestamp(6) without time zone NOT NULL DEFAULT now(),
  updated_at timestamp(6) without time zone NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX index_tenants_on_domain ON tenants (domain);
CREATE UNIQUE INDEX index_tenants_on_database_name ON tenants (database_name);
`

const ROWS: Array<[string, string, boolean | null, string | null]> = [
  ['helpfulhippie.com', 'polly_helpfulhippie_com_production', true, '{"theme":"green","plan":"pro"}'], // id 1
  ['polly.pollitify.com', 'polly_polly_pollitify_com_production', true, null], // 2
  ['soupforourfamilies.org', 'polly_soupforourfamilies_org_production', false, '{}'], // 3
  ['www.soupforourfamilies.org', 'polly_www_soupforourfamilies_org_production', true, null], // 4: the app never reached it
  ['www.onlywww.com', 'polly_onlywww_com_production', null, null], // 5: taken as onlywww.com; NULL active
  ['not a host', 'polly_not_a_host', true, null], // 6
  ['mixed.example', 'Polly-Mixed', true, null], // 7: not a usable database name
  ['list.example', 'polly_list_example', true, '[1,2]'], // 8: settings not an object
  ['a-b.example', 'polly_a_b_example', true, null], // 9 and 10 derive one slug
  ['a.b.example', 'polly_a_b_example_2', true, null], // 10
  ['taken.example', 'polly_taken_example', true, null] // 11: the registry has it already
]

t.test('registry adopt: the seed\'s tenants table into the registry, rows not taken reported, re-run idempotent, hosts routed', async (t) => {
  const source = await throwawayDatabase(t)
  const src = new pg.Client({ connectionString: source })
  await src.connect()
  t.teardown(async () => await src.end())
  await src.query(SEED_TABLE)
  for (const [domain, db, active, settings] of ROWS) {
    await src.query('INSERT INTO tenants (domain, database_name, company_name, active, settings) VALUES ($1, $2, $3, $4, $5::json)', [domain, db, domain.toUpperCase(), active, settings])
  }
  const registry = await testRegistry(t, [{ slug: 'prior', domains: ['taken.example'], databaseName: 'prior_db' }])
  const env = { REGISTRY_DATABASE_URL: registry.url, RAILS_REGISTRY_URL: source }
  const args = ['registry', 'adopt', '--from', 'env:RAILS_REGISTRY_URL', '--table', 'tenants', '--domain-column', 'domain', '--database-column', 'database_name', '--active-column', 'active', '--settings-column', 'settings']
  const version = async (): Promise<number> => (await registry.store.status()).version

  const v0 = await version()
  const dry = await runCli([...args, '--dry-run'], env)
  t.equal(dry.code, 1, 'rows not taken: exit 1, even for a dry run')
  t.match(dry.stdout, 'dry run, nothing written: would have adopted 11 row(s) of tenants: 4 created')
  t.equal(await version(), v0, 'the dry run wrote nothing')
  t.equal((await registry.store.listTenants()).length, 1)

  const r = await runCli([...args, '--json'], env)
  t.equal(r.code, 1)
  t.match(r.stderr, '7 of 11 row(s) not taken (listed above); the others were adopted (TENANT_PROXY_ERR_ADOPT_INCOMPLETE)')
  const out = JSON.parse(r.stdout) as { created: number, unchanged: number, not_taken: Array<{ row: string, reason: string }>, notes: Array<{ row: string, note: string }> }
  t.equal(out.created, 4)
  const reason = (row: string): string => out.not_taken.find((n) => n.row === row)?.reason ?? '(taken)'
  t.match(reason('id=4'), 'the app looked www.soupforourfamilies.org up as soupforourfamilies.org, which is row id=3: this row was never reached')
  t.match(reason('id=6'), 'domain "not a host" is not a host name the proxy can route')
  t.match(reason('id=7'), 'invalid database name "Polly-Mixed"')
  t.match(reason('id=8'), 'settings is not a JSON object')
  t.match(reason('id=9'), 'slug a-b-example is also derived for row(s) id=10 (a.b.example); give slugs with --slug-column')
  t.match(reason('id=10'), 'slug a-b-example is also derived for row(s) id=9 (a-b.example)')
  t.match(reason('id=11'), 'domain taken.example already belongs to tenant prior')
  t.match(out.notes, [{ row: 'id=5', note: 'stored as www.onlywww.com, which the app never matched (it looked hosts up without www.); registered as onlywww.com' }])

  const tenants = await registry.store.listTenants()
  t.same(tenants.map((x) => x.slug), ['helpfulhippie-com', 'onlywww-com', 'polly-pollitify-com', 'prior', 'soupforourfamilies-org'])
  t.match(tenants.find((x) => x.slug === 'helpfulhippie-com'), { state: 'active', database_name: 'polly_helpfulhippie_com_production', settings: { theme: 'green', plan: 'pro' }, domains: [{ hostname: 'helpfulhippie.com', kind: 'primary' }] })
  t.match(tenants.find((x) => x.slug === 'soupforourfamilies-org'), { state: 'suspended' }, 'active false → suspended')
  t.match(tenants.find((x) => x.slug === 'onlywww-com'), { state: 'suspended', domains: [{ hostname: 'onlywww.com' }] }, 'active NULL is not active (as Rails reads it)')
  t.same(tenants.find((x) => x.slug === 'polly-pollitify-com')?.settings, {}, 'NULL settings → {}')

  // Second run: nothing changes, not even the registry version.
  const v1 = await version()
  const again = await runCli(args, env)
  t.equal(again.code, 1)
  t.match(again.stdout, 'adopted 11 row(s) of tenants: 0 created, 0 updated, 4 unchanged, 7 not taken')
  t.equal(await version(), v1, 'the second run wrote nothing')

  // The app's table changes; adopt reports the difference and applies it with --update.
  await src.query("UPDATE tenants SET active = true WHERE domain = 'soupforourfamilies.org'")
  const differs = await runCli(args, env)
  t.match(differs.stdout, /id=3\s+soupforourfamilies-org\s+state suspended → active \(--update applies it\)/)
  t.equal(await version(), v1)
  const updated = await runCli([...args, '--update'], env)
  t.match(updated.stdout, '0 created, 1 updated, 3 unchanged, 7 not taken')

  // The adopted hosts route as the app routed them: www. too (routing.wwwFallback).
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const routed = async (host: string): Promise<string | number> => {
    const res = await request(proxy.url, { headers: { host } })
    if (res.statusCode !== 200) {
      await res.body.dump()
      return res.statusCode
    }
    const seen = await res.body.json() as { headers: Record<string, string> }
    return (decodeDescriptor(seen.headers['x-tenant-descriptor'] ?? '').claims as { db: { name: string } }).db.name
  }
  t.equal(await routed('helpfulhippie.com'), 'polly_helpfulhippie_com_production')
  t.equal(await routed('www.helpfulhippie.com'), 'polly_helpfulhippie_com_production', 'www. as the app did')
  t.equal(await routed('www.soupforourfamilies.org'), 'polly_soupforourfamilies_org_production', 'www. reaches the row the app reached')
  t.equal(await routed('polly.pollitify.com'), 'polly_polly_pollitify_com_production')
  t.equal(await routed('www.onlywww.com'), 403, 'suspended (its active was NULL)')
  t.equal(await routed('mixed.example'), 404, 'a row not taken is not routed')
})

t.test('registry adopt: --www-aliases, --slug-column, --server, and an unreadable source', async (t) => {
  const source = await throwawayDatabase(t)
  const src = new pg.Client({ connectionString: source })
  await src.connect()
  t.teardown(async () => await src.end())
  await src.query(SEED_TABLE)
  await src.query("INSERT INTO tenants (domain, database_name, company_name) VALUES ('shop.example', 'shop_db', 'shop1'), ('Shop.Example.', 'shop_db2', 'shop2'), ('x.example', 'x_db', 'xcorp')")
  const registry = await testRegistry(t)
  const env = { REGISTRY_DATABASE_URL: registry.url }
  t.equal((await runCli(['servers', 'add', 'legacy', '--host', 'legacy-db', '--port', '5432'], env)).code, 0)
  const r = await runCli(['registry', 'adopt', '--from', source, '--table', 'public.tenants', '--domain-column', 'domain', '--database-column', 'database_name', '--slug-column', 'company_name', '--server', 'legacy', '--www-aliases', '--json'], env)
  const out = JSON.parse(r.stdout) as { created: number, not_taken: Array<{ row: string, reason: string }> }
  t.equal(out.created, 1)
  t.match(out.not_taken, [{ row: 'id=1', reason: 'domain shop.example is also the domain of row(s) id=2' }, { row: 'id=2', reason: 'domain shop.example is also the domain of row(s) id=1' }], 'two spellings of one host: both refused')
  const x = await registry.store.findTenant('xcorp')
  t.match(x, { database_server: 'legacy', database_host: 'legacy-db', domains: [{ hostname: 'x.example', kind: 'primary' }, { hostname: 'www.x.example', kind: 'alias' }] })
  t.notMatch(r.stdout + r.stderr, source.replace(/^postgres:\/\//, ''), 'the source URL is not printed')

  const bad = await runCli(['registry', 'adopt', '--from', source, '--table', 'missing', '--domain-column', 'domain', '--database-column', 'database_name'], env)
  t.equal(bad.code, 1)
  t.match(bad.stderr, 'cannot read the tenants to adopt: missing: relation "missing" does not exist (42P01) (TENANT_PROXY_ERR_ADOPT_SOURCE)')
})

t.test('slugs derived from domains', async (t) => {
  t.equal(slugFromDomain('helpfulhippie.com'), 'helpfulhippie-com')
  t.equal(slugFromDomain('xn--bcher-kva.example'), 'xn-bcher-kva-example')
  const long = `${'a'.repeat(60)}.example.com`
  t.match(slugFromDomain(long), /^a{54}-[0-9a-f]{8}$/)
  t.not(slugFromDomain(long), slugFromDomain(`${'a'.repeat(61)}.example.com`), 'long domains keep distinct slugs')
})
