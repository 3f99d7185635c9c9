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
  /** PID of the server now (it changes when the server is started again). */
  readonly pid: number
  /** Stops the server (SIGINT: fast shutdown, every session ended) and waits for it to exit. */
  stop (): Promise<void>
  /** Starts it again on the same data directory and port; resolves once it accepts connections. */
  start (): Promise<void>
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
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  let child: ReturnType<typeof spawn> | null = null
  let exited: Promise<void> = Promise.resolve()
  const start = async (): Promise<void> => {
    const server = spawn(path.join(BIN, 'postgres'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'], {
      ...ids, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }
    })
    child = server
    let log = ''
    server.stderr?.on('data', (c: Buffer) => { log = (log + c.toString()).slice(-4_000) })
    exited = new Promise<void>((resolve) => server.once('exit', () => resolve()))
    await until(async () => {
      if (server.exitCode !== null) throw new Error(`postgres exited: ${log}`)
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
  }
  const stop = async (): Promise<void> => {
    if (child !== null && child.exitCode === null) child.kill('SIGINT')
    await exited
  }
  t.teardown(stop)
  await start()
  return { port, url, get pid () { return child?.pid ?? 0 }, stop, start }
}
