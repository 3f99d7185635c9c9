/**
 * The PostgreSQL fixture of the integration tests: one admin URL per test process, and throwaway
 * databases named so that parallel test processes (tap runs files concurrently) never collide.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { startEmbeddedRegistry, type EmbeddedRegistry } from '../../src/registry/embedded.js'

/** Admin URL of a real PostgreSQL for tests: $TEST_DATABASE_URL, else 127.0.0.1:5432 (user postgres) when reachable, else an embedded instance started once per test process in a temp dir (stopped on exit). */
export async function testServerUrl (): Promise<string> {
  serverUrl ??= findServer()
  return serverUrl
}

/** Creates a uniquely named throwaway database and drops it (WITH (FORCE)) in t.teardown; returns its URL. */
export async function throwawayDatabase (t: Test, prefix = 'tp_test'): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(prefix)) throw new Error(`database name prefix must be a lower-case identifier, got ${prefix}`)
  const admin = await testServerUrl()
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`
  await withClient(admin, async (client) => {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`)
  })
  t.teardown(async () => {
    // FORCE: a test that forgot to close a pool must not leave its database behind.
    await withClient(admin, async (client) => {
      await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`)
    })
  })
  return databaseUrl(admin, name)
}

/**
 * A unique name for a database the code under test creates itself (tenants create, a tenant a
 * test registers): nothing is created here, but whatever exists under the name at teardown is
 * dropped (WITH (FORCE)), so a test that fails half-way leaves no database behind either.
 */
export async function databaseNameForTest (t: Test, prefix = 'tp_tenant'): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(prefix)) throw new Error(`database name prefix must be a lower-case identifier, got ${prefix}`)
  const admin = await testServerUrl()
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`
  t.teardown(async () => {
    await withClient(admin, async (client) => {
      await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`)
    })
  })
  return name
}

/** Runs `statements` in order in one transaction on a connection of `pool`. */
export async function inTransaction (pool: pg.Pool, statements: ReadonlyArray<string | ((c: pg.PoolClient) => Promise<unknown>)>): Promise<void> {
  const c = await pool.connect()
  try {
    await c.query('BEGIN')
    for (const s of statements) {
      if (typeof s === 'string') await c.query(s)
      else await s(c)
    }
    await c.query('COMMIT')
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined)
    throw err
  } finally {
    c.release()
  }
}

/** `url` with its database replaced by `database`. */
export function databaseUrl (url: string, database: string): string {
  const u = new URL(url)
  u.pathname = `/${encodeURIComponent(database)}`
  return u.toString()
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port)
        else reject(new Error('no port assigned'))
      })
    })
  })
}

// ---------------------------------------------------------------------------------------------

const LOCAL_URL = 'postgres://postgres@127.0.0.1:5432/postgres'
const PROBE_TIMEOUT_MS = 1_000

let serverUrl: Promise<string> | undefined

async function findServer (): Promise<string> {
  const configured = process.env.TEST_DATABASE_URL
  if (configured !== undefined && configured !== '') return configured
  if (await reachable(LOCAL_URL)) return LOCAL_URL
  return startEmbeddedServer()
}

async function reachable (url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: PROBE_TIMEOUT_MS })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('SELECT 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

async function startEmbeddedServer (): Promise<string> {
  // Under os.tmpdir(), not the repo: the server user (postgres, when we run as root) must be able
  // to traverse every parent, and a short path keeps the unix socket path within its limit.
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'tp-test-pg-'))
  // mkdtemp makes it 0700; the server user needs to traverse it (but not list it).
  await fs.chmod(dir, 0o711)
  const quiet = { debug () {}, info () {}, warn (msg: string) { console.error(msg) } }
  let registry: EmbeddedRegistry
  try {
    registry = await startEmbeddedRegistry({ dataDir: path.join(dir, 'data'), port: await freePort(), logger: quiet })
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true })
    throw err
  }
  // The root tap object's teardown runs once the whole test file is done.
  t.teardown(async () => {
    await registry.stop()
    await fs.rm(dir, { recursive: true, force: true })
  })
  return databaseUrl(registry.url, 'postgres')
}

async function withClient<T> (url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}
