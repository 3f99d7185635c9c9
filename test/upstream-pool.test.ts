/**
 * Upstream pools over real sockets: app processes killed and restarted under load, retries on
 * another address, ejection and recovery, active health checks, /up gated on the app's health,
 * the body size limit; plus the pool's pure rules (round-robin, ejection, DNS refresh).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { UpstreamPool } from '../src/proxy/upstream-pools.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { until } from './helpers/wait.js'

const APP = new URL('./helpers/upstream-process.mjs', import.meta.url).pathname

interface AppProcess { port: number, child: ChildProcess, kill (): Promise<void>, /** Requests to HOLD_PATH it holds. */ held: number }

/** Starts the app process (on `port`, or a free one) and waits for its ready line. */
async function startApp (t: Test, name: string, port = 0, env: Record<string, string> = {}): Promise<AppProcess> {
  return await (await spawnApp(t, name, port, env, false)).listen()
}

/**
 * Starts an app process that binds `port` only when told to: the replacement for one about to be
 * killed, so the port is served again right after the kill rather than after a process start-up,
 * which takes seconds on a loaded machine (longer than the ejection the test measures).
 */
async function standbyApp (t: Test, name: string, port: number, env: Record<string, string> = {}): Promise<{ listen (): Promise<AppProcess> }> {
  return await spawnApp(t, name, port, env, true)
}

async function spawnApp (t: Test, name: string, port: number, env: Record<string, string>, standby: boolean): Promise<{ listen (): Promise<AppProcess> }> {
  const child = spawn(process.execPath, [APP, name, String(port)], {
    stdio: [standby ? 'pipe' : 'ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env, STANDBY: standby ? '1' : '0' }
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(async () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); await exited })
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const nextLine = async (): Promise<string> => await new Promise<string>((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`app ${name} exited with ${String(code)}`))
    child.once('exit', onExit)
    lines.once('line', (line) => { child.off('exit', onExit); resolve(line) })
  })
  if (standby) await nextLine()
  return {
    listen: async () => {
      const ready = nextLine()
      if (standby) child.stdin?.write('listen\n')
      const line = await ready
      const app: AppProcess = { port: (JSON.parse(line) as { port: number }).port, child, kill: async () => { child.kill('SIGKILL'); await exited }, held: 0 }
      lines.on('line', (l) => { app.held = (JSON.parse(l) as { held: number }).held })
      return app
    }
  }
}

async function get (url: string, host: string, init: { method?: string, body?: string } = {}): Promise<{ status: number, name: string | null, bytes: number | null, code: string | null }> {
  const res = await request(url, { method: (init.method ?? 'GET') as 'GET', headers: { host }, body: init.body })
  const body = await res.body.json() as { name?: string, bytes?: number, error?: { code: string } }
  return { status: res.statusCode, name: body.name ?? null, bytes: body.bytes ?? null, code: body.error?.code ?? null }
}

async function metric (opsUrl: string, line: RegExp): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const m = text.split('\n').find((l) => line.test(l))
  return Number(m?.split(' ').pop())
}

t.test('an app process killed and restarted under load: zero failed GETs, ejected, then back in rotation', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const a = await startApp(t, 'a')
  let b = await startApp(t, 'b')
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${a.port},http://127.0.0.1:${b.port}`, {
    TENANT_PROXY_UPSTREAM_EJECT_MIN_MS: '300',
    TENANT_PROXY_UPSTREAM_EJECT_MAX_MS: '300'
  }))
  const seen = { a: 0, b: 0 }
  let failures = 0
  let sent = 0
  const loop = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const r = await get(proxy.url, 'acme.example')
      sent++
      if (r.status !== 200) failures++
      else seen[r.name as 'a' | 'b']++
    }
  }
  await Promise.all([loop(50), loop(50)])
  t.ok(seen.a > 0 && seen.b > 0, `both addresses served (${JSON.stringify(seen)})`)

  // Kill b mid-stream (4 concurrent clients keep going), then restart it on the same port.
  const during = Promise.all([loop(150), loop(150), loop(150), loop(150)])
  await until(() => sent >= 150 ? true : undefined, 'load before the kill')
  await b.kill()
  const afterKill = sent
  await until(() => sent >= afterKill + 200 ? true : undefined, 'load while b is down')
  const bSeenWhileDown = seen.b
  b = await startApp(t, 'b', b.port)
  await during
  t.equal(failures, 0, `no GET failed (${sent} sent)`)
  t.ok(await metric(proxy.opsUrl, /^tenant_proxy_upstream_retries_total /) > 0, 'requests were retried on the other address')
  t.ok(await metric(proxy.opsUrl, /^tenant_proxy_upstream_ejections_total /) >= 1, 'b was ejected')
  // After the ejection period b gets traffic again.
  await until(async () => (await get(proxy.url, 'acme.example')).name === 'b' ? true : undefined, 'b back in rotation')
  t.ok(seen.b >= bSeenWhileDown, 'b served before the kill')
})

interface PoolAddressView { origin: string, usable: boolean, failures: number, ejections: number, ejectionMs: number, ejectedUntil: string | null }

async function poolAddress (opsUrl: string, origin: string): Promise<PoolAddressView | undefined> {
  const ready = await (await request(`${opsUrl}/ready`)).body.json() as { pools: Array<{ addresses: PoolAddressView[] }> }
  return ready.pools.flatMap((p) => p.addresses).find((a) => a.origin === origin)
}

t.test('one kill with 16 requests in flight is one incident: ejected once, the restarted address serves again within ejectMinMs + one probe', async (t) => {
  const ejectMinMs = 1000
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const a = await startApp(t, 'a')
  let b = await startApp(t, 'b', 0, { HOLD_PATH: '/hold' })
  const bOrigin = `http://127.0.0.1:${b.port}`
  const logLines: string[] = []
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${a.port},${bOrigin}`, {
    TENANT_PROXY_UPSTREAM_EJECT_AFTER_FAILURES: '2',
    TENANT_PROXY_UPSTREAM_EJECT_MIN_MS: String(ejectMinMs),
    TENANT_PROXY_UPSTREAM_EJECT_MAX_MS: '30000'
  }), logLines)

  // 32 requests round-robin: a answers its 16 at once, b holds its 16.
  const held = Array.from({ length: 32 }, async () => await get(`${proxy.url}/hold`, 'acme.example'))
  await until(() => b.held === 16 ? true : undefined, '16 requests in flight on b')

  // Six clients keep sending while b dies and comes back; each request is bounded in count and time.
  let killedAt = 0
  let backAfterMs: number | null = null
  let failures = 0
  let stop = false
  const deadline = performance.now() + ejectMinMs + 10_000
  const loop = async (): Promise<void> => {
    for (let i = 0; i < 20_000 && !stop && performance.now() < deadline; i++) {
      const r = await get(proxy.url, 'acme.example')
      if (r.status !== 200) failures++
      // The replacement answers as 'b2': an answer of the killed process can land after the kill.
      else if (r.name === 'b2' && backAfterMs === null) backAfterMs = performance.now() - killedAt
    }
  }
  const load = Promise.all(Array.from({ length: 6 }, loop))

  const replacement = await standbyApp(t, 'b2', b.port, { HOLD_PATH: '/hold' })
  killedAt = performance.now()
  await b.kill()
  const answers = await Promise.all(held)
  t.same([...new Set(answers.map((r) => `${r.status} ${r.name ?? ''}`))], ['200 a'], 'the 16 held requests were retried on a')
  // The port is served again once the proxy has ejected b: from then on only the end of the
  // ejection can bring b back, which is what the test times.
  const during = await until(async () => { const v = await poolAddress(proxy.opsUrl, bOrigin); return v?.usable === false ? v : undefined }, 'b ejected')
  t.match(during, { usable: false, ejections: 1, ejectionMs: ejectMinMs }, 'b ejected once, for ejectMinMs (/ready)')
  b = await replacement.listen()

  try {
    await until(() => backAfterMs !== null ? true : undefined, 'b serving again', ejectMinMs + 5_000)
  } finally {
    stop = true
    await load
  }
  t.ok((backAfterMs ?? 0) >= ejectMinMs, 'b got no request while ejected')
  t.ok((backAfterMs ?? Infinity) <= ejectMinMs + 1_000, `b served again ${Math.round(backAfterMs ?? -1)} ms after the kill (ejectMinMs ${ejectMinMs} + one probe)`)
  t.equal(failures, 0, 'no request of the six clients failed')
  t.equal(await metric(proxy.opsUrl, /^tenant_proxy_upstream_ejections_total /), 1, 'tenant_proxy_upstream_ejections_total counts the incident once')
  const ejected = logLines.map((l) => JSON.parse(l) as { msg: string, address?: string, forMs?: number }).filter((l) => l.msg.startsWith('upstream address ejected'))
  t.same(ejected.map((l) => [l.address, l.forMs]), [[bOrigin, ejectMinMs]], 'one ejection logged')
  t.match(await poolAddress(proxy.opsUrl, bOrigin), { usable: true, failures: 0, ejections: 0, ejectedUntil: null }, 'b healthy again')
})

t.test('connection refused is retried on another address for any method, with the body intact', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const live = await startApp(t, 'live')
  // Port 1 (tcpmux): nothing listens there, and no test server can take it (a freed ephemeral port could be).
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:1,http://127.0.0.1:${live.port}`))
  for (let i = 0; i < 6; i++) {
    const r = await get(proxy.url, 'acme.example', { method: 'POST', body: 'x'.repeat(1000 + i) })
    t.match(r, { status: 200, name: 'live', bytes: 1000 + i }, `POST ${i}`)
  }
  // Hidden from the clients, not from the operator: each refused attempt counts, by kind.
  const retries = await metric(proxy.opsUrl, /^tenant_proxy_upstream_retries_total /)
  t.ok(retries >= 1, `retried ${retries} times`)
  t.equal(await metric(proxy.opsUrl, /^tenant_proxy_upstream_attempt_errors_total\{kind="connect"\} /), retries, 'every retried attempt counted as a connect attempt error')
  t.equal(await metric(proxy.opsUrl, /^tenant_proxy_upstream_errors_total\{kind="connect"\} /), 0, 'no request failed')
})

t.test('a permanently dead address out of two is reported unusable from its first ejection on, with or without traffic', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const live = await startApp(t, 'live')
  const dead = 'http://127.0.0.1:1'
  const proxy = await startTestProxy(t, testConfig(registry.url, `${dead},http://127.0.0.1:${live.port}`, {
    TENANT_PROXY_UPSTREAM_EJECT_AFTER_FAILURES: '2',
    TENANT_PROXY_UPSTREAM_EJECT_MIN_MS: '100',
    TENANT_PROXY_UPSTREAM_EJECT_MAX_MS: '400'
  }))
  const gauge = async (): Promise<{ usable: number, unusable: number, ejections: number }> => {
    const text = await (await request(`${proxy.opsUrl}/metrics`)).body.text()
    const value = (re: RegExp): number => Number(text.split('\n').find((l) => re.test(l))?.split(' ').pop())
    return {
      usable: value(/^tenant_proxy_upstream_addresses\{pool="default",state="usable"\} /),
      unusable: value(/^tenant_proxy_upstream_addresses\{pool="default",state="unusable"\} /),
      ejections: value(/^tenant_proxy_upstream_ejections_total /)
    }
  }
  const wrong: string[] = []
  let scrapes = 0
  const check = async (phase: string): Promise<number> => {
    const g = await gauge()
    scrapes++
    if (g.usable !== 1 || g.unusable !== 1) wrong.push(`${phase}: ${JSON.stringify(g)}`)
    return g.ejections
  }

  // Traffic until the dead address is ejected.
  for (let i = 0; i < 10 && (await gauge()).ejections === 0; i++) t.equal((await get(proxy.url, 'acme.example')).status, 200, `request ${i} answered`)
  t.equal((await gauge()).ejections, 1, 'ejected')
  // No traffic for several ejection periods (100, 200, 400 ms): its ejections end, it is never
  // reported usable, and the proxy's own probes keep finding it dead.
  const idleUntil = performance.now() + 1_500
  let ejections = 1
  for (let i = 0; i < 3_000 && performance.now() < idleUntil; i++) ejections = await check('idle')
  t.ok(ejections >= 3, `re-ejected by its probes without traffic (${ejections} ejections)`)
  // Traffic again across more periods: every request answered, the gauge never flips.
  const busyUntil = performance.now() + 1_500
  let failed = 0
  for (let i = 0; i < 3_000 && performance.now() < busyUntil; i++) {
    if ((await get(proxy.url, 'acme.example')).status !== 200) failed++
    ejections = await check('traffic')
  }
  t.equal(failed, 0, 'no request failed')
  t.same(wrong.slice(0, 3), [], `the dead address was unusable in each of ${scrapes} scrapes (${wrong.length} were wrong)`)
  t.match(await poolAddress(proxy.opsUrl, dead), { usable: false }, '/ready agrees')
  t.ok(await metric(proxy.opsUrl, /^tenant_proxy_upstream_attempt_errors_total\{kind="connect"\} /) >= 2, 'its refused attempts are counted')
})

t.test('every address down: 502 with the connect error code', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const proxy = await startTestProxy(t, testConfig(registry.url, 'http://127.0.0.1:1,http://127.0.0.1:2'))
  t.match(await get(proxy.url, 'acme.example'), { status: 502, code: 'TENANT_PROXY_ERR_UPSTREAM_CONNECT' })
})

t.test('active health checks take a failing address out of rotation; healthMode upstream gates /up on the app', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-health-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const sick = path.join(dir, 'b-unhealthy')
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const a = await startApp(t, 'a', 0, { UNHEALTHY_FILE: path.join(dir, 'a-unhealthy') })
  const b = await startApp(t, 'b', 0, { UNHEALTHY_FILE: sick })
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${a.port},http://127.0.0.1:${b.port}`, {
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_PATH: '/up',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_INTERVAL_MS: '100',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_TIMEOUT_MS: '90',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_CACHE_MS: '0',
    TENANT_PROXY_TRAFFIC_HEALTH_MODE: 'upstream'
  }))
  await writeFile(sick, '')
  await until(async () => await metric(proxy.opsUrl, /^tenant_proxy_upstream_addresses\{pool="default",state="unusable"\}/) === 1 ? true : undefined, 'b out of rotation')
  for (let i = 0; i < 10; i++) t.equal((await get(proxy.url, 'acme.example')).name, 'a', 'only a serves while b fails its check')
  await rm(sick)
  await until(async () => (await get(proxy.url, 'acme.example')).name === 'b' ? true : undefined, 'b back after passing its check')

  t.equal((await request(`${proxy.url}/up`)).statusCode, 200, '/up 200 while the app is healthy')
  await writeFile(path.join(dir, 'a-unhealthy'), '')
  await writeFile(sick, '')
  const down = await until(async () => { const r = await request(`${proxy.url}/up`); const body = await r.body.json() as { status: string }; return r.statusCode === 503 ? body : undefined }, '/up 503 when the app is unhealthy')
  t.same(down, { status: 'upstream_unhealthy' })
})

t.test('the /up answer from the app is cached: checks do not multiply', async (t) => {
  const registry = await testRegistry(t)
  let hits = 0
  const { createServer } = await import('node:http')
  const app = createServer((req, res) => { if (req.url === '/health') hits++; res.end('ok') })
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { app.closeAllConnections(); app.close() })
  const port = (app.address() as { port: number }).port
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${port}`, {
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_PATH: '/health',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_INTERVAL_MS: '600000',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_TIMEOUT_MS: '1000',
    TENANT_PROXY_UPSTREAM_HEALTH_CHECK_CACHE_MS: '600000',
    TENANT_PROXY_TRAFFIC_HEALTH_MODE: 'upstream'
  }))
  await until(() => hits >= 1 ? true : undefined, 'the first active check')
  const before = hits
  const answers = await Promise.all(Array.from({ length: 20 }, async () => (await request(`${proxy.url}/up`)).statusCode))
  t.same([...new Set(answers)], [200])
  t.equal(hits - before, 1, '20 concurrent /up checks, one request to the app')
})

t.test('bodies over upstream.maxBodyBytes get 413, by Content-Length or while streaming', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const app = await startApp(t, 'app')
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${app.port}`, { TENANT_PROXY_UPSTREAM_MAX_BODY_BYTES: '1000' }))
  t.match(await get(proxy.url, 'acme.example', { method: 'POST', body: 'x'.repeat(1000) }), { status: 200, bytes: 1000 }, 'at the limit passes')
  t.match(await get(proxy.url, 'acme.example', { method: 'POST', body: 'x'.repeat(1001) }), { status: 413, code: 'TENANT_PROXY_ERR_BODY_TOO_LARGE' }, 'declared over the limit')
  // A chunked body (no Content-Length): cut off while streaming.
  async function * chunks (n: number): AsyncGenerator<Buffer> { for (let i = 0; i < n; i++) yield Buffer.alloc(400, 'y') }
  const small = await request(proxy.url, { method: 'POST', headers: { host: 'acme.example' }, body: Readable.from(chunks(2)) })
  t.match(await small.body.json(), { bytes: 800 }, 'chunked under the limit passes')
  const big = await request(proxy.url, { method: 'POST', headers: { host: 'acme.example' }, body: Readable.from(chunks(5)) })
  t.equal(big.statusCode, 413, 'chunked over the limit')
  t.match(await big.body.json(), { error: { code: 'TENANT_PROXY_ERR_BODY_TOO_LARGE' } })
})

t.test('pool rules: round-robin, one ejection per incident, doubling while it keeps failing, fail-open, DNS refresh keeps state', async (t) => {
  let now = 1_000_000
  const ejected: string[] = []
  let answer = [{ address: '10.0.0.1', family: 4 }, { address: '10.0.0.2', family: 4 }]
  const pool = new UpstreamPool(null, ['http://app.internal:3000', 'http://127.0.0.1:4000'], {
    dnsRefreshMs: 0,
    ejectAfterFailures: 2,
    ejectMinMs: 100,
    ejectMaxMs: 350,
    now: () => now,
    lookup: async () => answer,
    onEject: (_p, a, forMs) => ejected.push(`${a.origin} ${forMs}`)
  })
  t.same(pool.addresses.map((a) => a.origin), ['http://app.internal:3000', 'http://127.0.0.1:4000'], 'before resolution: the names as configured')
  await pool.refresh()
  t.same(pool.addresses.map((a) => a.origin), ['http://10.0.0.1:3000', 'http://10.0.0.2:3000', 'http://127.0.0.1:4000'], 'every resolved address is used; IP literals are not resolved')
  t.same([1, 2, 3, 4].map(() => pool.pick()?.origin), ['http://10.0.0.1:3000', 'http://10.0.0.2:3000', 'http://127.0.0.1:4000', 'http://10.0.0.1:3000'], 'round-robin')

  const [first] = pool.addresses
  if (first === undefined) throw new Error('no address')
  // 16 attempts in flight when the app dies: all begun in the same generation.
  const inFlight = first.generation
  pool.failed(first, inFlight)
  t.ok(first.usable(now), 'one failure does not eject')
  pool.failed(first, inFlight)
  t.notOk(first.inRotation(now), 'two do')
  for (let i = 0; i < 14; i++) pool.failed(first, inFlight)
  t.same(ejected, ['http://10.0.0.1:3000 100'], 'the other 14 failures of the same incident do not eject it again')
  t.match(first, { ejections: 1, ejectionMs: 100, failures: 0, failing: true })
  for (let i = 0; i < 6; i++) t.not(pool.pick(), first, 'an ejected address gets no traffic')
  pool.succeeded(first, inFlight)
  t.notOk(first.inRotation(now), 'an answer to an attempt begun before the ejection does not lift it')

  now += 100
  t.ok(first.inRotation(now), 'back in rotation after 100 ms: the next request probes it')
  t.notOk(first.usable(now), 'but not usable (it has not answered since)')
  const probe = first.generation
  pool.failed(first, probe)
  t.same(ejected.at(-1), 'http://10.0.0.1:3000 200', 'the probe failing is a new incident: ejected again at once, for twice as long')
  pool.failed(first, probe)
  t.equal(ejected.length, 2, 'other requests of that probe round do not count again')
  now += 199
  t.notOk(first.inRotation(now), 'still out at 199 ms')
  now += 1
  pool.failed(first)
  now += 350
  pool.failed(first)
  t.same(ejected.map((e) => e.split(' ')[1]), ['100', '200', '350', '350'], 'doubling up to the ceiling')

  now += 350
  pool.succeeded(first, first.generation, false)
  t.ok(first.usable(now), 'accepting a connection (the background probe) ends failing')
  t.equal(first.ejections, 4, '…but keeps the doubling until it answers')
  const beforeAnswer = first.generation
  pool.succeeded(first)
  t.match(first, { ejections: 0, ejectionMs: 0, failures: 0, failing: false }, 'one answer clears it')
  pool.failed(first, beforeAnswer)
  t.equal(first.failures, 0, 'a failure of an attempt begun before the recovery does not count')
  pool.failed(first)
  pool.succeeded(first)
  pool.failed(first)
  t.ok(first.usable(now), 'failures must be consecutive')

  const fresh = new UpstreamPool(null, ['http://127.0.0.1:1', 'http://127.0.0.1:2'], { dnsRefreshMs: 0, ejectAfterFailures: 1, ejectMinMs: 1000, ejectMaxMs: 1000, now: () => now })
  const [x, y] = fresh.addresses
  if (x === undefined || y === undefined) throw new Error('no address')
  fresh.failed(x)
  now += 10
  fresh.failed(y)
  t.equal(fresh.pick(), x, 'all ejected: the one whose ejection ends first (fail open)')
  t.equal(fresh.pick(new Set([x, y])), undefined, 'nothing left to try')

  // DNS changes: a new container appears, an old one goes; the survivor keeps its state.
  const survivor = pool.addresses.find((a) => a.origin === 'http://10.0.0.2:3000')
  if (survivor === undefined) throw new Error('no survivor')
  pool.failed(survivor)
  answer = [{ address: '10.0.0.2', family: 4 }, { address: 'fd00::3', family: 6 }]
  await pool.refresh()
  t.same(pool.addresses.map((a) => a.origin), ['http://10.0.0.2:3000', 'http://[fd00::3]:3000', 'http://127.0.0.1:4000'])
  t.equal(pool.addresses[0], survivor, 'same object, same failure count')
  answer = []
  await pool.refresh()
  t.equal(pool.addresses.length, 3, 'an empty answer keeps the previous addresses')
})

t.test('a connection that breaks after the request was sent: GET is retried elsewhere, POST is not (the app may have acted)', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const { createServer } = await import('node:http')
  const seen = { breaker: [] as string[], good: [] as string[] }
  // Reads the whole request, then drops the connection without answering.
  const breaker = createServer((req) => { seen.breaker.push(req.method ?? ''); req.resume(); req.on('end', () => req.socket.destroy()) })
  const good = createServer((req, res) => { seen.good.push(req.method ?? ''); req.resume(); req.on('end', () => res.end(JSON.stringify({ name: 'good' }))) })
  const listen = async (s: typeof good): Promise<number> => await new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)))
  const [bp, gp] = [await listen(breaker), await listen(good)]
  t.teardown(() => { for (const s of [breaker, good]) { s.closeAllConnections(); s.close() } })
  // Ejection off the table (a high threshold), so every request's first attempt alternates.
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${bp},http://127.0.0.1:${gp}`, { TENANT_PROXY_UPSTREAM_EJECT_AFTER_FAILURES: '1000' }))
  const results: Array<{ method: string, status: number }> = []
  for (const method of ['GET', 'GET', 'POST', 'POST']) {
    const r = await get(proxy.url, 'acme.example', method === 'POST' ? { method, body: 'pay once' } : {})
    results.push({ method, status: r.status })
  }
  t.same(results.filter((r) => r.method === 'GET').map((r) => r.status), [200, 200], 'GETs always end at the healthy address')
  const posts = results.filter((r) => r.method === 'POST').map((r) => r.status)
  t.equal(posts.filter((s) => s === 502).length, 1, 'the POST that hit the breaking address got 502, not a replay')
  t.equal(seen.breaker.filter((m) => m === 'POST').length + seen.good.filter((m) => m === 'POST').length, 2, 'each POST reached an app exactly once')
})
