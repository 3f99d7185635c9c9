/**
 * The live registry over real sockets and real PostgreSQL: changes reach a running proxy through
 * LISTEN/NOTIFY and the change log, a registry outage loses no request for a known tenant, and the
 * last-known-good snapshot file carries a restart through an outage.
 *
 * Outages are real: either a dedicated embedded PostgreSQL that the test stops and starts, or the
 * proxy's own role locked out (NOLOGIN + its backends terminated) on the shared server, which
 * keeps the proxy disconnected for exactly as long as the test wants.
 */
import { execFile } from 'node:child_process'
import { chmod, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { connect as connectNet, createServer as createNetServer, type Socket } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { createLogger } from '../src/log.js'
import { startEmbeddedRegistry, type EmbeddedRegistry } from '../src/registry/embedded.js'
import { migrate } from '../src/registry/migrate.js'
import { RegistryStore } from '../src/registry/store.js'
import { startProxy } from '../src/server.js'
import { runCli } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { withHeader } from './helpers/snapshot-file.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const execFileAsync = promisify(execFile)

interface Answer { status: number, tenant: string | null, code: string | null, retryAfter: string | null }

/** One request through the proxy; the tenant is read from the descriptor the upstream received. */
async function hit (url: string, host: string): Promise<Answer> {
  const res = await request(url, { headers: { host } })
  const text = await res.body.text()
  const retryAfter = res.headers['retry-after']
  const answer: Answer = { status: res.statusCode, tenant: null, code: null, retryAfter: typeof retryAfter === 'string' ? retryAfter : null }
  const body = JSON.parse(text) as { headers?: Record<string, string>, error?: { code: string } }
  const token = body.headers?.['x-tenant-descriptor']
  if (token !== undefined) answer.tenant = (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { sub: string }).sub
  if (body.error !== undefined) answer.code = body.error.code
  return answer
}

async function ready (opsUrl: string): Promise<{ status: string, registry: Record<string, unknown> }> {
  const res = await request(`${opsUrl}/ready`)
  return await res.body.json() as { status: string, registry: Record<string, unknown> }
}

async function metric (opsUrl: string, name: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return Number(line?.split(' ')[1])
}

/** A role only the proxy uses, so the test can lock it out of the registry and let it back in. */
async function proxyRole (t: Test, registryUrl: string): Promise<{ url: string, lockOut (): Promise<void>, letIn (): Promise<void> }> {
  const role = `tp_proxy_${process.pid}_${Math.floor(Math.random() * 1e9)}`
  const admin = new pg.Client({ connectionString: registryUrl })
  await admin.connect()
  await admin.query(`CREATE ROLE ${role} LOGIN SUPERUSER`)
  t.teardown(async () => {
    await admin.query(`ALTER ROLE ${role} NOLOGIN`)
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role])
    await until(async () => (await admin.query('SELECT 1 FROM pg_stat_activity WHERE usename = $1', [role])).rowCount === 0 ? true : undefined, 'the proxy role to have no sessions')
    await admin.query(`DROP ROLE ${role}`)
    await admin.end()
  })
  const url = new URL(registryUrl)
  url.username = role
  return {
    url: url.toString(),
    async lockOut () {
      await admin.query(`ALTER ROLE ${role} NOLOGIN`)
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role])
    },
    async letIn () {
      await admin.query(`ALTER ROLE ${role} LOGIN`)
    }
  }
}

/** A registry with one tenant, an upstream, and the snapshot file a (stopped) proxy wrote for it. */
async function writtenSnapshot (t: Test): Promise<{ registry: Awaited<ReturnType<typeof testRegistry>>, upstream: Awaited<ReturnType<typeof startUpstream>>, snapshotPath: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-snap-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const snapshotPath = path.join(dir, 'lkg.json')
  const first = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath }))
  await until(async () => await readFile(snapshotPath).then(() => true, () => undefined), 'the snapshot file')
  await first.stop()
  return { registry, upstream, snapshotPath }
}

t.test('a CLI change reaches a running proxy without restart or signal', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const env = { REGISTRY_DATABASE_URL: registry.url }
  t.equal((await hit(proxy.url, 'new.example')).status, 404)
  t.equal((await runCli(['tenants', 'add', 'newco', '--domain', 'new.example', '--database', 'newco'], env)).code, 0)
  t.equal((await until(async () => { const a = await hit(proxy.url, 'new.example'); return a.status === 200 ? a : undefined }, 'the new tenant through the proxy')).tenant, 'newco')
  t.equal((await runCli(['tenants', 'state', 'acme', 'suspended'], env)).code, 0)
  await until(async () => (await hit(proxy.url, 'acme.example')).status === 403 ? true : undefined, 'the suspension')
  t.equal((await runCli(['tenants', 'remove', 'newco', '--yes'], env)).code, 0)
  await until(async () => (await hit(proxy.url, 'new.example')).status === 404 ? true : undefined, 'the removed tenant to be unknown')
  t.equal(proxy.state.index?.version, (await registry.store.status()).version, 'the index is at the registry version')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_connected'), 1)
})

t.test('a write is applied whole: a domain moved between tenants is never seen half-moved', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example', 'shared.example'] }, { slug: 'b', domains: ['b.example'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const c = new pg.Client({ connectionString: registry.url })
  await c.connect()
  t.teardown(async () => await c.end())
  let moves = 0
  let stop = false
  const mover = (async () => {
    for (let i = 0; i < 30 && !stop; i++) {
      const to = i % 2 === 0 ? 'b' : 'a'
      // Delete and re-insert in one transaction: between the two statements the host is unknown.
      await c.query('BEGIN')
      await c.query('DELETE FROM tenant_proxy.domains WHERE hostname = $1', ['shared.example'])
      await c.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT 'shared.example', id, 'alias' FROM tenant_proxy.tenants WHERE slug = $1`, [to])
      await c.query('COMMIT')
      moves++
    }
  })()
  const seen = new Set<string>()
  const statuses = new Set<number>()
  for (let i = 0; i < 400 && moves < 30; i++) {
    const a = await hit(proxy.url, 'shared.example')
    statuses.add(a.status)
    if (a.tenant !== null) seen.add(a.tenant)
  }
  stop = true
  await mover
  t.same([...statuses], [200], 'every request found the domain on one tenant or the other')
  t.ok(seen.size >= 1, `served by ${[...seen].join(', ')}`)
  await until(async () => proxy.state.index?.version === (await registry.store.status()).version ? true : undefined, 'the proxy to reach the last version')
  t.equal(proxy.state.index?.byHost.get('shared.example')?.slug, 'a', 'the last move (to a) is what the index holds')
})

t.test('the periodic version check heals a change whose notification was lost', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: '100' }))
  const c = new pg.Client({ connectionString: registry.url })
  await c.connect()
  t.teardown(async () => await c.end())
  // Claim this transaction's version by hand: the trigger then records the change but does not
  // notify (it notifies only when it assigns the version itself), like a notification lost in transit.
  await c.query('BEGIN')
  const v = await c.query<{ version: string }>('UPDATE tenant_proxy.registry_state SET version = version + 1 RETURNING version')
  await c.query("SELECT set_config('tenant_proxy_txn.tenant_proxy', $1, true)", [v.rows[0]?.version])
  await c.query("UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE slug = 'acme'")
  await c.query('COMMIT')
  const a = await until(async () => { const r = await hit(proxy.url, 'acme.example'); return r.status === 503 ? r : undefined }, 'maintenance after the version check')
  t.equal(a.code, 'TENANT_PROXY_ERR_TENANT_MAINTENANCE')
})

t.test('while locked out of the registry: known hosts route, unknown hosts get 503, changes arrive after reconnect', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }, { slug: 'globex', domains: ['globex.example'] }])
  const role = await proxyRole(t, registry.url)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(role.url, upstream.origin, { TENANT_PROXY_REGISTRY_RECONNECT_MIN_MS: '20', TENANT_PROXY_REGISTRY_RECONNECT_MAX_MS: '100' }))
  t.equal(proxy.state.synced, true)

  await role.lockOut()
  await until(() => proxy.state.synced ? undefined : true, 'the proxy to notice the lost feed')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_connected'), 0)
  for (let i = 0; i < 50; i++) t.equal((await hit(proxy.url, i % 2 === 0 ? 'acme.example' : 'globex.example')).status, 200, 'known host routes from memory')
  const unknown = await hit(proxy.url, 'unknown.example')
  t.match(unknown, { status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', retryAfter: '5' }, 'unknown host: 503, not 404')
  t.equal((await request(`${proxy.url}/up`)).statusCode, 200, '/up stays 200')
  t.match(await ready(proxy.opsUrl), { registry: { loaded: true, synced: false, stale: false } })

  // Written while the proxy cannot connect: it must pick these up in its resync.
  const env = { REGISTRY_DATABASE_URL: registry.url }
  t.equal((await runCli(['tenants', 'add', 'initech', '--domain', 'initech.example', '--database', 'initech'], env)).code, 0)
  t.equal((await runCli(['tenants', 'state', 'globex', 'suspended'], env)).code, 0)
  t.equal((await hit(proxy.url, 'initech.example')).status, 503, 'still out of sync')
  const reconnectsBefore = await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total')

  await role.letIn()
  await until(() => proxy.state.synced ? true : undefined, 'the proxy to reconnect and resync')
  t.equal((await hit(proxy.url, 'initech.example')).tenant, 'initech')
  t.equal((await hit(proxy.url, 'globex.example')).status, 403)
  t.equal((await hit(proxy.url, 'unknown.example')).status, 404, 'unknown is 404 again once in sync')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), reconnectsBefore + 1)
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_connected'), 1)
})

t.test('registry server stopped and restarted: zero failed requests, restart from the snapshot file', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-live-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await chmod(dir, 0o711) // the embedded server runs as the postgres user when we are root
  const quiet = { debug () {}, info () {}, warn () {} }
  const port = await freePort()
  const pgOpts = { dataDir: path.join(dir, 'registry'), port, logger: quiet }
  let server: EmbeddedRegistry | null = await startEmbeddedRegistry(pgOpts)
  t.teardown(async () => { await server?.stop() })
  const url = server.url
  const pool = new pg.Pool({ connectionString: url, max: 2 })
  await migrate(pool, 'tenant_proxy')
  const store = new RegistryStore(pool, 'tenant_proxy')
  for (const slug of ['acme', 'globex']) {
    await store.addTenant({ slug, databaseName: slug, databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {}, domains: [`${slug}.example`] })
  }
  await pool.end()

  const upstream = await startUpstream(t)
  const snapshotPath = path.join(dir, 'state', 'last-known-good.json')
  const env = { TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath, TENANT_PROXY_REGISTRY_RECONNECT_MIN_MS: '50', TENANT_PROXY_REGISTRY_RECONNECT_MAX_MS: '200', TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '1000' }
  const proxy = await startTestProxy(t, testConfig(url, upstream.origin, env))
  await until(async () => await readFile(snapshotPath).then(() => true, () => undefined), 'the snapshot file')

  // A bounded stream of requests for known tenants while the registry goes down.
  let failures = 0
  let done = 0
  let running = true
  const client = (async () => {
    for (let i = 0; running && i < 5_000; i++) {
      const a = await hit(proxy.url, i % 2 === 0 ? 'acme.example' : 'globex.example')
      if (a.status !== 200) failures++
      done++
    }
  })()
  await until(() => done >= 20 ? true : undefined, 'requests flowing')
  await server.stop()
  server = null
  await until(() => proxy.state.synced ? undefined : true, 'the proxy to notice the outage')
  const during = done
  await until(() => done >= during + 50 ? true : undefined, '50 more requests during the outage')
  running = false
  await client
  t.equal(failures, 0, `no request for a known tenant failed (${done} sent)`)
  t.match(await hit(proxy.url, 'unknown.example'), { status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE' })

  // Restart a proxy while the registry is down: it routes from the last-known-good file.
  await proxy.stop()
  const second = await startTestProxy(t, testConfig(url, upstream.origin, env))
  t.equal(second.state.stale, true)
  t.equal((await hit(second.url, 'acme.example')).tenant, 'acme', 'known tenant routes from the file')
  t.equal((await request(`${second.url}/up`)).statusCode, 200, '/up is 200 from the file')
  t.match(await ready(second.opsUrl), { registry: { loaded: true, stale: true, synced: false, tenants: 2, domains: 2 } })
  t.equal(await metric(second.opsUrl, 'tenant_proxy_registry_stale'), 1)
  t.match(await hit(second.url, 'unknown.example'), { status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE' })

  // The registry returns (with a change made meanwhile): the proxy resyncs and leaves the file behind.
  server = await startEmbeddedRegistry(pgOpts)
  const writer = new pg.Pool({ connectionString: server.url, max: 1 })
  await new RegistryStore(writer, 'tenant_proxy').updateTenant('globex', { state: 'suspended' })
  await writer.end()
  await until(() => second.state.synced ? true : undefined, 'the resync after the registry returns', 20_000)
  t.equal(second.state.stale, false)
  // The write may land before the resync or after it (then by the feed): either way it arrives.
  await until(async () => (await hit(second.url, 'globex.example')).status === 403 ? true : undefined, 'the change made while the proxy was out of sync')
  t.equal((await hit(second.url, 'unknown.example')).status, 404)
})

t.test('a corrupt or foreign snapshot file is refused whole, with a log line that says why', async (t) => {
  const { registry, upstream, snapshotPath } = await writtenSnapshot(t)
  const good = await readFile(snapshotPath)
  // The proxy's role locked out: the registry is unreachable for it, at the same location (so the
  // file is not foreign). Another port is another location: there the same file is foreign.
  const role = await proxyRole(t, registry.url)
  await role.lockOut()
  const elsewhere = `postgres://postgres@127.0.0.1:${await freePort()}/nowhere`

  const attempt = async (content: Buffer | string, registryUrl = role.url): Promise<{ error: string, logs: string }> => {
    await writeFile(snapshotPath, content)
    const lines: string[] = []
    const logger = createLogger('info', { write: (l: string) => { lines.push(l) } })
    const config = testConfig(registryUrl, upstream.origin, { TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '500' })
    const error = await startProxy(config, logger).then(async (p) => { await p.stop(); return 'started' }, (err: Error) => err.message)
    return { error, logs: lines.join('') }
  }
  // Control: the intact file loads when the registry is unreachable.
  t.equal((await attempt(good)).error, 'started', 'the intact file is used')
  const foreign = await attempt(good, elsewhere)
  t.match(foreign.error, /unreachable/)
  t.match(foreign.logs, /written for another registry/)

  // One byte of the tenant's slug in the body (past the header line) changed.
  const flipped = Buffer.from(good)
  flipped[flipped.indexOf('acme', flipped.indexOf(0x0a)) + 3] = 'f'.charCodeAt(0)
  for (const [name, content, reason] of [
    ['modified', flipped, /checksum mismatch/],
    ['truncated', good.slice(0, Math.floor(good.length / 2)), /layout|checksum|not JSON/],
    ['not ours', '{"hello":"world"}\n{}\n{}\n', /format/],
    ['empty', '', /layout/]
  ] as const) {
    const r = await attempt(content)
    t.match(r.error, /unreachable/, `${name}: the start fails`)
    t.match(r.logs, reason, `${name}: the log says why`)
    t.notMatch(r.logs, /loaded the last-known-good/, `${name}: nothing was loaded`)
  }
})

t.test('a registry that accepts connections but never answers does not hold the start: the snapshot file serves meanwhile', async (t) => {
  const { registry, upstream, snapshotPath } = await writtenSnapshot(t)
  // A server that accepts TCP connections and says nothing: the PostgreSQL handshake never ends.
  const sockets = new Set<Socket>()
  const silent = createNetServer((s) => { sockets.add(s) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { for (const s of sockets) s.destroy(); silent.close() })
  const silentUrl = new URL(registry.url)
  silentUrl.port = String((silent.address() as { port: number }).port)
  // The file's fingerprint names the location (host, port, database): write one for the silent
  // server's location by copying the registry's file under that fingerprint.
  const { registryFingerprint } = await import('../src/registry/snapshot-file.js')
  await writeFile(snapshotPath, withHeader(await readFile(snapshotPath), (h) => { h.registry = registryFingerprint(silentUrl.toString(), './data/registry', 'tenant_proxy') }))
  // With a 10-minute connect timeout, only the fallback can let this start finish within the test's timeout.
  const proxy = await startTestProxy(t, testConfig(silentUrl.toString(), upstream.origin, { TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '600000' }))
  t.equal(proxy.state.stale, true)
  t.equal((await hit(proxy.url, 'acme.example')).tenant, 'acme', 'routes from the file while the registry hangs')
  t.match(await hit(proxy.url, 'unknown.example'), { status: 503, code: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE' })
})

/**
 * A TCP relay in front of the registry's PostgreSQL, so a test decides when the registry
 * answers: `pass` forwards, `hold` accepts and waits (what a registry slow to answer looks like;
 * `release` then forwards what waited), `reset` closes every connection at once (unreachable).
 */
async function registryRelay (t: Test, registryUrl: string): Promise<{ url: string, mode: 'pass' | 'hold' | 'reset', held (): number, release (): void }> {
  const target = new URL(registryUrl)
  const sockets = new Set<Socket>()
  const waiting: Socket[] = []
  const track = (s: Socket): Socket => {
    sockets.add(s)
    s.on('error', () => {})
    s.on('close', () => sockets.delete(s))
    return s
  }
  const forward = (client: Socket): void => {
    const server = track(connectNet(Number(target.port === '' ? 5432 : target.port), target.hostname))
    client.pipe(server).pipe(client)
    client.on('close', () => server.destroy())
    server.on('close', () => client.destroy())
  }
  const relay = {
    url: '',
    mode: 'pass' as 'pass' | 'hold' | 'reset',
    held: () => waiting.length,
    release () {
      relay.mode = 'pass'
      for (const s of waiting.splice(0)) forward(s)
    }
  }
  const listener = createNetServer((s) => {
    track(s)
    if (relay.mode === 'pass') forward(s)
    else if (relay.mode === 'hold') waiting.push(s) // unread: what the client sent stays buffered until release
    else s.destroy()
  })
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => listener.close(resolve))
  })
  const url = new URL(registryUrl)
  url.port = String((listener.address() as { port: number }).port)
  relay.url = url.toString()
  return relay
}

/** The registry component's log lines at info and above, as [level, message]. */
function registryLog (lines: readonly string[]): Array<[string, string]> {
  const names: Record<number, string> = { 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }
  return lines.join('').split('\n').filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { level: number, msg: string, component?: string })
    .filter((l) => l.component === 'registry' && l.level >= 30)
    .map((l) => [names[l.level] ?? String(l.level), l.msg])
}

t.test('start-up logs say what the proxy routes from: the registry, or the snapshot file and why', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const relay = await registryRelay(t, registry.url)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-startlog-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  let n = 0
  /** A config through the relay with a snapshot path of its own; a long connect timeout, so only the test decides when the registry answers. */
  const config = (snapshotPath: string): ReturnType<typeof testConfig> => testConfig(relay.url, upstream.origin, {
    TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '60000'
  })
  const freshPath = (): string => path.join(dir, `case-${++n}`, 'last-known-good.json')
  // The file a proxy writes for this registry location (the relay's), kept to be put back per case.
  const written = freshPath()
  const writer = await startTestProxy(t, config(written))
  await until(async () => await readFile(written).then(() => true, () => undefined), 'the snapshot file')
  await writer.stop()
  const good = await readFile(written)
  const withFile = async (): Promise<string> => {
    const p = freshPath()
    await mkdir(path.dirname(p), { recursive: true })
    await writeFile(p, good)
    return p
  }
  const loaded = 'registry loaded'
  const fileLoaded = 'loaded the last-known-good snapshot file'

  t.test('first start, no file, the registry answers at once: nothing about a file', async (t) => {
    const lines: string[] = []
    const proxy = await startTestProxy(t, config(freshPath()), lines)
    t.same(registryLog(lines), [['info', loaded]])
    t.equal(proxy.state.stale, false)
  })

  t.test('first start, no file, the registry slow to answer: no file is no error', async (t) => {
    relay.mode = 'hold'
    const lines: string[] = []
    const starting = startTestProxy(t, config(freshPath()), lines)
    // The fallback looked for the file (whatever it said about it); then the registry answers.
    await until(() => registryLog(lines).length > 0 ? true : undefined, 'the fallback to look for the file')
    t.ok(relay.held() > 0, 'the registry connection was held meanwhile')
    relay.release()
    const proxy = await starting
    t.same(registryLog(lines), [
      ['info', 'no last-known-good snapshot file yet (it is written after the first registry load); waiting for the registry'],
      ['info', loaded]
    ])
    t.equal(proxy.state.stale, false)
  })

  t.test('a file and a registry that answers at once: the file is not mentioned', async (t) => {
    const lines: string[] = []
    const proxy = await startTestProxy(t, config(await withFile()), lines)
    t.same(registryLog(lines), [['info', loaded]])
    t.equal(proxy.state.stale, false)
  })

  t.test('a file and a registry that answers after the fallback delay: routes from the file, then says the registry took over', async (t) => {
    relay.mode = 'hold'
    const lines: string[] = []
    const proxy = await startTestProxy(t, config(await withFile()), lines)
    t.equal(proxy.state.stale, true, 'started from the file')
    t.equal((await hit(proxy.url, 'acme.example')).tenant, 'acme')
    t.same(registryLog(lines), [['warn', fileLoaded], ['warn', 'registry slow to answer at start: routing known hosts from the last-known-good snapshot file meanwhile']])
    relay.release()
    await until(() => proxy.state.synced ? true : undefined, 'the registry to answer')
    await until(() => registryLog(lines).length === 4 ? true : undefined, 'the log line of the take-over')
    // Nothing changed since the file was written: the change log covers it, so no full load.
    t.same(registryLog(lines).slice(2), [['info', 'resumed from the snapshot file\'s version with the change log; no full load'], ['info', 'registry answered: routing from the registry, no longer from the snapshot file']])
    t.equal(proxy.state.stale, false)
  })

  t.test('the registry answers while the file is being read: the file is not used, nor said to be', async (t) => {
    // The file is a FIFO: the proxy's read of it waits until the test writes, which it does
    // only once the registry's index is loaded.
    const fifo = freshPath()
    await mkdir(path.dirname(fifo), { recursive: true })
    await execFileAsync('mkfifo', [fifo])
    relay.mode = 'hold'
    const lines: string[] = []
    const starting = startTestProxy(t, config(fifo), lines)
    // Opening a FIFO for writing returns once a reader has opened it: the proxy is reading now.
    const handle = await open(fifo, 'w')
    relay.release()
    await until(() => registryLog(lines).some(([, msg]) => msg === loaded) ? true : undefined, 'the registry load')
    await handle.writeFile(good)
    await handle.close()
    const proxy = await starting
    t.same(registryLog(lines), [['info', loaded]])
    t.equal(proxy.state.stale, false, 'the index is the registry\'s')
    await until(() => proxy.state.synced ? true : undefined, 'the feed to be synced')
  })

  t.test('a file and an unreachable registry: routes from the file and says why', async (t) => {
    relay.mode = 'reset'
    t.teardown(() => { relay.mode = 'pass' })
    const lines: string[] = []
    const proxy = await startTestProxy(t, config(await withFile()), lines)
    t.equal(proxy.state.stale, true)
    t.same(registryLog(lines), [['warn', fileLoaded], ['warn', 'registry unreachable at start: routing known hosts from the last-known-good snapshot file']])
  })

  t.test('no file and an unreachable registry: the start fails, and the missing file is no error of its own', async (t) => {
    relay.mode = 'reset'
    t.teardown(() => { relay.mode = 'pass' })
    const lines: string[] = []
    const logger = createLogger('info', { write: (l: string) => { lines.push(l) } })
    await t.rejects(startProxy(config(freshPath()), logger), { code: 'TENANT_PROXY_ERR_REGISTRY_UNREACHABLE' })
    t.same(registryLog(lines), [['info', 'no last-known-good snapshot file yet (it is written after the first registry load); waiting for the registry']])
  })
})
