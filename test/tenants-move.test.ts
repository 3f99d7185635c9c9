/**
 * `tenants move` (issue 13, item 5) between two real PostgreSQL servers: the shared test server
 * and a private one this file starts (initdb, stopped by PID). A real proxy from dist/ routes to a
 * real app in this process that reads and writes the tenant's data on the database its
 * descriptor names (one connection pool per host, port, database and epoch, as apps do), while a
 * bounded loop of reads and writes runs against the tenant during the move: no request fails,
 * every write lands on the new server, the descriptor's epoch goes up by one, the source database
 * is dropped (or kept with --keep-source). Then the failure paths: a copy command that fails half
 * way, a copy that loses rows (verify), and CLI mistakes: each leaves the tenant on its server,
 * resumed, and nothing on the target.
 */
import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { CLI, runCli } from './helpers/cli.js'
import { until } from './helpers/wait.js'
import { startPgCluster } from './helpers/pg-cluster.js'
import { databaseNameForTest, databaseUrl, testServerUrl } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'

/** Bounds of each request loop: this many requests at most, for this long at most. */
const LOOP_MAX_REQUESTS = 4_000
const LOOP_MAX_MS = 90_000
const WORKERS = 4

interface Descriptor { db: { name: string, host: string, port: number }, epoch: number, sub: string }

function decodeDescriptor (header: string): Descriptor {
  const payload = header.split('.')[1] ?? ''
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Descriptor
}

/** The app: GET reads the item count, POST inserts a visit; both on the descriptor's database. */
async function startApp (t: Test): Promise<{ origin: string, epochs: Set<number> }> {
  const pools = new Map<string, pg.Pool>()
  const epochs = new Set<number>()
  const poolFor = (d: Descriptor): pg.Pool => {
    const key = `${d.db.host}:${d.db.port}/${d.db.name}#${d.epoch}`
    let pool = pools.get(key)
    if (pool === undefined) {
      pool = new pg.Pool({ host: d.db.host, port: d.db.port, database: d.db.name, user: 'postgres', max: 4 })
      // The source database is dropped WITH (FORCE) after the move, ending this pool's idle connections.
      pool.on('error', () => {})
      pools.set(key, pool)
    }
    return pool
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      try {
        const header = req.headers['x-tenant-descriptor']
        if (typeof header !== 'string') throw new Error('no descriptor')
        const d = decodeDescriptor(header)
        epochs.add(d.epoch)
        const pool = poolFor(d)
        for await (const chunk of req) void chunk
        if (req.method === 'POST') {
          const r = await pool.query<{ id: string }>('INSERT INTO visits (at) VALUES (now()) RETURNING id')
          res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ id: Number(r.rows[0]?.id), epoch: d.epoch }))
        } else {
          const r = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM items')
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ items: r.rows[0]?.n, epoch: d.epoch, db: d.db }))
        }
      } catch (err) {
        res.writeHead(500).end(String((err as Error).message))
      }
    })()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
    for (const pool of pools.values()) await pool.end().catch(() => undefined)
  })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, epochs }
}

/** Reads and writes against `host` until `done()` and then `after` more per worker, bounded. */
async function requestLoop (base: string, host: string, done: () => boolean, after = 10): Promise<{ ok: number, failed: Array<{ status: number, body: string }>, posts: number }> {
  const started = performance.now()
  let sent = 0
  let ok = 0
  let posts = 0
  const failed: Array<{ status: number, body: string }> = []
  const worker = async (w: number): Promise<void> => {
    let extra = 0
    for (let i = 0; ; i++) {
      if (done() && extra++ >= after) return
      if (sent >= LOOP_MAX_REQUESTS || performance.now() - started > LOOP_MAX_MS) return
      sent++
      const post = (i + w) % 2 === 0
      try {
        const r = await request(`${base}/items`, { method: post ? 'POST' : 'GET', headers: { host } })
        const body = await r.body.text()
        if (r.statusCode === (post ? 201 : 200)) {
          ok++
          if (post) posts++
        } else failed.push({ status: r.statusCode, body: body.slice(0, 300) })
      } catch (err) {
        failed.push({ status: 0, body: String(err) })
      }
    }
  }
  await Promise.all(Array.from({ length: WORKERS }, async (_, w) => { await worker(w) }))
  return { ok, failed, posts }
}

async function query<R extends pg.QueryResultRow> (url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: url })
  c.on('error', () => {})
  await c.connect()
  try {
    return (await c.query<R>(text, values)).rows
  } finally {
    await c.end()
  }
}

const SCHEMA = `CREATE TABLE public.items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.visits (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigint PRIMARY KEY, total numeric NOT NULL);
`

t.test('tenants move', async (t) => {
  const mainUrl = await testServerUrl()
  const second = await startPgCluster(t)
  const registry = await testRegistry(t)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-move-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const schema = path.join(dir, 'structure.sql')
  await writeFile(schema, SCHEMA)
  const env = { REGISTRY_DATABASE_URL: registry.url, MAIN_ADMIN_URL: mainUrl, SECOND_ADMIN_URL: second.url }
  const cli = async (args: string[]): Promise<string> => {
    const r = await runCli(args, env)
    if (r.code !== 0) throw new Error(`${args.join(' ')} exited ${r.code}: ${r.stderr}`)
    return r.stdout
  }
  const main = new URL(mainUrl)
  await cli(['servers', 'add', 'main', '--host', main.hostname, '--port', main.port === '' ? '5432' : main.port, '--admin-url-env', 'MAIN_ADMIN_URL'])
  await cli(['servers', 'add', 'second', '--host', '127.0.0.1', '--port', String(second.port), '--admin-url-env', 'SECOND_ADMIN_URL'])
  const app = await startApp(t)
  // Log level info: spawnServe learns the ports from the "listening" line.
  const proxy = await spawnServe(t, { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_UPSTREAM_URLS: app.origin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(), TENANT_PROXY_LOG_LEVEL: 'info' })
  const base = `http://127.0.0.1:${proxy.trafficPort}`

  /** A tenant with data on `main`: 1,000 items, 3 invoices in another schema. */
  const createTenant = async (slug: string): Promise<string> => {
    const db = await databaseNameForTest(t, 'tp_move')
    t.teardown(async () => await query(second.url, `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`))
    await cli(['tenants', 'create', slug, '--domain', `${slug}.example`, '--server', 'main', '--database', db, '--schema-file', schema])
    await query(databaseUrl(mainUrl, db), "INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 1000) g")
    await query(databaseUrl(mainUrl, db), 'INSERT INTO billing.invoices VALUES (1, 10.5), (2, 20), (3, 0)')
    return db
  }
  const exists = async (url: string, db: string): Promise<boolean> => (await query(url, 'SELECT 1 FROM pg_database WHERE datname = $1', [db])).length === 1
  const show = async (slug: string): Promise<{ database_server: string, database_host: string, database_port: number, epoch: number, paused_hold_ms: number | null }> =>
    JSON.parse(await cli(['tenants', 'show', slug, '--json'])) as { database_server: string, database_host: string, database_port: number, epoch: number, paused_hold_ms: number | null }
  const heldTotal = async (): Promise<number> => {
    const text = await (await request(`http://127.0.0.1:${proxy.opsPort}/metrics`)).body.text()
    return Number(text.split('\n').find((l) => l.startsWith('tenant_proxy_held_requests_total '))?.split(' ')[1] ?? NaN)
  }

  await t.test('under load: no failed request, every write on the new server, epoch + 1, source dropped', async (t) => {
    const db = await createTenant('acme')
    const before = await show('acme')
    const warm = await requestLoop(base, 'acme.example', () => true, 5)
    t.same(warm.failed, [], 'the tenant answers before the move')
    const heldBefore = await heldTotal()

    let finished = false
    const loop = requestLoop(base, 'acme.example', () => finished)
    const moved = await runCli(['tenants', 'move', 'acme', '--to', 'second', '--yes', '--settle', '200ms', '--json'], env)
    finished = true
    const load = await loop
    t.equal(moved.code, 0, moved.stderr)
    t.same(load.failed, [], `no failed request (${load.ok} answered during and after the move)`)
    t.ok(load.ok > 0)
    const held = await heldTotal() - heldBefore
    t.ok(held > 0, 'requests were held during the cut-over, not refused')
    t.comment(`during and after the move: ${load.ok} requests answered (${load.posts} writes), ${held} of them held during the cut-over, 0 failed`)

    const out = JSON.parse(moved.stdout) as { epoch: { from: number, to: number }, verified: { tables: number, rows: number }, tenant: { database_server: string }, steps: Array<{ step: string, ms: number }> }
    const from = out.steps.findIndex((x) => x.step.startsWith('pause tenant'))
    const to = out.steps.findIndex((x) => x.step.startsWith('switch tenant'))
    t.comment(`move: ${out.steps.reduce((n, x) => n + x.ms, 0)} ms in all, requests held for about ${out.steps.slice(from + 1, to + 1).reduce((n, x) => n + x.ms, 0)} ms (pause applied → switch committed)`)
    t.same(out.epoch, { from: before.epoch, to: before.epoch + 1 }, 'epoch bumped by one')
    t.equal(out.tenant.database_server, 'second')
    const after = await show('acme')
    t.match(after, { database_server: 'second', database_host: '127.0.0.1', database_port: second.port, epoch: before.epoch + 1, paused_hold_ms: null })
    t.match(moved.stderr, /✓ pause tenant acme.*✓ wait for every connected proxy to hold.*✓ copy.*✓ verify.*✓ switch tenant acme to second.*✓ drop the source database/s)

    const newUrl = databaseUrl(second.url, db)
    t.equal((await query<{ n: number }>(newUrl, 'SELECT count(*)::int AS n FROM items'))[0]?.n, 1000, 'the data is on the new server')
    t.equal((await query<{ n: number }>(newUrl, 'SELECT count(*)::int AS n FROM billing.invoices'))[0]?.n, 3, 'other schemas too')
    const visits = (await query<{ n: number }>(newUrl, 'SELECT count(*)::int AS n FROM visits'))[0]?.n
    t.equal(visits, warm.posts + load.posts, 'every write answered 201, before, during and after the move, is on the new server')
    t.notOk(await exists(mainUrl, db), 'the source database is dropped')
    t.ok(app.epochs.has(before.epoch + 1), 'the app saw the new epoch in the descriptor')
    const last = await request(`${base}/items`, { headers: { host: 'acme.example' } })
    t.match(await last.body.json(), { items: 1000, epoch: before.epoch + 1, db: { name: db, host: '127.0.0.1', port: second.port } }, 'requests now go to the new server')

    // And back, keeping the source: the copy on `second` stays, marked as moved.
    const back = await runCli(['tenants', 'move', 'acme', '--to', 'main', '--keep-source', '--settle', '100ms'], env)
    t.equal(back.code, 0, back.stderr)
    t.match(back.stdout, `moved tenant acme to main`)
    t.match(back.stdout, 'source database kept')
    t.match(await show('acme'), { database_server: 'main', epoch: before.epoch + 2 })
    t.ok(await exists(second.url, db), '--keep-source keeps the source database')
    const comment = await query<{ c: string }>(second.url, "SELECT shobj_description(oid, 'pg_database') AS c FROM pg_database WHERE datname = $1", [db])
    t.match(comment[0]?.c, 'former database of tenant acme, moved to main')
    t.equal((await query<{ n: number }>(databaseUrl(mainUrl, db), 'SELECT count(*)::int AS n FROM visits'))[0]?.n, visits)
  })

  await t.test('a failed copy: still on the old server, resumed, nothing left on the target', async (t) => {
    const db = await createTenant('beta')
    const before = await show('beta')
    // Half a copy: a table created on the target, then a failure.
    const failing = 'psql -X -q "$TARGET_DATABASE_URL" -c "CREATE TABLE half (id int)" && echo "copy broke for $TENANT_SLUG from $SOURCE_DATABASE_NAME" >&2 && exit 3'
    const r = await runCli(['tenants', 'move', 'beta', '--to', 'second', '--yes', '--copy-with', failing, '--settle', '100ms'], env)
    t.equal(r.code, 1)
    t.match(r.stderr, 'moving tenant beta stopped at copy')
    t.match(r.stderr, `the --copy-with command exited with 3: copy broke for beta from ${db}`)
    t.match(r.stderr, `Tenant beta runs on main as before; the half-made database ${db} on second was dropped`)
    t.match(r.stderr, 'TENANT_PROXY_ERR_MOVE_FAILED')
    t.notOk(await exists(second.url, db), 'nothing left on the target')
    t.ok(await exists(mainUrl, db))
    t.match(await show('beta'), { database_server: 'main', epoch: before.epoch, paused_hold_ms: null })
    const after = await request(`${base}/items`, { headers: { host: 'beta.example' } })
    t.equal(after.statusCode, 200, 'the tenant answers again')
    t.match(await after.body.json(), { items: 1000, epoch: before.epoch })

    // A copy that loses rows fails verification, with the same outcome.
    const lossy = 'pg_dump --schema-only "$SOURCE_DATABASE_URL" | psql -X -q -v ON_ERROR_STOP=1 "$TARGET_DATABASE_URL" >/dev/null'
    const v = await runCli(['tenants', 'move', 'beta', '--to', 'second', '--yes', '--copy-with', lossy, '--settle', '100ms'], env)
    t.equal(v.code, 1)
    t.match(v.stderr, 'stopped at verify')
    t.match(v.stderr, 'table public.items has 1000 row(s) in the source and 0 in the copy')
    t.notOk(await exists(second.url, db))
    t.match(await show('beta'), { database_server: 'main', epoch: before.epoch, paused_hold_ms: null })

    // A transaction left open on the source (a request still in flight) is waited for, bounded.
    const open = new pg.Client({ connectionString: databaseUrl(mainUrl, db) })
    await open.connect()
    t.teardown(async () => await open.end().catch(() => undefined))
    await open.query('BEGIN')
    await open.query('SELECT count(*) FROM items')
    const d = await runCli(['tenants', 'move', 'beta', '--to', 'second', '--yes', '--settle', '100ms', '--drain-timeout', '500ms'], env)
    t.equal(d.code, 1)
    t.match(d.stderr, 'stopped at wait for the requests in flight to finish')
    t.match(d.stderr, `database ${db} still had 1 session(s) running a statement or in a transaction after 500ms (--drain-timeout)`)
    t.notOk(await exists(second.url, db))
    t.match(await show('beta'), { database_server: 'main', epoch: before.epoch, paused_hold_ms: null })
    await open.query('ROLLBACK')
  })

  await t.test('SIGINT during the copy: the copy command stopped, resumed on the old server, nothing on the target', async (t) => {
    const db = await createTenant('delta')
    const before = await show('delta')
    const mark = path.join(dir, 'copy.pid')
    // The copy's own child (a background sleep): it must be stopped too, not only the shell.
    const slow = `sleep 60 & echo $! > ${mark}; wait`
    const child = spawn(process.execPath, [CLI, 'tenants', 'move', 'delta', '--to', 'second', '--yes', '--copy-with', slow, '--settle', '100ms'], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    const pid = await until(async () => Number((await readFile(mark, 'utf8').catch(() => '')).trim()) || undefined, 'the copy command to start', 20_000)
    const held = request(`${base}/items`, { headers: { host: 'delta.example' } })
    await until(async () => (await heldTotal()) > 0 ? true : undefined, 'a request held')
    child.kill('SIGINT')
    t.equal(await exited, 1)
    t.match(stderr, 'stopped at copy')
    t.match(stderr, 'interrupted by SIGINT')
    t.match(stderr, `Tenant delta runs on main as before; the half-made database ${db} on second was dropped`)
    await until(() => { try { process.kill(pid, 0); return undefined } catch { return true } }, 'the copy command\'s child to be gone')
    const answer = await held
    t.equal(answer.statusCode, 200, 'the request held meanwhile is answered from the old server')
    t.match(await answer.body.json(), { items: 1000, epoch: before.epoch, db: { port: Number(main.port === '' ? '5432' : main.port) } })
    t.notOk(await exists(second.url, db))
    t.match(await show('delta'), { database_server: 'main', epoch: before.epoch, paused_hold_ms: null })
  })

  await t.test('CLI mistakes change nothing', async (t) => {
    await createTenant('gamma')
    const before = await show('gamma')
    const cases: Array<[string[], number, string]> = [
      [['tenants', 'move', 'gamma', '--to', 'nowhere', '--yes'], 1, 'TENANT_PROXY_ERR_SERVER_NOT_FOUND'],
      [['tenants', 'move', 'gamma', '--to', 'main', '--yes'], 2, 'tenant gamma is already on server main'],
      [['tenants', 'move', 'gamma', '--to', 'second'], 2, 'without --yes'],
      [['tenants', 'move', 'gamma', '--yes'], 2, '--to is required'],
      [['tenants', 'move', 'nobody', '--to', 'second', '--yes'], 1, 'TENANT_PROXY_ERR_TENANT_NOT_FOUND'],
      [['tenants', 'move', 'gamma', '--to', 'second', '--yes', '--timeout', 'forever'], 2, '--timeout must be a duration']
    ]
    for (const [args, code, message] of cases) {
      const r = await runCli(args, env)
      t.equal(r.code, code, `${args.slice(3).join(' ')}: exit ${code}`)
      t.match(r.stderr, message)
    }
    await cli(['tenants', 'state', 'gamma', 'suspended'])
    const suspended = await runCli(['tenants', 'move', 'gamma', '--to', 'second', '--yes'], env)
    t.equal(suspended.code, 1)
    t.match(suspended.stderr, 'tenant gamma is suspended; tenants move moves active tenants')
    await cli(['tenants', 'state', 'gamma', 'active'])
    await cli(['tenants', 'pause', 'gamma'])
    const paused = await runCli(['tenants', 'move', 'gamma', '--to', 'second', '--yes'], env)
    t.equal(paused.code, 1)
    t.match(paused.stderr, 'another pause or move is under way')
    await cli(['tenants', 'resume', 'gamma'])
    const dry = await runCli(['tenants', 'move', 'gamma', '--to', 'second', '--dry-run', '--json'], env)
    t.equal(dry.code, 0, dry.stderr)
    t.match(JSON.parse(dry.stdout), { dry_run: true, from: { server: 'main' }, to: { server: 'second' }, source: 'drop' })
    t.match(await show('gamma'), { database_server: 'main', epoch: before.epoch, paused_hold_ms: null })
    t.notOk(await exists(second.url, (await show('gamma') as unknown as { database_name: string }).database_name), 'nothing created on the target')
  })
})
