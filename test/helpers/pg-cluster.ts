/**
 * A second, private PostgreSQL server for tests that need two (tenants move): initdb in a temp
 * dir, `postgres` started directly (so this process holds its PID) on a port that was free, trust
 * authentication on loopback only, stopped by that PID at teardown. Run as the `postgres` system
 * user when the tests run as root (PostgreSQL refuses to run as root).
 */
import { execFile, spawn } from 'node:child_process'
import { chown, mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import type { Test } from 'tap'
import { freePort } from './postgres.js'
import { until } from './wait.js'

const run = promisify(execFile)
const BIN = process.env.PG_BIN_DIR ?? '/usr/lib/postgresql/15/bin'

/** A running private server. */
export interface PgCluster {
  readonly port: number
  /** Superuser URL of its `postgres` database. */
  readonly url: string
  readonly pid: number
}

/** Starts a private server, stopped (SIGINT: fast shutdown) and removed at teardown. */
export async function startPgCluster (t: Test): Promise<PgCluster> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-pg-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const data = path.join(dir, 'data')
  let ids: { uid: number, gid: number } | undefined
  if (process.getuid?.() === 0) {
    const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim())
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim())
    ids = { uid, gid }
    await chown(dir, uid, gid)
  }
  await run(path.join(BIN, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--no-instructions'], { ...ids, env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' } })
  const port = await freePort()
  const child = spawn(path.join(BIN, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'], {
    ...ids, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }
  })
  let log = ''
  child.stderr.on('data', (c: Buffer) => { log = (log + c.toString()).slice(-4_000) })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGINT')
    await exited
  })
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`postgres exited: ${log}`)
    const c = new pg.Client({ connectionString: url })
    c.on('error', () => {})
    try {
      await c.connect()
      await c.query('SELECT 1')
      return true
    } catch {
      return undefined
    } finally {
      await c.end().catch(() => undefined)
    }
  }, 'the private PostgreSQL to accept connections', 30_000)
  return { port, url, pid: child.pid ?? 0 }
}
