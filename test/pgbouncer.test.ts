/**
 * A real PgBouncer (Debian's package) in transaction mode in front of the registry, configured as
 * docs/operations.md ("Poolers (PgBouncer)") says: the CLI runs through it (migrations, writes,
 * the prune), a proxy whose `registry.databaseUrl` goes through it and whose `registry.listenUrl`
 * goes straight to PostgreSQL is synced and hears its notifications, and a proxy whose change
 * feed goes through the pooler too is reported deaf and still gets changes by its periodic check.
 * A pooler left at its defaults refuses the proxy's startup parameters, and the error says what
 * to change. Skipped where pgbouncer is not installed (.ci/run installs it).
 */
import { spawn, spawnSync } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createConnection } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { runCli } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const PGBOUNCER = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => spawnSync(p, ['--version']).status === 0)
const CHECK_MS = 200

interface Ready { registry: { synced: boolean, feedDeaf: boolean, notSyncedReason: string | null } }

async function ready (opsUrl: string): Promise<Ready> {
  return await (await request(`${opsUrl}/ready`)).body.json() as Ready
}

async function metric (opsUrl: string, name: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  return Number(text.split('\n').find((l) => l.startsWith(`${name} `))?.split(' ')[1])
}

async function status (url: string, host: string): Promise<number> {
  const res = await request(url, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

/**
 * Starts PgBouncer in transaction mode in front of `target` (a PostgreSQL URL), in the foreground
 * (its PID is the test's to stop); `documented`: with the line docs/operations.md adds.
 */
async function startPgBouncer (t: Test, target: string, documented: boolean): Promise<{ url: (databaseUrl: string) => string, stats: () => Promise<number> }> {
  const u = new URL(target)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-pgbouncer-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  await writeFile(path.join(dir, 'users.txt'), `"${decodeURIComponent(u.username) || 'postgres'}" ""\n`)
  await writeFile(path.join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `* = host=${u.hostname} port=${u.port || '5432'}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = trust',
    `auth_file = ${path.join(dir, 'users.txt')}`,
    'pool_mode = transaction',
    `admin_users = ${decodeURIComponent(u.username) || 'postgres'}`,
    ...(documented ? ['ignore_startup_parameters = statement_timeout'] : []),
    ''
  ].join('\n'))
  // PgBouncer refuses to run as root; it drops to the postgres user, who must read its files.
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    await chmod(dir, 0o755)
    for (const f of ['users.txt', 'pgbouncer.ini']) await chmod(path.join(dir, f), 0o644)
  }
  const child = spawn(PGBOUNCER as string, [...(asRoot ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString() })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await exited
  })
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`pgbouncer exited: ${stderr}`)
    return await new Promise<true | undefined>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => { s.end(); resolve(true) })
      s.on('error', () => resolve(undefined))
    })
  }, 'pgbouncer to listen')
  const url = (databaseUrl: string): string => {
    const v = new URL(databaseUrl)
    v.hostname = '127.0.0.1'
    v.port = String(port)
    return v.toString()
  }
  const stats = async (): Promise<number> => {
    // The admin console speaks the simple query protocol only: no parameters.
    const c = new pg.Client({ connectionString: url(`postgres://${u.username || 'postgres'}@x/pgbouncer`) })
    await c.connect()
    try {
      const r = await c.query<{ database: string, total_query_count: string }>('SHOW STATS')
      return r.rows.filter((row) => row.database !== 'pgbouncer').reduce((sum, row) => sum + Number(row.total_query_count), 0)
    } finally {
      await c.end()
    }
  }
  return { url, stats }
}

t.test('PgBouncer in transaction mode', { skip: PGBOUNCER === undefined ? 'pgbouncer is not installed' : false }, async (t) => {
  t.test('as documented: the CLI through it; a proxy queries through it and listens directly, synced, its changes by notification', async (t) => {
    const registry = await testRegistry(t)
    const bouncer = await startPgBouncer(t, registry.url, true)
    const pooled = bouncer.url(registry.url)
    const cli = async (...args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> => await runCli(args, { REGISTRY_DATABASE_URL: pooled })
    t.match(await cli('migrate'), { code: 0 }, 'migrate through the pooler (its lock is transaction-level)')
    t.match(await cli('tenants', 'add', 'acme', '--domain', 'acme.example', '--database', 'acme'), { code: 0 }, 'a write through the pooler')
    t.match(await cli('registry', 'prune'), { code: 0 }, 'the prune through the pooler (its lock is transaction-level)')
    const before = await bouncer.stats()
    t.ok(before > 0, `the CLI's statements went through PgBouncer (${before})`)

    const upstream = await startUpstream(t)
    const proxy = await startTestProxy(t, testConfig(pooled, upstream.origin, {
      TENANT_PROXY_REGISTRY_LISTEN_URL: registry.url,
      TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: String(CHECK_MS)
    }))
    t.equal(await status(proxy.url, 'acme.example'), 200)
    await until(async () => (await ready(proxy.opsUrl)).registry.synced ? true : undefined, 'synced', 30_000)
    // Heartbeats at every check: a few checks later the feed has heard its own, and is not deaf.
    const reloads = await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total')
    t.match(await cli('tenants', 'update', 'acme', '--state', 'maintenance'), { code: 0 })
    await until(async () => await status(proxy.url, 'acme.example') === 503 ? true : undefined, 'the change through the proxy')
    t.match((await ready(proxy.opsUrl)).registry, { synced: true, feedDeaf: false, notSyncedReason: null })
    t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_deaf'), 0)
    t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), reloads, 'no reconnect')
  })

  t.test('the change feed through the pooler too: reported deaf, changes still arrive by the periodic check', async (t) => {
    const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
    const bouncer = await startPgBouncer(t, registry.url, true)
    const upstream = await startUpstream(t)
    const proxy = await startTestProxy(t, testConfig(bouncer.url(registry.url), upstream.origin, {
      TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: String(CHECK_MS)
    }))
    t.equal(await status(proxy.url, 'acme.example'), 200, 'routes from its first load')
    // Its own heartbeat does get through (PostgreSQL delivers a session's own notification before
    // the pooler takes the server connection back); the registry's changes, notified by other
    // sessions, do not: each arrives by the periodic check, and the feed is reported deaf after
    // changes went unannounced in two check windows in a row. Bounded: a few changes at most.
    let deaf: Ready | undefined
    for (let i = 0; i < 6 && deaf === undefined; i++) {
      const host = `d${i}.acme.example`
      await registry.store.addDomain('acme', host, 'alias')
      await until(async () => await status(proxy.url, host) === 200 ? true : undefined, `${host} by the periodic check`, 30_000)
      const r = await ready(proxy.opsUrl)
      if (r.registry.feedDeaf) deaf = r
    }
    if (deaf === undefined) deaf = await until(async () => { const r = await ready(proxy.opsUrl); return r.registry.feedDeaf ? r : undefined }, '/ready to report the deaf feed', 10 * CHECK_MS)
    t.match(deaf.registry, { synced: false, feedDeaf: true, notSyncedReason: /unannounced.*registry\.listenUrl/ })
    t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_deaf'), 1)
  })

  t.test('a pooler left at its defaults refuses the startup parameters, and the error says what to change', async (t) => {
    const registry = await testRegistry(t)
    const bouncer = await startPgBouncer(t, registry.url, false)
    const r = await runCli(['tenants', 'list'], { REGISTRY_DATABASE_URL: bouncer.url(registry.url) })
    t.not(r.code, 0)
    t.match(r.stderr, /unsupported startup parameter: statement_timeout/)
    t.match(r.stderr, /ignore_startup_parameters/, 'names the PgBouncer setting')
    t.match(r.stderr, /TENANT_PROXY_ERR_REGISTRY_UNREACHABLE/)
  })
})
