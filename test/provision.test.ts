/**
 * `tenants create` and `tenants drop` (issue 13, item 2) against the real PostgreSQL, with real
 * CLI processes and psql/pg_dump: all or nothing, with a failure injected for real at each step
 * (a schema file that breaks half-way, a registration refused because another writer took the
 * domain while the schema loaded, a server that refuses connections, SIGINT mid-load), each
 * followed by a look at pg_database and the registry: no database, no row.
 */
import { spawn } from 'node:child_process'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { CLI, runCli } from './helpers/cli.js'
import { databaseNameForTest, freePort, testServerUrl } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry, type TestRegistry } from './helpers/proxy.js'
import { restoreDump } from '../src/servers/pg-tools.js'
import { startTcpRelay } from './helpers/tcp-relay.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const run = promisify(execFile)

interface Setup { registry: TestRegistry, env: Record<string, string>, admin: pg.Client, dir: string }

/** A migrated registry with server `main` (the test PostgreSQL, admin URL in ADMIN_URL), a temp dir. */
async function setup (t: Test): Promise<Setup> {
  const registry = await testRegistry(t)
  const adminUrl = await testServerUrl()
  const env = { REGISTRY_DATABASE_URL: registry.url, ADMIN_URL: adminUrl }
  const u = new URL(adminUrl)
  const r = await runCli(['servers', 'add', 'main', '--host', u.hostname, '--port', u.port === '' ? '5432' : u.port, '--admin-url-env', 'ADMIN_URL'], env)
  if (r.code !== 0) throw new Error(r.stderr)
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  t.teardown(async () => await admin.end())
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-provision-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return { registry, env, admin, dir }
}

async function databaseExists (s: Setup, name: string): Promise<boolean> {
  return (await s.admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1
}

async function tenantRow (s: Setup, slug: string): Promise<Record<string, unknown> | undefined> {
  return (await s.registry.pool.query('SELECT slug, state, database_name FROM tenant_proxy.tenants WHERE slug = $1', [slug])).rows[0] as Record<string, unknown> | undefined
}

async function urlOf (database: string): Promise<string> {
  const u = new URL(await testServerUrl())
  u.pathname = `/${database}`
  return u.toString()
}

async function tablesOf (s: Setup, database: string): Promise<Array<{ tablename: string, tableowner: string }>> {
  const c = new pg.Client({ connectionString: await urlOf(database) })
  await c.connect()
  try {
    return (await c.query<{ tablename: string, tableowner: string }>("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")).rows
  } finally {
    await c.end()
  }
}

const SCHEMA = `-- a structure.sql as pg_dump writes it, meta-commands included
\\restrict tpTestRestrictKey
SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
CREATE TABLE public.users (id bigint NOT NULL, email character varying NOT NULL);
CREATE TABLE public.schema_migrations (version character varying NOT NULL);
INSERT INTO "public"."schema_migrations" (version) VALUES ('20250101000000'), ('20250102000000');
\\unrestrict tpTestRestrictKey
`

t.test('tenants create: database on the server, structure.sql loaded as the owner, tenant registered', async (t) => {
  const s = await setup(t)
  const db = await databaseNameForTest(t, 'tp_lc')
  const role = `tp_lc_owner_${process.pid}`
  await s.admin.query(`CREATE ROLE ${role} NOLOGIN`)
  t.teardown(async () => {
    await s.admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
    await s.admin.query(`DROP ROLE IF EXISTS ${role}`)
  })
  const schema = path.join(s.dir, 'structure.sql')
  await writeFile(schema, SCHEMA)

  const dry = await runCli(['tenants', 'create', 'acme', '--domain', 'acme.example', '--server', 'main', '--database', db, '--schema-file', schema, '--owner', role, '--dry-run'], s.env)
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, 'dry run, nothing changed')
  t.notOk(await databaseExists(s, db), 'the dry run created nothing')
  t.equal(await tenantRow(s, 'acme'), undefined)

  const r = await runCli(['tenants', 'create', 'acme', '--domain', 'acme.example', '--domain', 'www.acme.example', '--server', 'main', '--database', db, '--schema-file', schema, '--owner', role, '--json'], s.env)
  t.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout) as Record<string, unknown>
  t.match(out, { slug: 'acme', database_name: db, database_server: 'main', state: 'active', provisioned: { owner: role, schema_file: schema } })
  t.match(r.stderr, /✓ create database .*\n.*✓ load .*\n.*✓ register tenant acme/s, 'each step shown as it completes')
  t.ok(await databaseExists(s, db))
  t.same(await tablesOf(s, db), [{ tablename: 'schema_migrations', tableowner: role }, { tablename: 'users', tableowner: role }], 'the schema belongs to the owner role, not the admin')
  const owner = await s.admin.query<{ o: string }>('SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = $1', [db])
  t.equal(owner.rows[0]?.o, role)

  // An existing database is never taken over.
  const existing = await databaseNameForTest(t, 'tp_lc')
  await s.admin.query(`CREATE DATABASE ${existing}`)
  const again = await runCli(['tenants', 'create', 'acme2', '--domain', 'acme2.example', '--server', 'main', '--database', existing], s.env)
  t.equal(again.code, 1)
  t.match(again.stderr, `database ${existing} already exists on server main; tenants create only registers databases it creates`)
  t.match(again.stderr, 'TENANT_PROXY_ERR_DATABASE_EXISTS')
  t.equal(await tenantRow(s, 'acme2'), undefined)
  t.ok(await databaseExists(s, existing), 'and it is left alone')
  const taken = await runCli(['tenants', 'create', 'acme3', '--domain', 'acme3.example', '--server', 'main', '--database', db], s.env)
  const u = new URL(await testServerUrl())
  t.match(taken.stderr, `database ${db} on ${u.hostname}:${u.port === '' ? '5432' : u.port} is already used by tenant acme (TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN)`)
})

t.test('tenants create --template copies a template database', async (t) => {
  const s = await setup(t)
  const template = await databaseNameForTest(t, 'tp_lc')
  const db = await databaseNameForTest(t, 'tp_lc')
  await s.admin.query(`CREATE DATABASE ${template}`)
  const u = new URL(await testServerUrl())
  u.pathname = `/${template}`
  const c = new pg.Client({ connectionString: u.toString() })
  await c.connect()
  await c.query('CREATE TABLE accounts (id int)')
  await c.end()
  const r = await runCli(['tenants', 'create', 'tpl', '--domain', 'tpl.example', '--server', 'main', '--database', db, '--template', template], s.env)
  t.equal(r.code, 0, r.stderr)
  t.same((await tablesOf(s, db)).map((x) => x.tablename), ['accounts'])
})

t.test('tenants create is all or nothing: a failure at each step leaves no database and no row', async (t) => {
  const s = await setup(t)

  t.test('the schema file fails half-way', async (t) => {
    const db = await databaseNameForTest(t, 'tp_lc')
    const schema = path.join(s.dir, 'broken.sql')
    await writeFile(schema, 'CREATE TABLE a (id int);\nCREATE TABLE broken (;\nCREATE TABLE b (id int);\n')
    const r = await runCli(['tenants', 'create', 'broken', '--domain', 'broken.example', '--server', 'main', '--database', db, '--schema-file', schema], s.env)
    t.equal(r.code, 1)
    t.match(r.stderr, `tenant broken was not created: load ${schema} into ${db} failed: psql exited with 3`)
    t.match(r.stderr, 'syntax error')
    t.match(r.stderr, `Nothing was left behind: database ${db} was dropped again and no tenant was registered (TENANT_PROXY_ERR_PROVISION_FAILED)`)
    t.notOk(await databaseExists(s, db), 'no database')
    t.equal(await tenantRow(s, 'broken'), undefined, 'no registry row')
  })

  t.test('registration is refused: another writer takes the domain while the schema loads', async (t) => {
    const db = await databaseNameForTest(t, 'tp_lc')
    const schema = path.join(s.dir, 'race.sql')
    // The schema load itself registers a squatter on the domain (psql runs the CLI): the registry
    // refuses the new tenant only at its own registration, after the database exists.
    await writeFile(schema, `CREATE TABLE a (id int);\n\\! ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} tenants add squatter --domain victim.example --database squatter_db\nCREATE TABLE b (id int);\n`)
    const r = await runCli(['tenants', 'create', 'victim', '--domain', 'victim.example', '--server', 'main', '--database', db, '--schema-file', schema], s.env)
    t.equal(r.code, 1)
    t.match(r.stderr, /✓ load .*\n.*✗ register tenant victim/s, 'it failed at the registration')
    t.match(r.stderr, 'register tenant victim failed: domain victim.example already belongs to tenant squatter')
    t.match(r.stderr, 'Nothing was left behind')
    t.notOk(await databaseExists(s, db), 'the database created before the registration was dropped')
    t.equal(await tenantRow(s, 'victim'), undefined, 'no registry row')
    t.ok(await tenantRow(s, 'squatter'), 'the other writer\'s tenant stays')
  })

  t.test('a taken slug is found before anything is created', async (t) => {
    const db = await databaseNameForTest(t, 'tp_lc')
    const r = await runCli(['tenants', 'create', 'squatter', '--domain', 'fresh.example', '--server', 'main', '--database', db], s.env)
    t.equal(r.code, 1)
    t.match(r.stderr, 'tenant squatter already exists (TENANT_PROXY_ERR_TENANT_EXISTS)')
    t.notOk(await databaseExists(s, db))
  })

  t.test('the server refuses the connection', async (t) => {
    const db = await databaseNameForTest(t, 'tp_lc')
    const port = await freePort()
    t.equal((await runCli(['servers', 'add', 'down', '--host', '127.0.0.1', '--port', String(port), '--admin-url-env', 'DOWN_URL'], s.env)).code, 0)
    const r = await runCli(['tenants', 'create', 'down', '--domain', 'down.example', '--server', 'down', '--database', db], { ...s.env, DOWN_URL: `postgres://postgres:pw-in-url@127.0.0.1:${port}/postgres` })
    t.equal(r.code, 1)
    t.match(r.stderr, `database server down: connect ECONNREFUSED 127.0.0.1:${port} (TENANT_PROXY_ERR_SERVER_UNREACHABLE)`)
    t.notMatch(r.stderr, 'pw-in-url')
    t.equal(await tenantRow(s, 'down'), undefined)
    const missing = await runCli(['tenants', 'create', 'down', '--domain', 'down.example', '--server', 'down', '--database', db], s.env)
    t.match(missing.stderr, 'admin credentials of database server down: environment variable DOWN_URL is not set in this process (TENANT_PROXY_ERR_SERVER_CREDENTIALS)')
  })

  t.test('SIGINT while the schema loads', async (t) => {
    const db = await databaseNameForTest(t, 'tp_lc')
    const schema = path.join(s.dir, 'slow.sql')
    await writeFile(schema, 'CREATE TABLE a (id int);\nSELECT pg_sleep(60);\n')
    const child = spawn(process.execPath, [CLI, 'tenants', 'create', 'slow', '--domain', 'slow.example', '--server', 'main', '--database', db, '--schema-file', schema], { env: { PATH: process.env.PATH ?? '', ...s.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    // Interrupted once the schema is loading (the database exists and the table is in it).
    await until(async () => stderr.includes('→ load') || stderr.includes('… load') ? true : undefined, 'the load step to start', 20_000)
    await until(async () => await databaseExists(s, db) ? true : undefined, 'the database to exist')
    child.kill('SIGINT')
    t.equal(await exited, 1)
    t.match(stderr, `load ${schema} into ${db} (interrupted by SIGINT)`)
    t.match(stderr, 'Nothing was left behind')
    t.notOk(await databaseExists(s, db), 'no database')
    t.equal(await tenantRow(s, 'slow'), undefined, 'no registry row')
  })

  t.test('without a server and no default server', async (t) => {
    const r = await runCli(['tenants', 'create', 'nosrv', '--domain', 'nosrv.example'], s.env)
    t.equal(r.code, 2)
    t.match(r.stderr, 'tenants create needs a database server')
  })
})

t.test('tenants drop: refuses active tenants, dumps, drops the database, then the row', async (t) => {
  const s = await setup(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(s.registry.url, upstream.origin))
  const db = await databaseNameForTest(t, 'tp_lc')
  const schema = path.join(s.dir, 'structure.sql')
  await writeFile(schema, SCHEMA)
  let r = await runCli(['tenants', 'create', 'gone', '--domain', 'gone.example', '--server', 'main', '--database', db, '--schema-file', schema, '--wait'], s.env)
  t.equal(r.code, 0, r.stderr)
  const data = new pg.Client({ connectionString: await urlOf(db) })
  await data.connect()
  await data.query("INSERT INTO public.users VALUES (1, 'ada@example.com'), (2, 'grace@example.com')")
  await data.end()
  const status = async (): Promise<number> => { const res = await request(proxy.url, { headers: { host: 'gone.example' } }); await res.body.dump(); return res.statusCode }
  t.equal(await status(), 200)

  r = await runCli(['tenants', 'drop', 'gone'], s.env)
  t.equal(r.code, 2, 'no --yes')
  t.match(r.stderr, 'TENANT_PROXY_ERR_CLI_CONFIRM')
  r = await runCli(['tenants', 'drop', 'gone', '--yes'], s.env)
  t.equal(r.code, 1)
  t.match(r.stderr, 'tenant gone is active; take it out of service first (tenant-proxy tenants state gone maintenance --wait), or add --force')
  const dump = path.join(s.dir, 'gone.dump')
  r = await runCli(['tenants', 'drop', 'gone', '--force', '--dump-to', dump, '--dry-run', '--json'], s.env)
  t.equal(r.code, 0, r.stderr)
  t.match(JSON.parse(r.stdout), { dry_run: true, set_maintenance: true, database: { name: db, server: 'main', exists: true, action: 'drop' }, dump: { file: dump } })
  t.ok(await databaseExists(s, db), 'the dry run dropped nothing')
  t.match(await tenantRow(s, 'gone'), { state: 'active' })
  await t.rejects(stat(dump), 'and dumped nothing')

  // A dump that fails stops everything before the drop, and --force's maintenance is undone.
  r = await runCli(['tenants', 'drop', 'gone', '--yes', '--force', '--dump-to', dump], { ...s.env, TENANT_PROXY_TENANT_DATABASE_PG_DUMP: path.join(s.dir, 'no-such-pg_dump') })
  t.equal(r.code, 1)
  t.match(r.stderr, 'pg_dump not found')
  t.match(r.stderr, 'Nothing was dropped and the registry is as it was (TENANT_PROXY_ERR_DROP_FAILED)')
  t.ok(await databaseExists(s, db))
  t.match(await tenantRow(s, 'gone'), { state: 'active' }, 'the state is back to active')
  await t.rejects(stat(dump))

  r = await runCli(['tenants', 'drop', 'gone', '--yes', '--force', '--dump-to', dump, '--json'], s.env)
  t.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout) as { steps: Array<{ step: string }>, dump: { bytes: number } }
  t.same(out.steps.map((x) => x.step.split(' ').slice(0, 2).join(' ')), ['set tenant', 'wait for', 'dump ' + db, 'drop database', 'remove tenant'], 'maintenance and the proxies first, the row last')
  t.match(r.stderr, 'applied by the one proxy', 'the proxy confirmed the maintenance before the database went')
  t.notOk(await databaseExists(s, db), 'database dropped')
  t.equal(await tenantRow(s, 'gone'), undefined, 'row removed')
  t.equal(await status(), 404, 'the proxy no longer routes it')
  t.equal((await stat(dump)).mode & 0o777, 0o600, 'the dump is readable by its owner only')
  t.equal((await stat(dump)).size, out.dump.bytes)
  const listing = await run('pg_restore', ['--list', dump])
  t.match(listing.stdout, /TABLE public users/)
  // The dump restores (what a move between servers reuses): tables and rows.
  const copy = await databaseNameForTest(t, 'tp_lc')
  await s.admin.query(`CREATE DATABASE ${copy}`)
  await restoreDump({ command: 'pg_restore', url: await urlOf(copy), env: { PATH: process.env.PATH ?? '' } }, dump)
  const restored = new pg.Client({ connectionString: await urlOf(copy) })
  await restored.connect()
  t.same((await restored.query('SELECT email FROM public.users ORDER BY id')).rows, [{ email: 'ada@example.com' }, { email: 'grace@example.com' }], 'the dropped tenant\'s rows are in the dump')
  await restored.end()
  t.notOk((await readFile(dump)).includes(Buffer.from('PGPASSWORD')), 'sanity: nothing of the environment in the dump')
})

t.test('tenants drop --keep-database removes only the registry entry', async (t) => {
  const s = await setup(t)
  const db = await databaseNameForTest(t, 'tp_lc')
  t.equal((await runCli(['tenants', 'create', 'keep', '--domain', 'keep.example', '--server', 'main', '--database', db, '--state', 'suspended'], s.env)).code, 0)
  const r = await runCli(['tenants', 'drop', 'keep', '--yes', '--keep-database'], s.env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, `dropped tenant keep: database ${db} kept`)
  t.ok(await databaseExists(s, db), 'the database is still there')
  t.equal(await tenantRow(s, 'keep'), undefined)
})

t.test('tenants drop stops before the drop while a proxy has not applied the maintenance', async (t) => {
  const s = await setup(t)
  const db = await databaseNameForTest(t, 'tp_lc')
  t.equal((await runCli(['tenants', 'create', 'busy', '--domain', 'busy.example', '--server', 'main', '--database', db], s.env)).code, 0)
  // The proxy reaches the registry through a relay that is about to hold its traffic back.
  const target = new URL(s.registry.url)
  const relay = await startTcpRelay(t, { host: target.hostname, port: Number(target.port === '' ? 5432 : target.port) })
  const upstream = await startUpstream(t)
  await startTestProxy(t, testConfig(relay.url(s.registry.url), upstream.origin))
  await until(async () => (await s.registry.pool.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'tenant-proxy feed v=%'")).rowCount === 1 ? true : undefined, 'the proxy to report its version')
  relay.delayMs = 3_000
  const r = await runCli(['tenants', 'drop', 'busy', '--yes', '--force', '--wait-timeout', '0.5'], s.env)
  t.equal(r.code, 1, r.stderr)
  t.match(r.stderr, /dropping tenant busy stopped at wait for every connected proxy to stop routing it: the change is committed \(registry version \d+\), but after 0\.5 s 1 of 1 connected proxies had not applied it/)
  t.match(r.stderr, 'Nothing was dropped and the registry is as it was (TENANT_PROXY_ERR_DROP_FAILED)')
  t.ok(await databaseExists(s, db), 'the database is still there')
  t.match(await tenantRow(s, 'busy'), { state: 'active' }, 'and the tenant active again')
  relay.delayMs = 0
})
