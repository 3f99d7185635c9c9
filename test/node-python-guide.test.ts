/**
 * docs/node-python.md ("Node and Python in five minutes") run as written: the guide's code blocks
 * are read from the guide itself, so the guide cannot drift from what this test runs.
 *
 * - the Express app (first ```js block) and the Flask app (first ```python block) run behind a
 *   running tenant-proxy (dist/, `serve`) with two tenants, each with its own database: each host
 *   sees only its own rows, and a request straight to the app gets 400 `missing`;
 * - the "outside a request" functions (second ```js and ```python blocks) get a verified
 *   descriptor for a slug from the ops descriptor API, and fail with a wrong token;
 * - a moved tenant (`tenants update --database`, which bumps the epoch) is read from the new
 *   database on the next request through the Express app's pool-per-epoch code, and the old pool
 *   is closed so the old database drops.
 *
 * The Express app uses @tenant-proxy/verify from this checkout's workspace package (clients/node,
 * built by `npm run build`) and express and pg from the repository's node_modules. The Flask app
 * uses Debian's python3-flask and python3-psycopg with the kit from clients/python; that part is
 * skipped, saying why, where they are missing (.ci/run installs them). Processes are stopped by
 * PID; databases are dropped at teardown.
 */
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { runCli } from './helpers/cli.js'
import { databaseNameForTest, freePort, testServerUrl, throwawayDatabase } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe, type ServeProcess } from './helpers/serve-process.js'
import { until } from './helpers/wait.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const GUIDE = path.join(ROOT, 'docs/node-python.md')
const TOKEN = 'node-python-guide-ops-token-0123456789abcdef'
const ISSUER = 'notes-dev'
const AUDIENCE = 'notes'
const ROWS: Record<string, string[]> = { acme: ['acme: first note', 'acme: second note'], globex: ['globex: only note'] }

interface Run { code: number, stdout: string, stderr: string }

/** Runs a program to completion, bounded by timeoutMs; never rejects. */
async function run (file: string, args: readonly string[], opts: { cwd?: string, env: Record<string, string>, timeoutMs?: number }): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs ?? 30_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

/** The guide's fenced code blocks of one language, in order. */
function codeBlocks (markdown: string, lang: string): string[] {
  return [...markdown.matchAll(/^```(\S*)\n([\s\S]*?)^```$/gm)].filter((m) => m[1] === lang).map((m) => m[2] ?? '')
}

/** The first python3 that imports Flask, psycopg and the Python kit's dependencies (Debian's serve /usr/bin/python3, which a pyenv shim may hide). */
async function findPython (): Promise<{ bin: string } | { skip: string }> {
  for (const bin of ['python3', '/usr/bin/python3']) {
    const r = await run(bin, ['-c', 'import flask, psycopg, jwt, cryptography, idna'], { env: { PATH: process.env.PATH ?? '' } })
    if (r.code === 0) return { bin }
  }
  return { skip: 'no python3 with Flask, psycopg, PyJWT, cryptography and idna (apt-get install python3-flask python3-psycopg python3-jwt python3-cryptography python3-idna)' }
}

/** An app process from the guide, stopped by PID at teardown. */
interface AppProcess { url: string, output: () => string, running: () => boolean }

/** Starts an app on 127.0.0.1:port and resolves once it answers HTTP (any status), or rejects with its output if it exits first. */
async function startApp (t: Test, file: string, args: readonly string[], opts: { cwd: string, env: Record<string, string>, port: number }): Promise<AppProcess> {
  const child = spawn(file, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout?.on('data', (c: Buffer) => { output += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { output += c.toString() })
  let exited = false
  const exit = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve() }))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exit
    clearTimeout(timer)
  })
  const url = `http://127.0.0.1:${opts.port}`
  await until(async () => {
    if (exited) throw new Error(`${path.basename(file)} exited before listening: ${output}`)
    try {
      await (await request(`${url}/up`)).body.dump()
      return true
    } catch {
      return undefined
    }
  }, `${path.basename(file)} to listen on ${opts.port}`, 20_000)
  return { url, output: () => output, running: () => !exited }
}

const guide = await readFile(GUIDE, 'utf8')
const js = codeBlocks(guide, 'js')
const python = codeBlocks(guide, 'python')
const nodeKitBuilt = existsSync(path.join(ROOT, 'clients/node/dist/index.js'))
const py = await findPython()

t.test('the guide has the blocks this test runs', async (t) => {
  t.equal(js.length, 2, 'two ```js blocks: the Express app, then descriptorFor')
  t.equal(python.length, 2, 'two ```python blocks: the Flask app, then descriptor_for')
  t.match(js[0], /tenantDescriptorMiddleware/)
  t.match(js[1], /async function descriptorFor/)
  t.match(python[0], /WSGIMiddleware/)
  t.match(python[1], /def descriptor_for/)
})

t.test('the guide\'s apps behind a running proxy', async (t) => {
  const admin = new URL(await testServerUrl())
  const serverHost = admin.hostname
  const serverPort = admin.port === '' ? 5432 : Number(admin.port)
  const dbUser = { DB_USER: decodeURIComponent(admin.username) || 'postgres', DB_PASSWORD: decodeURIComponent(admin.password) }
  const client = new pg.Client({ connectionString: admin.toString() })
  await client.connect()
  t.teardown(async () => await client.end())
  const dbName = (url: string): string => decodeURIComponent(new URL(url).pathname.slice(1))

  // Two tenants, each with its own database and rows in the guide's `notes` table.
  const tenantDb: Record<string, string> = {}
  for (const [slug, rows] of Object.entries(ROWS)) {
    const url = await throwawayDatabase(t, `tp_guide_${slug}`)
    tenantDb[slug] = dbName(url)
    const c = new pg.Client({ connectionString: url })
    await c.connect()
    await c.query('CREATE TABLE notes (id serial PRIMARY KEY, body text)')
    for (const body of rows) await c.query('INSERT INTO notes (body) VALUES ($1)', [body])
    await c.end()
  }
  const registry = await testRegistry(t, Object.keys(ROWS).map((slug) => ({
    slug, domains: [`${slug}.localhost`], databaseName: tenantDb[slug], databaseHost: serverHost, databasePort: serverPort
  })))
  const cli = async (...args: string[]): Promise<Run> => await runCli(args, { REGISTRY_DATABASE_URL: registry.url })
  // Where acme moves to; named here so that it outlives the Node part (the Flask app reads it next).
  const moved = await databaseNameForTest(t, 'tp_guide_acme_moved')

  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-guide-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'descriptor.pem')
  await writeFile(keyFile, es256Pem(), { mode: 0o600 })

  /** The proxy as the guide starts it, forwarding to the app's port, with the ops descriptor API on; and the app's settings for it. */
  const proxyFor = async (t: Test, appPort: number): Promise<{ proxy: ServeProcess, proxyUrl: string, settings: Record<string, string> }> => {
    const proxy = await spawnServe(t, {
      REGISTRY_DATABASE_URL: registry.url,
      TENANT_PROXY_UPSTREAM_URLS: `http://127.0.0.1:${appPort}`,
      TENANT_PROXY_DEPLOYMENT_ID: ISSUER,
      TENANT_PROXY_DESCRIPTOR_AUDIENCE: AUDIENCE,
      TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile,
      TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: TOKEN
    })
    const opsUrl = `http://127.0.0.1:${proxy.opsPort}`
    return {
      proxy,
      proxyUrl: `http://127.0.0.1:${proxy.trafficPort}`,
      settings: {
        PATH: process.env.PATH ?? '',
        HOME: dir,
        LANG: 'C.UTF-8',
        ...dbUser,
        PORT: String(appPort),
        TENANT_DESCRIPTOR_ISSUER: ISSUER,
        TENANT_DESCRIPTOR_AUDIENCE: AUDIENCE,
        TENANT_DESCRIPTOR_JWKS_URL: `${opsUrl}/.well-known/tenant-proxy/jwks.json`,
        TENANT_DESCRIPTOR_API_URL: opsUrl,
        TENANT_DESCRIPTOR_API_TOKEN: TOKEN
      }
    }
  }
  const get = async (base: string, host: string, pathname = '/notes'): Promise<{ status: number, json: unknown }> => {
    const res = await request(`${base}${pathname}`, { headers: { host } })
    const text = await res.body.text()
    try {
      return { status: res.statusCode, json: JSON.parse(text) as unknown }
    } catch {
      return { status: res.statusCode, json: text.slice(0, 300) }
    }
  }

  await t.test('Node: the Express app and descriptorFor', { skip: nodeKitBuilt ? false : 'clients/node is not built (npm run build)' }, async (t) => {
    // The app's directory: the guide's two blocks as server.js, packages from this checkout
    // (@tenant-proxy/verify is the workspace link to clients/node).
    const app = path.join(dir, 'node')
    await mkdir(app)
    await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'notes', private: true, type: 'module' }))
    await symlink(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'), 'dir')
    const job = [
      '',
      '// Not from the guide: run as a job with JOB_SLUG, print descriptorFor(JOB_SLUG) and exit.',
      'if (process.env.JOB_SLUG !== undefined) {',
      '  descriptorFor(process.env.JOB_SLUG).then(',
      '    (d) => { console.log(JSON.stringify({ tenant: d.tenant, host: d.host, db: d.db, epoch: d.epoch })); process.exit(0) },',
      '    (err) => { console.error(err.message); process.exit(3) })',
      '}',
      ''
    ].join('\n')
    await writeFile(path.join(app, 'server.js'), `${js[0] ?? ''}\n${js[1] ?? ''}${job}`)

    const appPort = await freePort()
    const { proxyUrl, settings } = await proxyFor(t, appPort)
    const server = await startApp(t, process.execPath, ['server.js'], { cwd: app, env: settings, port: appPort })
    const descriptorFor = async (slug: string, token = TOKEN): Promise<Run> =>
      await run(process.execPath, ['server.js'], { cwd: app, env: { ...settings, PORT: '0', JOB_SLUG: slug, TENANT_DESCRIPTOR_API_TOKEN: token } })
    const bodies = (json: unknown): unknown => Array.isArray(json) ? json.map((r: { body?: unknown }) => r.body) : json

    await t.test('each host sees only its own rows through the proxy', async (t) => {
      for (const slug of Object.keys(ROWS)) {
        const r = await get(proxyUrl, `${slug}.localhost`)
        t.same([r.status, bodies(r.json)], [200, ROWS[slug]], `${slug} reads its own database`)
      }
    })

    await t.test('a request straight to the app gets 400 missing', async (t) => {
      const r = await get(server.url, 'acme.localhost')
      t.same([r.status, (r.json as { reason?: string }).reason], [400, 'missing'])
      t.equal((await get(server.url, 'acme.localhost', '/up')).status, 200, '/up needs no descriptor')
    })

    await t.test('descriptorFor: a verified descriptor for a slug; a wrong token fails', async (t) => {
      const ok = await descriptorFor('globex')
      t.equal(ok.code, 0, ok.stderr)
      t.match(JSON.parse(ok.stdout) as unknown, { tenant: 'globex', host: 'globex.localhost', db: { name: tenantDb.globex, host: serverHost, port: serverPort } })
      const wrong = await descriptorFor('globex', 'wrong-token-0123456789abcdef0123456789ab')
      t.equal(wrong.code, 3, 'the job fails')
      t.match(wrong.stderr, /ops API answered 401 for globex/)
    })

    await t.test('a moved tenant is read from the new database on the next request, and the old pool is closed', async (t) => {
      const old = tenantDb.acme ?? ''
      const before = JSON.parse((await descriptorFor('acme')).stdout) as { epoch: number }
      t.same(bodies((await get(proxyUrl, 'acme.localhost')).json), ROWS.acme, 'the app holds a pool on the old database')
      t.ok(await connectionsTo(client, old) > 0, 'with a connection open')
      // The copy, as a move makes it: the old database's connections ended (the app's idle
      // pooled connection among them), then a template copy, to which a row is added here to
      // tell the two apart.
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [old])
      await client.query(`CREATE DATABASE ${moved} TEMPLATE ${old}`)
      const c = new pg.Client({ connectionString: `postgres://${encodeURIComponent(dbUser.DB_USER)}:${encodeURIComponent(dbUser.DB_PASSWORD)}@${serverHost}:${serverPort}/${moved}` })
      await c.connect()
      await c.query("INSERT INTO notes (body) VALUES ('acme: written after the move')")
      await c.end()
      const still = await get(proxyUrl, 'acme.localhost')
      t.same([still.status, bodies(still.json)], [200, ROWS.acme], 'the app survived its connection being ended and still reads the old database')

      const update = await cli('tenants', 'update', 'acme', '--database', moved, '--wait')
      t.equal(update.code, 0, update.stderr)
      const after = JSON.parse((await descriptorFor('acme')).stdout) as { epoch: number, db: { name: string } }
      t.equal(after.db.name, moved, 'the descriptor names the new database')
      t.ok(after.epoch > before.epoch, `with a new epoch (${before.epoch} → ${after.epoch})`)
      const r = await get(proxyUrl, 'acme.localhost')
      t.same([r.status, bodies(r.json)], [200, [...(ROWS.acme ?? []), 'acme: written after the move']], 'the next request reads the new database')
      t.ok(await until(async () => await connectionsTo(client, old) === 0 ? true : undefined, 'the old database\'s connections to end', 15_000), 'the old pool is closed')
      await t.resolves(client.query(`DROP DATABASE ${old}`), 'the old database drops without FORCE')
      t.same(bodies((await get(proxyUrl, 'globex.localhost')).json), ROWS.globex, 'globex is untouched')
      ROWS.acme = [...(ROWS.acme ?? []), 'acme: written after the move']
      t.ok(server.running(), 'the app is still running')
      t.match(server.output(), /idle connection lost: terminating connection due to administrator command/, 'it logged the connection the move ended')
    })
  })

  await t.test('Python: the Flask app and descriptor_for', { skip: 'skip' in py ? py.skip : false }, async (t) => {
    if (!('bin' in py)) return
    const app = path.join(dir, 'python')
    await mkdir(app)
    await writeFile(path.join(app, 'app.py'), `${python[0] ?? ''}\n\n${python[1] ?? ''}`)
    const appPort = await freePort()
    const { proxyUrl, settings } = await proxyFor(t, appPort)
    const env = { ...settings, PYTHONPATH: [app, path.join(ROOT, 'clients/python/src')].join(path.delimiter), PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' }
    // The guide's command, `flask --app app run --port 3000`, through the python3 that has Flask.
    const server = await startApp(t, py.bin, ['-m', 'flask', '--app', 'app', 'run', '--port', String(appPort)], { cwd: app, env, port: appPort })
    const descriptorFor = async (slug: string, token = TOKEN): Promise<Run> =>
      await run(py.bin, ['-c', 'import json, sys, app; d = app.descriptor_for(sys.argv[1]); print(json.dumps({"tenant": d.tenant, "host": d.host, "db": d.db.name, "epoch": d.epoch}))', slug], { cwd: app, env: { ...env, TENANT_DESCRIPTOR_API_TOKEN: token } })

    await t.test('each host sees only its own rows through the proxy', async (t) => {
      for (const slug of Object.keys(ROWS)) {
        const r = await get(proxyUrl, `${slug}.localhost`)
        t.same([r.status, r.json], [200, ROWS[slug]], `${slug} reads its own database`)
        if (r.status !== 200) t.comment(server.output().slice(-3000))
      }
    })

    await t.test('a request straight to the app gets 400 missing', async (t) => {
      const r = await get(server.url, 'acme.localhost')
      t.same([r.status, (r.json as { reason?: string }).reason], [400, 'missing'])
      t.equal((await get(server.url, 'acme.localhost', '/up')).status, 200, '/up needs no descriptor')
    })

    await t.test('descriptor_for: a verified descriptor for a slug; a wrong token fails', async (t) => {
      const ok = await descriptorFor('globex')
      t.equal(ok.code, 0, ok.stderr)
      t.match(JSON.parse(ok.stdout) as unknown, { tenant: 'globex', host: 'globex.localhost', db: tenantDb.globex })
      const wrong = await descriptorFor('globex', 'wrong-token-0123456789abcdef0123456789ab')
      t.not(wrong.code, 0, 'the job fails')
      t.match(wrong.stderr, /HTTP Error 401/)
    })
  })
})

/** Connections from anyone to database name. */
async function connectionsTo (client: pg.Client, name: string): Promise<number> {
  return (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [name])).rows[0]?.n ?? -1
}
