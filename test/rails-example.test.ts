/**
 * The Rails example (clients/ruby/examples/rails) as a Rails team would run it: a real Rails app
 * (Debian's Rails 6.1, puma and pg, the tenant_proxy gem from clients/ruby through Bundler) in
 * development mode with code reloading, behind a running tenant-proxy (dist/, `serve`) whose ops
 * descriptor API is on, with tenant databases on the test PostgreSQL:
 *
 * - the generator writes exactly the example's initializer and TenantRecord, and the app boots,
 *   precompiles assets, migrates its own database and opens a console without any setting;
 * - `rails tenant_proxy:migrate` migrates every tenant the proxy knows (fifty-three at the end);
 * - each host sees only its own rows, after a code reload too; its cache entries, its jobs, its
 *   Active Storage keys and its Action Cable streams are its own;
 * - requests straight to the app without or with a forged descriptor are refused, a suspended
 *   tenant gets the proxy's 403, a moved tenant's next request uses the new database and the old
 *   one can be dropped, and fifty tenants stay within the pool cap with evicted pools closed;
 * - the app's own tests sign descriptors with TenantProxy::TestHelpers and run without a proxy.
 *
 * Skipped, saying why, when Debian's ruby-rails, ruby-pg or puma is missing (.ci/run installs
 * them). Processes are stopped by PID; databases are dropped at teardown.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { createSign, generateKeyPairSync } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { request, type Dispatcher } from 'undici'
import WebSocket from 'ws'
import { runCli } from './helpers/cli.js'
import { freePort, testServerUrl, throwawayDatabase } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const GEM = path.join(ROOT, 'clients/ruby')
const EXAMPLE = path.join(GEM, 'examples/rails')
/** What `rails generate tenant_proxy:install` writes; the example holds the same files. */
const GENERATED = ['config/initializers/tenant_proxy.rb', 'app/models/tenant_record.rb', 'db/tenant_migrate/.keep']
const TOKEN = 'rails-example-ops-token-0123456789abcdef'
const ISSUER = 'rails-example'
const AUDIENCE = 'notes'
const MAX_POOLS = 10

interface Run { code: number, stdout: string, stderr: string }

/** What the example app and the proxy answer in JSON, endpoint by endpoint. */
interface AppJson {
  tenant?: string
  database?: string
  notes?: string[]
  model?: number
  value?: string | null
  key?: string
  open?: number
  removed?: number
  reason?: string
  error?: string | { code?: string }
}

/** Runs a program to completion, bounded by timeoutMs; never rejects. */
async function run (file: string, args: readonly string[], opts: { cwd?: string, env: Record<string, string>, timeoutMs?: number, input?: string }): Promise<Run> {
  return await new Promise((resolve) => {
    const child = execFile(file, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 8 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      resolve({ code, stdout, stderr })
    })
    child.stdin?.end(opts.input ?? '')
  })
}

/** Why the test cannot run here, or false. */
async function missingRails (): Promise<string | false> {
  const r = await run('ruby', ['-e', 'require "rails"; require "pg"; require "puma"; require "bundler"; require "jwt"; print Rails.version'], { env: { PATH: process.env.PATH ?? '' }, timeoutMs: 30_000 })
  if (r.code !== 0) return `Debian's Rails stack is not installed (apt-get install ruby-rails ruby-pg puma ruby-jwt): ${r.stderr.split('\n')[0] ?? ''}`
  // The ops descriptor API (issue 11) is what jobs, migrations and with_tenant use outside a request.
  if (!existsSync(path.join(ROOT, 'src/ops/descriptor-api.ts'))) return 'this build of the proxy has no ops descriptor API (src/ops/descriptor-api.ts)'
  return false
}

const skip = await missingRails()

t.test('the Rails example behind a running proxy', { skip }, async (t) => {
  const admin = await testServerUrl()
  const serverHost = new URL(admin).hostname
  const serverPort = new URL(admin).port === '' ? '5432' : new URL(admin).port
  const client = new pg.Client({ connectionString: admin })
  await client.connect()
  t.teardown(async () => await client.end())
  const sql = async (text: string): Promise<pg.QueryResult> => await client.query(text)
  const dbName = (url: string): string => decodeURIComponent(new URL(url).pathname.slice(1))

  /** A database (created through `on`, when given) that is dropped (FORCE) at teardown. */
  const extra: string[] = []
  const extraDatabase = async (name: string, on?: pg.Pool): Promise<string> => {
    extra.push(name)
    if (on !== undefined) await on.query(`CREATE DATABASE ${name}`)
    return name
  }
  t.teardown(async () => {
    // Eight at a time: one by one, fifty-odd drops take longer than the rest of the test.
    const dropper = new pg.Pool({ connectionString: admin, max: 8 })
    try {
      await Promise.all(extra.map(async (name) => await dropper.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)))
    } finally {
      await dropper.end()
    }
  })

  // The app's own database, three tenant databases, the registry.
  const primaryUrl = await throwawayDatabase(t, 'tp_rails_app')
  const tenants = ['acme', 'globex', 'initech']
  const tenantDb: Record<string, string> = {}
  for (const slug of tenants) tenantDb[slug] = dbName(await throwawayDatabase(t, `tp_rails_${slug}`))
  const registry = await testRegistry(t, tenants.map((slug) => ({
    slug, domains: [`${slug}.localhost`], databaseName: tenantDb[slug], databaseHost: serverHost, databasePort: Number(serverPort)
  })))
  const cli = async (...args: string[]): Promise<Run> => await runCli(args, { REGISTRY_DATABASE_URL: registry.url })

  // The app: the example's files, then the generator writes the rest, as the guide says.
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-rails-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const app = path.join(dir, 'notes')
  await cp(EXAMPLE, app, { recursive: true, filter: (src) => !GENERATED.includes(path.relative(EXAMPLE, src)) && !src.endsWith('Gemfile.lock') })
  const keyFile = path.join(dir, 'descriptor.pem')
  await writeFile(keyFile, es256Pem(), { mode: 0o600 })

  const baseEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: dir,
    LANG: 'C.UTF-8',
    BUNDLE_GEMFILE: path.join(app, 'Gemfile'),
    BUNDLE_SILENCE_ROOT_WARNING: '1',
    TENANT_PROXY_GEM_PATH: GEM,
    DATABASE_URL: primaryUrl,
    RAILS_ENV: 'development',
    NOTES_MAX_POOLS: String(MAX_POOLS)
  }
  const rails = async (args: string[], env: Record<string, string> = {}, input?: string): Promise<Run> =>
    await run(path.join(app, 'bin/rails'), args, { cwd: app, env: { ...baseEnv, ...env }, timeoutMs: 90_000, input })

  const bundled = await run('bundle', ['install', '--local', '--quiet'], { cwd: app, env: baseEnv })
  t.equal(bundled.code, 0, 'bundle install --local resolves the Gemfile with the installed gems')
  if (bundled.code !== 0) { t.comment(bundled.stdout + bundled.stderr); return }

  await t.test('rails generate tenant_proxy:install writes the example\'s files and a note', async (t) => {
    const g = await rails(['generate', 'tenant_proxy:install'])
    t.equal(g.code, 0, g.stderr)
    for (const file of GENERATED) {
      t.equal(await readFile(path.join(app, file), 'utf8'), await readFile(path.join(EXAMPLE, file), 'utf8'), `${file} as committed in the example`)
    }
    t.match(g.stdout, /TENANT_DESCRIPTOR_ISSUER/, 'the note names the settings')
    t.notMatch(g.stdout + await readFile(path.join(app, GENERATED[0] ?? ''), 'utf8'), /TENANT_PROXY_[A-Z]/, 'never a variable of the proxy\'s namespace')
  })

  // The proxy in front of the app's port, with the ops descriptor API on.
  const appPort = await freePort()
  const proxy = await spawnServe(t, {
    REGISTRY_DATABASE_URL: registry.url,
    TENANT_PROXY_UPSTREAM_URLS: `http://127.0.0.1:${appPort}`,
    TENANT_PROXY_DEPLOYMENT_ID: ISSUER,
    TENANT_PROXY_DESCRIPTOR_AUDIENCE: AUDIENCE,
    TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile,
    TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: TOKEN
  })
  const opsUrl = `http://127.0.0.1:${proxy.opsPort}`
  const settings: Record<string, string> = {
    TENANT_DESCRIPTOR_ISSUER: ISSUER,
    TENANT_DESCRIPTOR_AUDIENCE: AUDIENCE,
    TENANT_DESCRIPTOR_JWKS_URL: `${opsUrl}/.well-known/tenant-proxy/jwks.json`,
    TENANT_DESCRIPTOR_API_URL: opsUrl,
    TENANT_DESCRIPTOR_API_TOKEN: TOKEN
  }

  await t.test('with no setting the app boots, migrates, precompiles and opens a console; settings are read when used', async (t) => {
    const production = { RAILS_ENV: 'production', SECRET_KEY_BASE: 'x'.repeat(64) }
    // The console starts with no setting, then gets them, as a Kamal console would from its env.
    const script = [
      'def try; yield; rescue StandardError => e; puts "#{e.class}: #{e.message}"; end',
      'puts "tenant=#{TenantProxy.current_tenant.inspect}"',
      'try { Note.count }',
      'try { TenantProxy.with_tenant("acme") { 1 } }',
      ...Object.entries({ ...settings, TENANT_DESCRIPTOR_API_TOKEN: 'wrong-token-0123456789abcdef0123456789ab' }).map(([k, v]) => `ENV[${JSON.stringify(k)}] = ${JSON.stringify(v)}; nil`),
      'try { TenantProxy.with_tenant("acme") { 1 } }',
      `ENV["TENANT_DESCRIPTOR_API_TOKEN"] = ${JSON.stringify(TOKEN)}; nil`,
      'try { TenantProxy.with_tenant("acme") { puts "in acme: #{TenantProxy.current_descriptor.db.name}" } }',
      'try { TenantProxy.with_tenant("nobody") { 1 } }'
    ].join('\n') + '\n'
    const [tasks, console] = await Promise.all([
      rails(['db:migrate', 'assets:precompile'], production),
      rails(['console'], {}, script)
    ])
    t.equal(tasks.code, 0, `db:migrate assets:precompile ${tasks.stderr}`)
    t.equal(console.code, 0, `console ${console.stderr}`)
    const lines = console.stdout
    t.match(lines, /tenant=nil/)
    t.match(lines, /TenantProxy::NoTenant: tenant_proxy: Note was used with no tenant in effect/, 'a tenant model with no tenant fails closed')
    t.match(lines, /TenantProxy::ConfigurationError: tenant_proxy: api_url is not set: set config\.tenant_proxy\.api_url or the environment variable TENANT_DESCRIPTOR_API_URL/, 'a missing setting is named when first needed')
    const refused = lines.split('\n').find((l) => l.startsWith('TenantProxy::OpsApiRefused')) ?? ''
    t.match(refused, /refused the token .*TENANT_DESCRIPTOR_API_TOKEN/, 'a token the proxy refuses says so')
    t.notMatch(refused, /wrong-token/, 'without printing it')
    t.match(lines, new RegExp(`in acme: ${tenantDb.acme ?? ''}`), 'with the right token the console reaches acme\'s database')
    t.match(lines, /TenantProxy::UnknownTenant: tenant_proxy: the proxy's registry has no tenant "nobody"/)
  })

  // Puma, in development mode with code reloading, on the port the proxy forwards to; it boots
  // while the tenants are migrated.
  const pumaStarted = startPuma(t, app, appPort, { ...baseEnv, ...settings })

  await t.test('rails tenant_proxy:migrate migrates every tenant the proxy knows', async (t) => {
    const m = await rails(['tenant_proxy:migrate'], settings)
    t.equal(m.code, 0, m.stdout + m.stderr)
    for (const slug of tenants) t.match(m.stdout, new RegExp(`^ {2}${slug} +ok +0 -> 20240101000001`, 'm'), `${slug} got every migration`)
    t.match(m.stdout, /tenant_proxy:migrate: 3 tenants, 3 ok, 0 failed/)
  })

  const puma = await pumaStarted
  const proxyUrl = `http://127.0.0.1:${proxy.trafficPort}`
  const appUrl = `http://127.0.0.1:${appPort}`
  const http = async (method: Dispatcher.HttpMethod, host: string, pathname: string, headers: Record<string, string> = {}, base = proxyUrl): Promise<{ status: number, json: AppJson }> => {
    const res = await request(`${base}${pathname}`, { method, headers: { host, ...headers } })
    const text = await res.body.text()
    try {
      return { status: res.statusCode, json: JSON.parse(text) as AppJson }
    } catch {
      return { status: res.statusCode, json: { error: text.slice(0, 300) } }
    }
  }
  const notesOf = (r: { json: AppJson }): string[] => r.json.notes ?? []

  await t.test('each host sees only its own rows', async (t) => {
    for (const slug of tenants) t.equal((await http('POST', `${slug}.localhost`, `/notes?title=${slug}-note`)).status, 201)
    for (const slug of tenants) {
      const r = await http('GET', `${slug}.localhost`, '/notes')
      t.same([r.status, r.json.tenant, r.json.database, r.json.notes], [200, slug, tenantDb[slug], [`${slug}-note`]], `${slug} reads its own database`)
    }
  })

  await t.test('a request straight to the app without or with a forged descriptor is refused', async (t) => {
    const none = await http('GET', 'acme.localhost', '/notes', {}, appUrl)
    t.same([none.status, none.json.reason], [400, 'missing'])
    const forged = await http('GET', 'acme.localhost', '/notes', { 'x-tenant-descriptor': forgedDescriptor(tenantDb.acme ?? '') }, appUrl)
    t.same([forged.status, forged.json.reason], [401, 'unknown_kid'], 'signed by a key the proxy never published')
    // A genuine descriptor for acme (from the ops API) presented for globex's host.
    const issued = await request(`${opsUrl}/v1/tenants/acme/descriptor`, { headers: { authorization: `Bearer ${TOKEN}` } })
    const token = (await issued.body.json() as { descriptor: string }).descriptor
    const replayed = await http('GET', 'globex.localhost', '/notes', { 'x-tenant-descriptor': token }, appUrl)
    t.same([replayed.status, replayed.json.reason], [401, 'host_mismatch'], 'acme\'s descriptor is no use on globex\'s host')
    const spoofed = await http('GET', 'acme.localhost', '/notes', { 'x-tenant-descriptor': token, 'x-forwarded-host': 'globex.localhost', forwarded: 'host=acme.localhost' }, appUrl)
    t.same([spoofed.status, spoofed.json.reason], [401, 'host_mismatch'], 'the host compared is X-Forwarded-Host as the proxy sets it, never Host or Forwarded')
    t.equal((await http('GET', 'localhost', '/up', {}, appUrl)).status, 200, 'the health path needs no descriptor')
  })

  await t.test('a suspended tenant gets the proxy\'s 403', async (t) => {
    t.equal((await cli('tenants', 'state', 'initech', 'suspended', '--wait')).code, 0)
    const r = await http('GET', 'initech.localhost', '/notes')
    t.same([r.status, typeof r.json.error === 'object' ? r.json.error.code : r.json.error], [403, 'TENANT_PROXY_ERR_TENANT_SUSPENDED'])
    t.equal((await cli('tenants', 'state', 'initech', 'active', '--wait')).code, 0)
    t.equal((await http('GET', 'initech.localhost', '/notes')).status, 200)
  })

  await t.test('a value cached by one tenant is never read by another', async (t) => {
    t.equal((await http('PUT', 'acme.localhost', '/cache/plan?value=acme-secret')).status, 204)
    t.same((await http('GET', 'globex.localhost', '/cache/plan')).json, { value: null }, 'globex reads the same key: nothing')
    t.equal((await http('PUT', 'globex.localhost', '/cache/plan?value=globex-value')).status, 204)
    t.same((await http('GET', 'acme.localhost', '/cache/plan')).json, { value: 'acme-secret' })
    t.same((await http('GET', 'globex.localhost', '/cache/plan')).json, { value: 'globex-value' })
    const noTenant = await http('GET', 'acme.localhost', '/no-tenant')
    t.same([noTenant.status, noTenant.json.error], [500, 'TenantProxy::NoTenant'], 'tenant data with no tenant: an error, no database')
  })

  await t.test('a job enqueued for a tenant runs against that tenant', async (t) => {
    for (const slug of ['acme', 'globex']) t.equal((await http('POST', `${slug}.localhost`, '/notes/later?title=same-job')).status, 202)
    for (const slug of ['acme', 'globex']) {
      const notes = await waitFor(async () => {
        const r = await http('GET', `${slug}.localhost`, '/notes')
        return notesOf(r).some((n) => n.startsWith('same-job')) ? notesOf(r) : undefined
      }, `${slug}'s job`)
      t.same(notes.filter((n) => n.startsWith('same-job')), [`same-job (by job for ${slug})`], `performed once, against ${slug}`)
    }
  })

  await t.test('Active Storage keys carry the tenant', async (t) => {
    const a = await http('POST', 'acme.localhost', '/files?content=hello')
    const g = await http('POST', 'globex.localhost', '/files?content=hello')
    t.match(a.json.key, /^acme\/[a-z0-9]{28}$/)
    t.match(g.json.key, /^globex\/[a-z0-9]{28}$/)
  })

  await t.test('Action Cable connections are bound to their tenant, streams too', async (t) => {
    const acme = await cable(t, proxy.trafficPort, 'acme.localhost')
    const globex = await cable(t, proxy.trafficPort, 'globex.localhost')
    const first = await Promise.all([acme.next((m) => m.message?.tenant !== undefined), globex.next((m) => m.message?.tenant !== undefined)])
    t.same(first.map((m) => [m.message?.tenant, m.message?.database]), [['acme', tenantDb.acme], ['globex', tenantDb.globex]], 'subscribed in the upgrade request\'s tenant')
    await Promise.all([acme.next((m) => m.type === 'confirm_subscription'), globex.next((m) => m.type === 'confirm_subscription')])
    // Both stream "notes"; each tenant's broadcast reaches its own subscribers only.
    await http('POST', 'acme.localhost', '/notes?title=cable-acme')
    t.same((await acme.next((m) => m.message?.title !== undefined)).message, { title: 'cable-acme' })
    await http('POST', 'globex.localhost', '/notes?title=cable-globex')
    t.same((await globex.next((m) => m.message?.title !== undefined)).message, { title: 'cable-globex' }, 'globex gets its own broadcast, not acme\'s')
    acme.close()
    globex.close()
  })

  await t.test('a code reload keeps every tenant on its own database', async (t) => {
    const before = await http('GET', 'acme.localhost', '/notes')
    // Now, not later: Rails' file watcher ignores modification times in the future.
    const now = new Date()
    await utimes(path.join(app, 'app/models/note.rb'), now, now)
    for (const slug of tenants) {
      const r = await http('GET', `${slug}.localhost`, '/notes')
      t.equal(r.json.database, tenantDb[slug], `${slug} after the reload`)
      t.ok(notesOf(r).every((n) => n.includes(slug)), `${slug} reads only its rows: ${JSON.stringify(r.json.notes)}`)
      t.not(r.json.model, before.json.model, 'the model class was reloaded')
    }
  })

  await t.test('a moved tenant uses the new database at once, and the old one can be dropped', async (t) => {
    const old = tenantDb.acme ?? ''
    const moved = await extraDatabase(`${old}_moved`)
    t.equal((await http('GET', 'acme.localhost', '/notes')).json.database, old)
    // The copy: writes stopped, connections to the old database ended, then a template copy.
    t.equal((await cli('tenants', 'state', 'acme', 'maintenance', '--wait')).code, 0)
    await sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${old}'`)
    await sql(`CREATE DATABASE ${moved} TEMPLATE ${old}`)
    t.equal((await cli('tenants', 'state', 'acme', 'active', '--wait')).code, 0)
    t.equal((await http('GET', 'acme.localhost', '/notes')).json.database, old, 'the app connected to the old database again')
    t.ok(await connectionsTo(client, old) > 0, 'and holds a connection to it')

    const update = await cli('tenants', 'update', 'acme', '--database', moved, '--wait')
    t.equal(update.code, 0, update.stderr)
    const r = await http('GET', 'acme.localhost', '/notes')
    t.same([r.json.database, notesOf(r)[0]], [moved, 'acme-note'], 'the next request reads the new database, rows included')
    // The app closed its sockets during that request; PostgreSQL's backends end a moment later.
    t.ok(await waitFor(async () => await connectionsTo(client, old) === 0 ? true : undefined, 'the old database\'s connections to end'), 'the old pool is closed')
    await t.resolves(sql(`DROP DATABASE ${old}`), 'the old database drops without FORCE')
    tenantDb.acme = moved
  })

  await t.test('fifty more tenants: migrated by the task, and within the pool cap', async (t) => {
    const more = Array.from({ length: 50 }, (_, i) => `t${String(i).padStart(2, '0')}`)
    const names = more.map((slug) => `${dbName(primaryUrl)}_${slug}`)
    const creator = new pg.Pool({ connectionString: admin, max: 8 })
    try {
      await Promise.all(names.map(async (n) => await extraDatabase(n, creator)))
    } finally {
      await creator.end()
    }
    const lines = more.map((slug, i) => JSON.stringify({ slug, state: 'active', database_name: names[i], database_host: serverHost, database_port: Number(serverPort), settings: {}, domains: [{ hostname: `${slug}.localhost`, kind: 'primary' }] }))
    const file = path.join(dir, 'tenants.jsonl')
    await writeFile(file, lines.join('\n') + '\n')
    const imported = await cli('registry', 'import', file, '--wait')
    t.equal(imported.code, 0, imported.stderr)

    const m = await rails(['tenant_proxy:migrate', 'CONCURRENCY=4'], settings)
    t.equal(m.code, 0, m.stderr)
    t.match(m.stdout, /tenant_proxy:migrate: 53 tenants, 53 ok, 0 failed/)
    t.equal((m.stdout.match(/ ok +0 -> 20240101000001/g) ?? []).length, 50, 'the new tenants got the current schema; the others were up to date')

    // Five at a time (puma runs 4-8 threads): every host answers from its own database.
    const wrong: string[] = []
    for (let i = 0; i < more.length; i += 5) {
      await Promise.all(more.slice(i, i + 5).map(async (slug, j) => {
        const r = await http('GET', `${slug}.localhost`, '/notes')
        if (r.status !== 200 || r.json.tenant !== slug || r.json.database !== names[i + j]) wrong.push(`${slug}: ${r.status} ${JSON.stringify(r.json)}`)
      }))
    }
    t.same(wrong, [], 'each of the fifty reads its own database')
    const stats = (await http('GET', 't49.localhost', '/pools')).json
    t.ok((stats.open ?? Infinity) <= MAX_POOLS, `${String(stats.open)} pools open, cap ${MAX_POOLS}`)
    t.ok((stats.removed ?? 0) >= 50 - MAX_POOLS, `${String(stats.removed)} pools removed`)
    const withConnections = (await client.query<{ n: number }>('SELECT count(DISTINCT datname)::int AS n FROM pg_stat_activity WHERE datname = ANY($1)', [names])).rows[0]?.n ?? -1
    t.ok(withConnections <= MAX_POOLS, `connections to ${withConnections} tenant databases, at most ${MAX_POOLS}`)
    t.ok(await waitFor(async () => await connectionsTo(client, names[0] ?? '') === 0 ? true : undefined, 'the evicted pool\'s connections to end'), 'the first tenant\'s pool was evicted and its connections closed')
    await t.resolves(sql(`DROP DATABASE ${names[0] ?? ''}`), 'so its database drops without FORCE')
  })

  await t.test('the app\'s own tests sign descriptors with TenantProxy::TestHelpers, no proxy', async (t) => {
    for (const slug of ['acme', 'globex']) await extraDatabase(`${dbName(primaryUrl)}_${slug}`)
    const r = await rails(['test', 'test/integration/notes_test.rb'], { RAILS_ENV: 'test' })
    t.equal(r.code, 0, r.stdout + r.stderr)
    t.match(r.stdout, /4 runs, \d+ assertions, 0 failures, 0 errors/)
  })

  await t.test('every log line of a request carries the tenant and the proxy\'s request id', async (t) => {
    const res = await request(`${proxyUrl}/notes`, { headers: { host: 'globex.localhost' } })
    await res.body.text()
    const id = res.headers['x-request-id']
    const log = await readFile(path.join(app, 'log/development.log'), 'utf8')
    const lines = log.split('\n').filter((l) => l.includes(`[${String(id)}]`))
    t.ok(lines.length >= 3, 'the request logged several lines')
    t.ok(lines.every((l) => l.includes(`[${String(id)}] [tenant=globex]`)), 'each tagged with the request id and the tenant')
  })

  await puma.stop()
})

/** Starts puma on port and resolves once it listens; stopped by PID at teardown. */
async function startPuma (t: Test, app: string, port: number, env: Record<string, string>): Promise<{ child: ChildProcess, stop: () => Promise<void> }> {
  const child = spawn('puma', ['-b', `tcp://127.0.0.1:${port}`, '-t', '4:8', '-w', '0', 'config.ru'], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(timer)
  }
  t.teardown(stop)
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      if (output.includes(`Listening on http://127.0.0.1:${port}`)) resolve()
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    void exited.then(() => reject(new Error(`puma exited before listening: ${output}`)))
  })
  return { child, stop }
}

/** Polls fn (at most 15 s) until it returns a value. */
async function waitFor<T> (fn: () => Promise<T | undefined>, what: string): Promise<T> {
  const deadline = Date.now() + 15_000
  for (;;) {
    const value = await fn()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Connections from anyone to database name. */
async function connectionsTo (client: pg.Client, name: string): Promise<number> {
  return (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [name])).rows[0]?.n ?? -1
}

/** A well-formed descriptor for acme signed with a key nobody trusts. */
function forgedDescriptor (database: string): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const input = `${b64({ alg: 'ES256', kid: 'attacker', typ: 'tenant-db+jwt' })}.${b64({ v: 1, iss: ISSUER, aud: AUDIENCE, sub: 'acme', host: 'acme.localhost', db: { name: database, host: '127.0.0.1', port: 5432 }, epoch: 1, iat: now, nbf: now, exp: now + 60 })}`
  const signature = createSign('SHA256').update(input).sign({ key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')
  return `${input}.${signature}`
}

/** What NotesChannel transmits, and Action Cable's own messages. */
interface CableMessage { type?: string, message?: { tenant?: string, database?: string, notes?: string[], title?: string } }

/** An Action Cable client over the proxy, subscribed to NotesChannel. */
async function cable (t: Test, port: number, host: string): Promise<{ next: (match: (m: CableMessage) => boolean) => Promise<CableMessage>, close: () => void }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/cable`, { headers: { host, origin: `http://${host}` } })
  t.teardown(() => ws.terminate())
  const seen: CableMessage[] = []
  let waiters: Array<() => void> = []
  ws.on('message', (data: Buffer) => {
    const m = JSON.parse(data.toString()) as CableMessage
    if (m.type === 'ping') return
    seen.push(m)
    for (const w of waiters) w()
    waiters = []
  })
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject) })
  let read = 0
  const next = async (match: (m: CableMessage) => boolean): Promise<CableMessage> => {
    const deadline = Date.now() + 15_000
    for (;;) {
      while (read < seen.length) {
        const m = seen[read++] as CableMessage
        if (match(m)) return m
      }
      if (Date.now() > deadline) throw new Error(`${host}: no matching Action Cable message in ${JSON.stringify(seen)}`)
      await new Promise<void>((resolve) => { waiters.push(resolve); setTimeout(resolve, 500) })
    }
  }
  // Subscribe after the welcome, as Action Cable's own JavaScript client does (it sends its
  // subscriptions when `welcome` arrives, once the server's `connect` has run).
  await next((m) => m.type === 'welcome')
  ws.send(JSON.stringify({ command: 'subscribe', identifier: JSON.stringify({ channel: 'NotesChannel' }) }))
  return { next, close: () => ws.close() }
}

