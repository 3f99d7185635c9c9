import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { COMMANDS } from '../src/cli/run.js'
import { parseAnnouncement } from '../src/registry/announcement.js'
import { LATEST_VERSION, MIGRATIONS } from '../src/registry/migrations/index.js'
import { runCli } from './helpers/cli.js'
import { throwawayDatabase } from './helpers/postgres.js'
import { testRegistry } from './helpers/proxy.js'
import { until } from './helpers/wait.js'

/** Everything observable in the registry, to prove a failed command changed nothing. */
async function registryState (url: string): Promise<unknown> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    const tenants = await c.query('SELECT slug, database_name, database_host, database_port, state, upstream, epoch, settings, updated_at FROM tenant_proxy.tenants ORDER BY slug')
    const domains = await c.query('SELECT hostname, kind, tenant_id FROM tenant_proxy.domains ORDER BY hostname')
    const changes = await c.query('SELECT count(*)::int AS n FROM tenant_proxy.changes')
    const version = await c.query('SELECT version FROM tenant_proxy.registry_state')
    return { tenants: tenants.rows, domains: domains.rows, changes: changes.rows, version: version.rows }
  } finally {
    await c.end()
  }
}

t.test('migrate: two concurrent runs on a new database both succeed, once applied', async (t) => {
  const url = await throwawayDatabase(t)
  const env = { REGISTRY_DATABASE_URL: url }
  const [a, b] = await Promise.all([runCli(['migrate', '--json'], env), runCli(['migrate', '--json'], env)])
  t.equal(a.code, 0, a.stderr)
  t.equal(b.code, 0, b.stderr)
  const applied = [JSON.parse(a.stdout), JSON.parse(b.stdout)].map((r: { applied: unknown[] }) => r.applied.length).sort()
  t.same(applied, [0, MIGRATIONS.length], 'exactly one run applied the migrations')
  const again = await runCli(['migrate'], env)
  t.equal(again.code, 0)
  t.match(again.stdout, `up to date (version ${LATEST_VERSION})`)
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  const rows = await c.query('SELECT version FROM tenant_proxy.schema_migrations ORDER BY version')
  await c.end()
  t.same(rows.rows, MIGRATIONS.map((m) => ({ version: m.version })))
})

t.test('commands refuse an unmigrated registry', async (t) => {
  const url = await throwawayDatabase(t)
  const r = await runCli(['tenants', 'list'], { REGISTRY_DATABASE_URL: url })
  t.equal(r.code, 1)
  t.match(r.stderr, /not migrated; run `tenant-proxy migrate` \(TENANT_PROXY_ERR_REGISTRY_NOT_MIGRATED\)/)
})

t.test('tenant lifecycle: add with two domains, list, show, update, suspend, remove', async (t) => {
  const url = await throwawayDatabase(t)
  const env = { REGISTRY_DATABASE_URL: url }
  t.equal((await runCli(['migrate'], env)).code, 0)

  const added = await runCli(['tenants', 'add', 'acme', '--domain', 'ACME.example.com.', '--domain', 'acme.test:8080', '--database', 'acme_prod', '--settings', '{"plan":"pro"}', '--json'], env)
  t.equal(added.code, 0, added.stderr)
  const tenant = JSON.parse(added.stdout) as Record<string, unknown>
  t.match(tenant, {
    slug: 'acme', state: 'active', database_name: 'acme_prod', database_host: null, database_port: null, upstream: null, epoch: 1,
    settings: { plan: 'pro' },
    domains: [{ hostname: 'acme.example.com', kind: 'primary' }, { hostname: 'acme.test', kind: 'alias' }]
  })
  t.same(Object.keys(tenant), ['slug', 'state', 'database_name', 'database_host', 'database_port', 'database_server', 'upstream', 'epoch', 'paused_hold_ms', 'settings', 'domains', 'created_at', 'updated_at'], 'stable key order')

  t.equal((await runCli(['tenants', 'add', 'globex', '--domain', 'globex.example.com', '--database', 'globex'], env)).code, 0)
  const list = await runCli(['tenants', 'list', '--json'], env)
  t.same((JSON.parse(list.stdout) as Array<{ slug: string }>).map((x) => x.slug), ['acme', 'globex'])
  const table = await runCli(['tenants', 'list'], env)
  t.match(table.stdout, /SLUG\s+STATE\s+DATABASE\s+SERVER/)
  t.match(table.stdout, /acme\s+active\s+acme_prod\s+localhost:5432\s+1\s+acme.example.com,acme.test/)

  const byHost = await runCli(['tenants', 'show', 'ACME.TEST', '--json'], env)
  t.equal((JSON.parse(byHost.stdout) as { slug: string }).slug, 'acme', 'show finds a tenant by any of its domains')

  const moved = await runCli(['tenants', 'update', 'acme', '--db-host', 'db2.internal', '--db-port', '6432', '--json'], env)
  t.equal(moved.code, 0, moved.stderr)
  t.match(JSON.parse(moved.stdout), { database_host: 'db2.internal', database_port: 6432, epoch: 2 }, 'moving the database bumps the epoch')

  const suspended = await runCli(['tenants', 'state', 'acme', 'suspended'], env)
  t.equal(suspended.code, 0)
  t.match(suspended.stdout, /tenant acme is now suspended/)

  const alias = await runCli(['domains', 'add', 'acme', 'www.acme.example.com', '--json'], env)
  t.equal((JSON.parse(alias.stdout) as { domains: unknown[] }).domains.length, 3)
  const removedDomain = await runCli(['domains', 'remove', 'acme.example.com', '--json'], env)
  t.equal(removedDomain.code, 0, removedDomain.stderr)
  t.same((JSON.parse(removedDomain.stdout) as { domains: Array<{ kind: string }> }).domains.filter((d) => d.kind === 'primary').length, 1, 'an alias is promoted when the primary goes')

  const removed = await runCli(['tenants', 'remove', 'acme', '--yes'], env)
  t.equal(removed.code, 0)
  t.match(removed.stdout, /removed tenant acme and 2 domain\(s\); database acme_prod was not dropped/)
  const after = await runCli(['tenants', 'list', '--json'], env)
  t.same((JSON.parse(after.stdout) as Array<{ slug: string }>).map((x) => x.slug), ['globex'])
})

t.test('every write bumps the registry version once and notifies listeners', async (t) => {
  const url = await throwawayDatabase(t)
  const env = { REGISTRY_DATABASE_URL: url }
  t.equal((await runCli(['migrate'], env)).code, 0)
  const listener = new pg.Client({ connectionString: url })
  await listener.connect()
  t.teardown(async () => await listener.end())
  const got: string[] = []
  const notified = new Promise<void>((resolve) => listener.on('notification', (n) => { got.push(n.payload ?? ''); resolve() }))
  await listener.query('LISTEN tenant_proxy')
  t.equal((await runCli(['tenants', 'add', 'acme', '--domain', 'a.example', '--domain', 'b.example', '--database', 'acme'], env)).code, 0)
  await notified
  t.equal(got.length, 1, 'one notification')
  // The version with its change (migration 005): what a proxy at version 0 applies without a query.
  const announced = parseAnnouncement(got[0])
  t.equal(announced.version, 1, 'carrying the new version')
  t.match(announced.delta, { since: 0, version: 1, changes: 3, tenantSlugs: ['acme'], hostnames: ['a.example', 'b.example'] })
  t.same(announced.delta?.tenants.map((x) => [x.slug, x.databaseName, x.primaryHost]), [['acme', 'acme', 'a.example']])
  t.same(announced.delta?.domains.map((d) => [d.hostname, d.slug]).sort(), [['a.example', 'acme'], ['b.example', 'acme']])
  const changes = await listener.query('SELECT version::int, entity, op, key FROM tenant_proxy.changes ORDER BY id')
  t.same(changes.rows, [
    { version: 1, entity: 'tenant', op: 'insert', key: 'acme' },
    { version: 1, entity: 'domain', op: 'insert', key: 'a.example' },
    { version: 1, entity: 'domain', op: 'insert', key: 'b.example' }
  ], 'one version for the whole transaction')
})

t.test('mistakes print one clear line, exit non-zero and change nothing', async (t) => {
  const url = await throwawayDatabase(t)
  const env = { REGISTRY_DATABASE_URL: url }
  t.equal((await runCli(['migrate'], env)).code, 0)
  t.equal((await runCli(['tenants', 'add', 'acme', '--domain', 'acme.example.com', '--database', 'acme'], env)).code, 0)
  t.equal((await runCli(['tenants', 'add', 'globex', '--domain', 'globex.example.com', '--domain', 'g.example.com', '--database', 'globex'], env)).code, 0)
  // The same database name on another server is another database.
  t.equal((await runCli(['tenants', 'add', 'initech', '--domain', 'initech.example.com', '--database', 'globex', '--db-host', 'db2.internal', '--db-port', '6432'], env)).code, 0)
  const before = await registryState(url)

  const mistakes: Array<[string[], RegExp]> = [
    [['tenants', 'add', 'other', '--domain', 'new.example.com', '--domain', 'ACME.example.com', '--database', 'other'], /domain acme\.example\.com already belongs to tenant acme \(TENANT_PROXY_ERR_DOMAIN_TAKEN\)/],
    [['tenants', 'add', 'acme', '--domain', 'fresh.example.com', '--database', 'acme2'], /tenant acme already exists \(TENANT_PROXY_ERR_TENANT_EXISTS\)/],
    [['tenants', 'add', 'other', '--domain', 'fresh.example.com', '--database', 'acme'], /database acme is already used by tenant acme \(TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN\)/],
    [['tenants', 'update', 'globex', '--db-host', 'db2.internal', '--db-port', '6432'], /database globex on db2\.internal:6432 is already used by tenant initech \(TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN\)/],
    [['tenants', 'update', 'initech', '--default-db-server'], /database globex is already used by tenant globex \(TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN\)/],
    [['tenants', 'add', 'Bad_Slug', '--domain', 'fresh.example.com', '--database', 'x'], /invalid tenant slug "Bad_Slug"/],
    [['tenants', 'add', 'other', '--domain', 'a..b', '--database', 'x'], /invalid host "a\.\.b": empty label \(TENANT_PROXY_ERR_HOST_INVALID\)/],
    [['tenants', 'add', 'other', '--domain', '10.0.0.1', '--database', 'x'], /invalid host "10\.0\.0\.1": IP literal/],
    [['tenants', 'add', 'other', '--domain', 'x.example', '--database', 'Robert; DROP'], /invalid database name/],
    [['tenants', 'add', 'other', '--domain', 'x.example', '--domain', 'X.example.', '--database', 'x'], /domain x\.example is given twice/],
    [['tenants', 'add', 'other', '--database', 'x'], /at least one --domain is required/],
    [['tenants', 'add', 'other', '--domain', 'x.example', '--database', 'x', '--db-port', '99999'], /invalid database port "99999"/],
    [['tenants', 'add', 'other', '--domain', 'x.example', '--database', 'x', '--settings', '[1]'], /invalid settings: must be a JSON object/],
    [['tenants', 'add', 'other', '--domain', 'x.example', '--database', 'x', '--colour', 'red'], /Unknown option '--colour'/],
    [['tenants', 'state', 'acme', 'paused'], /invalid state "paused": use one of active, suspended, maintenance/],
    [['tenants', 'state', 'nobody', 'suspended'], /no tenant nobody \(TENANT_PROXY_ERR_TENANT_NOT_FOUND\)/],
    [['tenants', 'update', 'acme'], /nothing to update/],
    [['tenants', 'update', 'nobody', '--database', 'z'], /no tenant nobody/],
    [['tenants', 'remove', 'acme'], /refusing to remove tenant acme without --yes \(TENANT_PROXY_ERR_CLI_CONFIRM\)/],
    [['tenants', 'remove', 'nobody', '--yes'], /no tenant nobody/],
    [['tenants', 'show', 'nobody.example'], /no tenant "nobody\.example"/],
    [['domains', 'add', 'nobody', 'z.example'], /no tenant nobody/],
    [['domains', 'add', 'acme', 'g.example.com'], /domain g\.example\.com already belongs to tenant globex/],
    [['domains', 'remove', 'acme.example.com'], /last domain of tenant acme/],
    [['domains', 'remove', 'unknown.example'], /no domain unknown\.example \(TENANT_PROXY_ERR_DOMAIN_NOT_FOUND\)/],
    [['tenants', 'frobnicate'], /unknown tenants command "frobnicate"/],
    [['launch'], /unknown command "launch"/]
  ]
  for (const [args, expected] of mistakes) {
    const r = await runCli(args, env)
    t.not(r.code, 0, `${args.join(' ')} exits non-zero`)
    t.match(r.stderr, expected, args.join(' '))
    t.equal(r.stderr.trimEnd().split('\n').length, 1, `${args.join(' ')}: one line`)
    t.equal(r.stdout, '', `${args.join(' ')}: nothing on stdout`)
  }
  t.same(await registryState(url), before, 'the registry is unchanged')
})

t.test('the database refuses invalid rows from any writer (CHECK constraints)', async (t) => {
  const url = await throwawayDatabase(t)
  t.equal((await runCli(['migrate'], { REGISTRY_DATABASE_URL: url })).code, 0)
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  t.teardown(async () => await c.end())
  await t.rejects(c.query("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('-bad', 'x')"), /tenants_slug_format/)
  await t.rejects(c.query("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('ok', '1x')"), /tenants_database_name_format/)
  await t.rejects(c.query("INSERT INTO tenant_proxy.tenants (slug, database_name, state) VALUES ('ok', 'x', 'paused')"), /tenants_state_value/)
  const id = (await c.query<{ id: string }>("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('ok', 'x') RETURNING id")).rows[0]?.id
  await t.rejects(c.query('INSERT INTO tenant_proxy.domains (hostname, tenant_id) VALUES ($1, $2)', ['Upper.Example', id]), /domains_hostname_format/)
  await t.rejects(c.query('INSERT INTO tenant_proxy.domains (hostname, tenant_id) VALUES ($1, $2)', ['a..b', id]), /domains_hostname_format/)
})

t.test('--help works on every command without a registry or valid config', async (t) => {
  for (const entry of COMMANDS) {
    const command = await entry.load()
    t.equal(command.name, entry.name, 'the command table names each command as its module does')
    const r = await runCli([...command.name.split(' '), '--help'], { TENANT_PROXY_TRAFFIC_PORT: 'broken' })
    t.equal(r.code, 0, `${command.name} --help`)
    t.match(r.stdout, `Usage: ${command.usage.split(' [')[0] ?? ''}`)
  }
  const top = await runCli(['--help'])
  t.equal(top.code, 0)
  for (const command of COMMANDS) t.match(top.stdout, command.name)
})

/** Writes JSON lines to a file of a temporary directory removed at teardown. */
async function importFile (t: Test, lines: readonly string[]): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-import-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'tenants.jsonl')
  await writeFile(file, lines.join('\n') + '\n')
  return file
}

t.test('registry import: conflicts with the registry are listed with the format problems, by line, exit 2, nothing written', async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example'] },
    { slug: 'globex', domains: ['globex.example'], databaseHost: 'db2.internal', databasePort: 6432 }
  ])
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const before = await registryState(registry.url)
  const file = await importFile(t, [
    '{"slug":"one","database_name":"acme","domains":["one.example"]}',
    '{"slug":"two","state":"paused","database_name":"two","domains":["globex.example"]}',
    '{"slug":"acme","database_name":"acme_v2","domains":["acme.example"]}',
    '{"slug":"four","database_name":"globex","database_host":"db2.internal","database_port":6432,"domains":["four.example"]}',
    '{"slug":"five","database_name":"globex","domains":["five.example"]}',
    'not json',
    '{"slug":"seven","database_name":"seven","database_port":70000,"domains":["ACME.example."]}'
  ])
  const r = await runCli(['registry', 'import', file], env)
  t.equal(r.code, 2, 'a conflict is a validation error like any other')
  t.equal(r.stdout, '')
  t.equal(r.stderr, [
    'tenant-proxy: import refused, nothing changed:',
    'line 1: database acme is already used by tenant acme',
    'line 2: invalid state "paused": use one of active, suspended, maintenance',
    'line 2: domain globex.example already belongs to tenant globex',
    'line 3: tenant acme already exists (use --replace to update it)',
    'line 4: database globex on db2.internal:6432 is already used by tenant globex',
    'line 6: not JSON (Unexpected token \'o\', "not json" is not valid JSON)',
    'line 7: invalid database port 70000: use a number from 1 to 65535',
    'line 7: domain acme.example also on line 3',
    'line 7: domain acme.example already belongs to tenant acme (TENANT_PROXY_ERR_IMPORT_INVALID)',
    ''
  ].join('\n'), 'every problem named with its line (line 5 is globex\'s name on the default server: no conflict)')
  t.same(await registryState(registry.url), before, 'nothing written')

  // --replace: acme is updated (and gives its database up to line 1); another tenant's domain
  // or database is still a conflict.
  const replace = await runCli(['registry', 'import', file, '--replace', '--dry-run'], env)
  t.equal(replace.code, 2)
  t.notMatch(replace.stderr, /line [13]:/, 'with --replace, acme is updated in place and its old database is free for line 1')
  t.match(replace.stderr, /line 4: database globex on db2\.internal:6432 is already used by tenant globex\n/)
  t.same(await registryState(registry.url), before, 'nothing written')

  const handover = await runCli(['registry', 'import', await importFile(t, [
    '{"slug":"one","database_name":"acme","domains":["one.example"]}',
    '{"slug":"acme","database_name":"acme_v2","domains":["acme.example"]}'
  ]), '--replace'], env)
  t.equal(handover.code, 0, handover.stderr)
  t.match(handover.stdout, /created 1, updated 1 tenants/)
  t.match(await registry.store.findTenant('one'), { database_name: 'acme' }, 'the new tenant took the database the updated one gave up')
  t.match(await registry.store.findTenant('acme'), { database_name: 'acme_v2', epoch: 2 })

  // Two existing tenants swapping databases: the unique index refuses the first row written; the
  // answer still names the line, the database and its tenant.
  const state = await registryState(registry.url)
  const swap = await runCli(['registry', 'import', await importFile(t, [
    '{"slug":"one","database_name":"acme_v2","domains":["one.example"]}',
    '{"slug":"acme","database_name":"acme","domains":["acme.example"]}'
  ]), '--replace'], env)
  t.equal(swap.code, 2)
  t.match(swap.stderr, /^tenant-proxy: import refused, nothing changed:\nline (1: database acme_v2 was still used by tenant acme|2: database acme was still used by tenant one) when this line was written \(.*\) \(TENANT_PROXY_ERR_IMPORT_INVALID\)\n$/)
  t.same(await registryState(registry.url), state, 'nothing written')
})

t.test('registry import racing another writer: the conflict is named by line, exit 2, and the other tenant keeps its row', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const watcher = new pg.Client({ connectionString: registry.url })
  await watcher.connect()
  t.teardown(async () => await watcher.end())
  const rounds: Array<{ what: string, rival: { slug: string, database: string, domain: string }, line: object, expected: string }> = [
    { what: 'the same database', rival: { slug: 'rival-db', database: 'contested', domain: 'rival-db.example' }, line: { slug: 'newcomer', database_name: 'contested', domains: ['newcomer.example'] }, expected: 'line 1: database contested is already used by tenant rival-db' },
    { what: 'the same domain', rival: { slug: 'rival-host', database: 'rival_host', domain: 'wanted.example' }, line: { slug: 'newcomer', database_name: 'newcomer', domains: ['wanted.example'] }, expected: 'line 1: domain wanted.example already belongs to tenant rival-host' },
    { what: 'the same slug', rival: { slug: 'newcomer', database: 'rival_slug', domain: 'rival-slug.example' }, line: { slug: 'newcomer', database_name: 'newcomer', domains: ['newcomer.example'] }, expected: 'line 1: tenant newcomer already exists (use --replace to update it)' }
  ]
  for (const { what, rival, line, expected } of rounds) {
    // The rival writes in a transaction left open, so the import checks before it commits and
    // writes after: its insert waits on the rival's row (or the registry version lock), then fails.
    const other = new pg.Client({ connectionString: registry.url })
    await other.connect()
    const otherPid = (await other.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid
    await other.query('BEGIN')
    const id = (await other.query<{ id: string }>('INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ($1, $2) RETURNING id', [rival.slug, rival.database])).rows[0]?.id
    await other.query("INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) VALUES ($1, $2, 'primary')", [rival.domain, id])
    const importing = runCli(['registry', 'import', await importFile(t, [JSON.stringify(line)])], env)
    await until(async () => (await watcher.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1", [otherPid])).rowCount === 1 ? true : undefined, `the import to wait for the rival (${what})`, 30_000)
    await other.query('COMMIT')
    await other.end()
    const r = await importing
    t.equal(r.code, 2, `${what}: exit 2`)
    t.equal(r.stderr, `tenant-proxy: import refused, nothing changed:\n${expected} (TENANT_PROXY_ERR_IMPORT_INVALID)\n`, `${what}: named by line`)
    t.match(await registry.store.findTenant(rival.slug), { slug: rival.slug, database_name: rival.database, domains: [{ hostname: rival.domain }] }, `${what}: the rival's tenant is intact`)
    t.equal(await registry.store.findTenant('newcomer.example'), null, `${what}: nothing of the import was written`)
    await registry.store.removeTenant(rival.slug)
  }
})
