// Benchmark of start-up, memory and the live registry. Reports, against their targets: the time
// from spawn to the first /up 200 of `serve` with a one-tenant registry, with BENCH_TENANTS
// tenants from the last-known-good snapshot file and from the registry; resident memory after
// that boot and after 10,000 requests; a 1,000,000-tenant boot; and change propagation (commit →
// first response showing the change) across 1 and 5 proxies. Writes docs/registry-benchmarks.md
// (full runs only) and prints the same table. Not run in CI.
//
//   npm run bench:registry              # everything, defaults below (builds dist/ first)
//   BENCH_DATABASE_URL=postgres://…  BENCH_TENANTS=100000 BENCH_BIG_TENANTS=1000000 BENCH_CHANGES=1000 BENCH_PROXIES=5 npm run bench:registry
//   BENCH_TENANTS=5000 BENCH_BIG_TENANTS=0 BENCH_CHANGES=100 npm run bench:registry   # quick run
//   BENCH_ONLY=tiny npm run bench:registry       # one figure: serve with a one-tenant registry → /up
//   BENCH_ONLY=file npm run bench:registry       # one figure: 100,000 tenants from the snapshot file → /up
//   BENCH_ONLY=registry npm run bench:registry   # boot from the registry → /up, and memory (at /up, after 10,000 requests)
//   BENCH_ONLY=tiny,file,registry npm run bench:registry   # the start-up and memory figures only
//   BENCH_BOOTS=9 …                      # boots per figure (median reported; default 5)
//   BENCH_NODE=/path/to/node …           # the Node binary that runs the proxies (default: the one running this)
//   BENCH_PROFILE_DIR=/tmp/prof npm run bench:registry   # also writes a CPU profile per proxy process
//
// Parts: tiny, registry, file, propagation, big. A run with BENCH_ONLY prints its table but leaves
// docs/registry-benchmarks.md alone (that file holds full runs).
//
// Everything is on 127.0.0.1; every loop is bounded in count and time; the throwaway databases,
// the lockout role and the temp directory are removed and every child is killed, also on error.
import { execFileSync, spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import pg from 'pg'
import { Client, Pool } from 'undici'
import { freePort } from './free-port.js'

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const TENANTS = Number(process.env.BENCH_TENANTS ?? 100_000)
const BIG_TENANTS = Number(process.env.BENCH_BIG_TENANTS ?? 1_000_000)
const CHANGES = Number(process.env.BENCH_CHANGES ?? 1_000)
const PROXIES = Number(process.env.BENCH_PROXIES ?? 5)
const CLI_CHANGES = 20
const BOOTS = Number(process.env.BENCH_BOOTS ?? 5)
const NODE = process.env.BENCH_NODE ?? process.execPath
const PARTS_ALL = ['tiny', 'registry', 'file', 'propagation', 'big']
const PARTS = new Set((process.env.BENCH_ONLY ?? PARTS_ALL.join(',')).split(',').map((p) => p.trim()).filter((p) => p !== ''))
const FULL_RUN = process.env.BENCH_ONLY === undefined
const HOSTS = Math.min(1_000, TENANTS) // distinct tenant hosts requested / changed
const MEMORY_REQUESTS = 10_000
const UP_POLL_MS = 10
const CHANGE_BUDGET_MS = 2_000 // per change: give up polling after this long
const MAX_POLLS = 100_000 // per (change, proxy): a hard bound besides the time budget
const COMMAND = 'npm run bench:registry'

for (const [name, value, min] of [['BENCH_TENANTS', TENANTS, 1], ['BENCH_BIG_TENANTS', BIG_TENANTS, 0], ['BENCH_CHANGES', CHANGES, 1], ['BENCH_PROXIES', PROXIES, 1], ['BENCH_BOOTS', BOOTS, 1]]) {
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer ≥ ${min}`)
}
for (const part of PARTS) if (!PARTS_ALL.includes(part)) throw new Error(`BENCH_ONLY: unknown part ${part}; parts: ${PARTS_ALL.join(', ')}`)

// ---- cleanup: children, databases, role, temp dir -------------------------------------------
const children = new Set()
const databases = []
const roles = []
const tmp = mkdtempSync(path.join(tmpdir(), 'tp-bench-registry-'))
let admin = null
let cleaned = false
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
  rmSync(tmp, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.error(`\n${signal}: cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

async function cleanup () {
  if (cleaned) return
  cleaned = true
  await Promise.all([...children].map((c) => stopChild(c)))
  if (admin !== null) {
    for (const db of databases) await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch((err) => console.error(`cannot drop ${db}: ${err.message}`))
    for (const role of roles) await admin.query(`DROP ROLE IF EXISTS ${role}`).catch((err) => console.error(`cannot drop role ${role}: ${err.message}`))
    await admin.end().catch(() => undefined)
  }
  rmSync(tmp, { recursive: true, force: true })
}

/** SIGTERM (drain delay is 0, so the proxy exits at once and writes its CPU profile), SIGKILL after 10 s. */
async function stopChild (child) {
  if (child.exitCode !== null || child.signalCode !== null) { children.delete(child); return }
  await new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve() }, 10_000)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    child.kill('SIGTERM')
  })
  children.delete(child)
}

// ---- main ----------------------------------------------------------------------------------
const results = {}
const loadAtStart = loadavg()
const codeRevision = revision() // what `npm run build` just built dist/ from
admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
try {
  await run()
  report()
} catch (err) {
  console.error(err)
  process.exitCode = 1
} finally {
  await cleanup()
}

async function run () {
  const upstream = await startUpstream()
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })
  const common = { TENANT_PROXY_UPSTREAM_URLS: upstream, TENANT_PROXY_DESCRIPTOR_KEYS: key }

  // 0. serve with a one-tenant registry: what start-up costs by itself (loading the code, the
  //    registry round trips, the listeners).
  if (PARTS.has('tiny')) {
    const tinyUrl = await createDatabase(`tp_bench_tiny_${process.pid}`)
    await seed(tinyUrl, 1)
    const tiny = []
    for (let i = 0; i < BOOTS; i++) {
      const p = await startProxy({ ...common, REGISTRY_DATABASE_URL: tinyUrl, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '' }, `tiny boot ${i + 1}`)
      tiny.push(p.bootMs)
      log(`boot with a one-tenant registry ${i + 1}/${BOOTS}: ${p.bootMs.toFixed(0)} ms to /up 200, VmRSS ${mb(rss(p.child.pid).rss)}`)
      await stopChild(p.child)
    }
    results.tiny = { median: median(tiny), all: tiny, load: loadavg()[0] }
  }
  if (!PARTS.has('registry') && !PARTS.has('file') && !PARTS.has('propagation') && !PARTS.has('big')) return

  const dbUrl = await createDatabase(`tp_bench_reg_${process.pid}`)
  await seed(dbUrl, TENANTS)
  const base = { ...common, REGISTRY_DATABASE_URL: dbUrl }
  const snapshotPath = path.join(tmp, 'last-known-good.json')

  // 1 + 3. Boots from the registry; memory on the first.
  if (PARTS.has('registry')) {
    const boots = []
    for (let i = 0; i < BOOTS; i++) {
      const p = await startProxy({ ...base, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath }, `boot ${i + 1}`)
      boots.push(p.bootMs)
      log(`boot from registry ${i + 1}/${BOOTS}: ${p.bootMs.toFixed(0)} ms to /up 200, VmRSS ${mb(rss(p.child.pid).rss)}`)
      if (i === 0) {
        const atUp = rss(p.child.pid).rss
        const fileMs = await waitForStableFile(snapshotPath, 60_000)
        log(`snapshot file written (${mb(statSync(snapshotPath).size)}) ${fileMs.toFixed(0)} ms after /up`)
        await sleep(500)
        const settled = rss(p.child.pid).rss
        const load = await requests(p.trafficPort, MEMORY_REQUESTS, 32)
        const after = rss(p.child.pid)
        results.memory = { atUp, settled, afterRequests: after.rss, hwm: after.hwm, load }
        log(`memory: at /up ${mb(atUp)}, settled ${mb(settled)}, after ${MEMORY_REQUESTS} requests ${mb(after.rss)} (peak VmHWM ${mb(after.hwm)}); statuses ${JSON.stringify(load.statuses)} in ${load.ms.toFixed(0)} ms`)
      }
      await stopChild(p.child)
    }
    results.boot = { median: median(boots), all: boots, load: loadavg()[0] }
  }

  // 2. Boots from the snapshot file, the registry refusing the login.
  if (PARTS.has('file')) {
    if (!existsSync(snapshotPath)) {
      // No registry boot wrote it (BENCH_ONLY=file): one proxy writes it, not measured.
      const p = await startProxy({ ...base, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath }, 'file writer')
      await waitForStableFile(snapshotPath, 60_000)
      await stopChild(p.child)
    }
    const role = `tp_bench_lockout_${process.pid}`
    await admin.query(`CREATE ROLE ${role} NOLOGIN`)
    roles.push(role)
    const lockUrl = new URL(dbUrl)
    lockUrl.username = role
    const fileBoots = []
    const fileRss = []
    const readies = []
    for (let i = 0; i < BOOTS; i++) {
      const p = await startProxy({ ...base, REGISTRY_DATABASE_URL: lockUrl.toString(), TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: snapshotPath, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '1000' }, `file boot ${i + 1}`)
      fileBoots.push(p.bootMs)
      fileRss.push(rss(p.child.pid).rss)
      const ready = await getJson(p.opsPort, '/ready')
      const routed = await getStatus(p.trafficPort, '/', `t${TENANTS}.bench.example`)
      readies.push({ status: ready.status, stale: ready.body?.registry?.stale === true, synced: ready.body?.registry?.synced, tenants: ready.body?.registry?.tenants, routed })
      log(`boot from snapshot file ${i + 1}/${BOOTS}: ${p.bootMs.toFixed(0)} ms to /up 200, VmRSS ${mb(fileRss.at(-1))}; /ready ${ready.status} registry ${JSON.stringify(ready.body?.registry)}; known host → ${routed}`)
      await stopChild(p.child)
    }
    results.fileBoot = { median: median(fileBoots), all: fileBoots, rss: median(fileRss), stale: readies.every((r) => r.stale), routed: readies.every((r) => r.routed === 200), readies, load: loadavg()[0] }
  }

  // 5. Change propagation with 1, then PROXIES proxies on the same registry.
  if (PARTS.has('propagation')) {
    const writer = new pg.Client({ connectionString: dbUrl })
    await writer.connect()
    const proxies = []
    try {
      results.propagation = []
      for (const count of [...new Set([1, PROXIES])]) {
        while (proxies.length < count) {
          const p = await startProxy({ ...base, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: path.join(tmp, `lkg-${proxies.length}.json`) }, `proxy ${proxies.length + 1}`)
          p.http = new Client(`http://127.0.0.1:${p.trafficPort}`, { pipelining: 1, keepAliveTimeout: 60_000 })
          proxies.push(p)
        }
        // Warm-up: connections, JIT and each proxy's descriptor cache for some of the hosts.
        for (const p of proxies) for (let j = 0; j < 200; j++) await probe(p.http, host(slotTenant(j % HOSTS)))
        const r = await propagate(writer, proxies)
        results.propagation.push({ proxies: count, ...r })
        log(`propagation, ${count} prox${count === 1 ? 'y' : 'ies'}: ${r.samples.length} samples, ${r.timeouts} timeouts, p50 ${ms(pct(r.samples, 50))} p95 ${ms(pct(r.samples, 95))} p99 ${ms(pct(r.samples, 99))} max ${ms(pct(r.samples, 100))}, mean ${r.meanPolls.toFixed(1)} polls per sample`)
      }
      const r = await propagateCli(dbUrl, proxies)
      results.cli = r
      log(`propagation via the CLI, ${proxies.length} prox${proxies.length === 1 ? 'y' : 'ies'}: ${r.samples.length} samples, ${r.timeouts} timeouts, p50 ${ms(pct(r.samples, 50))} max ${ms(pct(r.samples, 100))} (CLI runs spawn→exit median ${ms(median(r.cliMs))})`)
    } finally {
      await writer.end().catch(() => undefined)
      for (const p of proxies) await p.http.close().catch(() => undefined)
      await Promise.all(proxies.map((p) => stopChild(p.child)))
    }
  }

  // 4. A big registry: one boot.
  if (PARTS.has('big') && BIG_TENANTS > 0) {
    const bigName = `tp_bench_big_${process.pid}`
    const bigUrl = await createDatabase(bigName)
    const seedMs = await seed(bigUrl, BIG_TENANTS)
    const bigSnapshot = path.join(tmp, 'big.json')
    const p = await startProxy({ ...base, REGISTRY_DATABASE_URL: bigUrl, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: bigSnapshot }, 'big boot', 180_000)
    const atUp = rss(p.child.pid).rss
    const routed = await getStatus(p.trafficPort, '/', `t${BIG_TENANTS}.bench.example`)
    let fileMs = null
    try { fileMs = await waitForStableFile(bigSnapshot, 120_000) } catch (err) { log(`big: ${err.message}`) }
    await sleep(500)
    const after = rss(p.child.pid)
    results.big = { bootMs: p.bootMs, seedMs, atUp, settled: after.rss, hwm: after.hwm, routed, fileMs, fileBytes: existsSync(bigSnapshot) ? statSync(bigSnapshot).size : null }
    log(`boot from registry with ${BIG_TENANTS} tenants: ${p.bootMs.toFixed(0)} ms to /up 200; VmRSS at /up ${mb(atUp)}, after the snapshot file ${mb(after.rss)} (peak ${mb(after.hwm)}); file ${fileMs === null ? 'not written' : `written ${fileMs.toFixed(0)} ms after /up`}; t${BIG_TENANTS} → ${routed}`)
    await stopChild(p.child)
    await admin.query(`DROP DATABASE IF EXISTS ${bigName} WITH (FORCE)`)
    databases.splice(databases.indexOf(bigName), 1)
  }
}

// ---- registry ------------------------------------------------------------------------------
async function createDatabase (name) {
  await admin.query(`CREATE DATABASE ${name}`)
  databases.push(name)
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  return url.toString()
}

/** Migrates with the CLI, then one INSERT … SELECT generate_series per table, in one transaction. */
async function seed (url, n) {
  const migrate = spawnChild(process.execPath, ['dist/src/main.js', 'migrate'], { REGISTRY_DATABASE_URL: url })
  const code = await exited(migrate, 60_000)
  if (code !== 0) throw new Error(`migrate exited with ${code}`)
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  const t0 = performance.now()
  try {
    await c.query('BEGIN')
    await c.query(`INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 't' || i, 'db_' || i FROM generate_series(1, $1) AS i`, [n])
    await c.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.bench.example', id, 'primary' FROM tenant_proxy.tenants`)
    await c.query('COMMIT')
    await c.query('ANALYZE tenant_proxy.tenants, tenant_proxy.domains, tenant_proxy.changes')
  } finally {
    await c.end()
  }
  const seedMs = performance.now() - t0
  log(`seeded ${n} tenants in ${(seedMs / 1000).toFixed(1)} s`)
  return seedMs
}

// ---- change propagation --------------------------------------------------------------------
/** Tenant number of host slot `slot` (HOSTS slots spread over the registry); `half` shifts half a slot. */
function slotTenant (slot, half = false) {
  return 1 + Math.floor((slot + (half ? 0.5 : 0)) * TENANTS / HOSTS)
}
function host (i) { return `t${i}.bench.example` }

/** CHANGES sequential state flips via SQL, one transaction each; latency per (change, proxy). */
async function propagate (writer, proxies) {
  const samples = []
  let timeouts = 0
  let polls = 0
  const started = performance.now()
  for (let k = 0; k < CHANGES; k++) {
    const i = slotTenant(k % HOSTS)
    await writer.query('BEGIN')
    const r = await writer.query(`UPDATE tenant_proxy.tenants SET state = CASE state WHEN 'active' THEN 'maintenance' ELSE 'active' END WHERE slug = $1 RETURNING state`, ['t' + i])
    await writer.query('COMMIT')
    const committedAt = performance.now()
    const outcomes = await Promise.all(proxies.map((p) => pollUntil(p.http, host(i), r.rows[0].state, committedAt)))
    for (const o of outcomes) {
      polls += o.polls
      if (o.latency === null) timeouts++
      else samples.push(o.latency)
    }
    if (performance.now() - started > CHANGES * (CHANGE_BUDGET_MS + 100)) throw new Error('propagation run exceeded its time bound')
  }
  return { samples, timeouts, meanPolls: polls / (CHANGES * proxies.length) }
}

/** CLI_CHANGES `tenants state t<i> maintenance` runs; latency from the CLI's exit. */
async function propagateCli (dbUrl, proxies) {
  const samples = []
  const cliMs = []
  let timeouts = 0
  for (let k = 0; k < CLI_CHANGES; k++) {
    const i = slotTenant(k % HOSTS, true) // tenants the SQL changes never touched: active
    const t0 = performance.now()
    const cli = spawnChild(NODE, ['dist/src/main.js', 'tenants', 'state', `t${i}`, 'maintenance'], { REGISTRY_DATABASE_URL: dbUrl, TENANT_PROXY_LOG_LEVEL: 'warn' })
    const code = await exited(cli, 30_000)
    const exitedAt = performance.now()
    if (code !== 0) throw new Error(`tenants state t${i} maintenance exited with ${code}`)
    cliMs.push(exitedAt - t0)
    const outcomes = await Promise.all(proxies.map((p) => pollUntil(p.http, host(i), 'maintenance', exitedAt)))
    for (const o of outcomes) {
      if (o.latency === null) timeouts++
      else samples.push(o.latency)
    }
  }
  return { samples, timeouts, cliMs, proxies: proxies.length }
}

/** Requests `hostname` back to back (no sleeps) until the response shows `state`; null after the budget. */
async function pollUntil (http, hostname, state, since) {
  let polls = 0
  while (polls < MAX_POLLS) {
    polls++
    const seen = await probe(http, hostname)
    const now = performance.now()
    if (seen === state) return { latency: now - since, polls }
    if (now - since > CHANGE_BUDGET_MS) break
  }
  return { latency: null, polls }
}

/** 'active' (200 from the upstream), 'maintenance' (503 TENANT_PROXY_ERR_TENANT_MAINTENANCE) or what else came back. */
async function probe (http, hostname) {
  const res = await http.request({ method: 'GET', path: '/', headers: { host: hostname }, headersTimeout: 5_000, bodyTimeout: 5_000 })
  const body = await res.body.text()
  if (res.statusCode === 200) return 'active'
  if (res.statusCode === 503 && body.includes('TENANT_PROXY_ERR_TENANT_MAINTENANCE')) return 'maintenance'
  return `${res.statusCode} ${body.slice(0, 100)}`
}

// ---- processes -----------------------------------------------------------------------------
function spawnChild (cmd, args, env, stdout = 'ignore') {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', stdout, 'inherit'] })
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

async function exited (child, timeoutMs) {
  if (child.exitCode !== null) return child.exitCode
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`child did not exit within ${timeoutMs} ms`)) }, timeoutMs)
    child.once('exit', (code, signal) => { clearTimeout(timer); resolve(code ?? signal) })
  })
}

async function startUpstream () {
  const child = spawnChild(process.execPath, ['bench/upstream.js'], {}, 'pipe')
  const lines = createInterface({ input: child.stdout })
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('upstream did not start in 10 s')), 10_000)
    lines.once('line', (line) => { clearTimeout(timer); resolve(JSON.parse(line).port) })
    child.once('exit', (code) => reject(new Error(`upstream exited with ${code}`)))
  })
  lines.close()
  child.stdout.resume()
  return `http://127.0.0.1:${port}`
}

/** Spawns `serve` and waits for its first /up 200 (polled every 10 ms); bootMs is spawn → that answer. */
async function startProxy (env, label, timeoutMs = 60_000) {
  const trafficPort = await freePort()
  const opsPort = await freePort()
  const args = ['dist/src/main.js', 'serve']
  if (process.env.BENCH_PROFILE_DIR) args.unshift('--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE_DIR}`)
  const t0 = performance.now()
  const child = spawnChild(NODE, args, {
    TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
    TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
    TENANT_PROXY_OPS_HOST: '127.0.0.1',
    TENANT_PROXY_OPS_PORT: String(opsPort),
    TENANT_PROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
    TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
    TENANT_PROXY_SHUTDOWN_GRACE_MS: '1000',
    ...env
  }, 'pipe')
  // The proxy logs JSON to stdout (warn and up by default): forward it, tagged, to our stderr.
  createInterface({ input: child.stdout }).on('line', (line) => process.stderr.write(`  [${label}] ${line}\n`))
  const deadline = t0 + timeoutMs
  const up = new Client(`http://127.0.0.1:${trafficPort}`)
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${label}: proxy exited with ${child.exitCode ?? child.signalCode} before /up answered`)
      try {
        const res = await up.request({ method: 'GET', path: '/up', headers: { host: 'bench.invalid' }, headersTimeout: 2_000, bodyTimeout: 2_000 })
        await res.body.dump()
        if (res.statusCode === 200) break
      } catch { // not listening yet
      }
      if (performance.now() > deadline) throw new Error(`${label}: /up did not answer 200 within ${timeoutMs} ms`)
      await sleep(UP_POLL_MS)
    }
  } finally {
    await up.close().catch(() => undefined)
  }
  return { child, trafficPort, opsPort, bootMs: performance.now() - t0 }
}


// ---- HTTP helpers --------------------------------------------------------------------------
async function getJson (port, urlPath) {
  const http = new Client(`http://127.0.0.1:${port}`)
  try {
    const res = await http.request({ method: 'GET', path: urlPath, headersTimeout: 10_000, bodyTimeout: 10_000 })
    const text = await res.body.text()
    let body = null
    try { body = JSON.parse(text) } catch { body = null }
    return { status: res.statusCode, body }
  } finally {
    await http.close()
  }
}

async function getStatus (port, urlPath, hostname) {
  const http = new Client(`http://127.0.0.1:${port}`)
  try {
    const res = await http.request({ method: 'GET', path: urlPath, headers: { host: hostname }, headersTimeout: 10_000, bodyTimeout: 10_000 })
    await res.body.dump()
    return res.statusCode
  } finally {
    await http.close()
  }
}

/** `total` requests over HOSTS hosts with `concurrency` in flight; bounded to 120 s. */
async function requests (port, total, concurrency) {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: concurrency })
  const statuses = {}
  let next = 0
  const t0 = performance.now()
  const deadline = t0 + 120_000
  const worker = async () => {
    while (next < total && performance.now() < deadline) {
      const j = next++
      const res = await pool.request({ method: 'GET', path: '/', headers: { host: host(slotTenant(j % HOSTS)) }, headersTimeout: 10_000, bodyTimeout: 10_000 })
      await res.body.dump()
      statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
    }
  }
  try {
    await Promise.all(Array.from({ length: concurrency }, worker))
  } finally {
    await pool.close()
  }
  return { statuses, ms: performance.now() - t0 }
}

// ---- measurements --------------------------------------------------------------------------
function rss (pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN)
  return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 }
}

/** Waits until `file` exists and its size is the same over three checks 100 ms apart; ms waited. */
async function waitForStableFile (file, timeoutMs) {
  const t0 = performance.now()
  let last = -1
  let same = 0
  while (performance.now() - t0 < timeoutMs) {
    const size = existsSync(file) ? statSync(file).size : -1
    if (size > 0 && size === last) {
      if (++same >= 2) return performance.now() - t0 - 200
    } else {
      same = 0
    }
    last = size
    await sleep(100)
  }
  throw new Error(`${file} not written (or still growing) after ${timeoutMs} ms`)
}

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Nearest-rank percentile; 100 is the maximum. */
function pct (xs, p) {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length, Math.max(1, Math.ceil(p / 100 * s.length))) - 1]
}

function sleep (msec) { return new Promise((resolve) => setTimeout(resolve, msec)) }
function mb (bytes) { return `${(bytes / 1024 / 1024).toFixed(1)} MB` }
function ms (x) { return Number.isNaN(x) ? 'n/a' : x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms` }
function s (x) { return `${(x / 1000).toFixed(2)} s` }
function log (line) { console.error(line) }

// ---- report --------------------------------------------------------------------------------
function report () {
  const rows = []
  const row = (what, figure, target, pass) => rows.push(`| ${what} | ${figure} | ${target} | ${pass === null ? 'n/a' : pass ? 'pass' : '**FAIL**'} |`)
  const n = TENANTS.toLocaleString('en-US')
  const at100k = (target) => TENANTS === 100_000 ? target : `${target} (at 100,000)`
  const loadNote = (x) => `; load average ${x.load.toFixed(1)}`
  const boots = (x) => `${s(x.median)} (${x.all.map(s).join(', ')})`
  if (results.tiny !== undefined) {
    const x = results.tiny
    row(`\`serve\` with a one-tenant registry: spawn → first /up 200 (median of ${BOOTS})`, boots(x) + loadNote(x), '≤ 0.3 s', x.median <= 300)
  }
  if (results.fileBoot !== undefined) {
    const f = results.fileBoot
    row(`Boot from the snapshot file, ${n} tenants, registry login refused (median of ${BOOTS})`, `${boots(f)}; /ready registry.stale ${f.stale ? 'true' : 'NOT true'}; known host ${f.routed ? 'routed 200' : 'NOT routed'}; VmRSS at /up ${mb(f.rss)}${loadNote(f)}`, at100k('≤ 1 s') + ', stale: true', f.median <= 1_000 && f.stale)
  }
  if (results.boot !== undefined) {
    const b = results.boot
    row(`Boot from the registry, ${n} tenants (spawn → first /up 200, median of ${BOOTS})`, boots(b) + loadNote(b), at100k('≤ 1.5 s'), b.median <= 1_500)
  }
  if (results.memory !== undefined) {
    const m = results.memory
    const mTotal = Object.values(m.load.statuses).reduce((a, x) => a + x, 0)
    row(`VmRSS after boot from the registry, ${n} tenants (at /up; settled after the snapshot file write)`, `${mb(m.atUp)}; ${mb(m.settled)}`, '≤ 150 MB', Math.max(m.atUp, m.settled) <= 150 * 1024 * 1024)
    row(`VmRSS after ${mTotal.toLocaleString('en-US')} requests over ${HOSTS.toLocaleString('en-US')} hosts (peak VmHWM)`, `${mb(m.afterRequests)} (peak ${mb(m.hwm)}); statuses ${Object.entries(m.load.statuses).map(([k, v]) => `${k}×${v}`).join(' ')}`, '≤ 150 MB', m.afterRequests <= 150 * 1024 * 1024)
  }
  if (results.big !== undefined) {
    const g = results.big
    row(`Boot from the registry, ${BIG_TENANTS.toLocaleString('en-US')} tenants (one boot)`, s(g.bootMs), '≤ 15 s', g.bootMs <= 15_000)
    row(`VmRSS, ${BIG_TENANTS.toLocaleString('en-US')} tenants (at /up; after the snapshot file write; peak)`, `${mb(g.atUp)}; ${mb(g.settled)}; peak ${mb(g.hwm)}`, 'reported', null)
  } else if (PARTS.has('big')) {
    row('Boot from the registry, 1,000,000 tenants', 'skipped (BENCH_BIG_TENANTS=0)', '≤ 15 s', null)
  }
  for (const r of results.propagation ?? []) {
    const p50 = pct(r.samples, 50)
    const p99 = pct(r.samples, 99)
    row(`Change propagation, ${r.proxies} prox${r.proxies === 1 ? 'y' : 'ies'}: ${CHANGES.toLocaleString('en-US')} SQL changes, commit → first response showing it, over ${(r.samples.length + r.timeouts).toLocaleString('en-US')} (change, proxy) pairs`,
      `p50 ${ms(p50)} · p95 ${ms(pct(r.samples, 95))} · p99 ${ms(p99)} · max ${ms(pct(r.samples, 100))}${r.timeouts > 0 ? ` · ${r.timeouts} not visible within ${CHANGE_BUDGET_MS} ms` : ''}`,
      'p50 ≤ 10 ms, p99 ≤ 50 ms', p50 <= 10 && p99 <= 50 && r.timeouts === 0)
  }
  if (results.cli !== undefined) {
    const c = results.cli
    row(`Change propagation via the CLI (\`tenants state t<i> maintenance\`), ${c.proxies} prox${c.proxies === 1 ? 'y' : 'ies'}: ${CLI_CHANGES} changes, CLI exit → first response showing it`,
      `p50 ${ms(pct(c.samples, 50))} · p95 ${ms(pct(c.samples, 95))} · max ${ms(pct(c.samples, 100))}${c.timeouts > 0 ? ` · ${c.timeouts} not visible within ${CHANGE_BUDGET_MS} ms` : ''} (CLI run itself: median ${s(median(c.cliMs))})`,
      'reported (p50 ≤ 10 ms, p99 ≤ 50 ms as for SQL)', null)
  }

  const lines = [
    '# Benchmark: live tenant registry',
    '',
    `${new Date().toISOString()} · proxies on node ${nodeVersion()} · nproc ${cpus().length} · load average ${loadAtStart[0].toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end · PostgreSQL at ${new URL(ADMIN_URL).host} · ${n} tenants (one domain each) · ${CHANGES.toLocaleString('en-US')} changes · 1 and ${PROXIES} proxies · code: ${codeRevision}`,
    '',
    `Command: \`${commandLine()}\``,
    '',
    '| measurement | figure | target | result |',
    '|---|---|---|---|',
    ...rows,
    '',
    'How it is measured: every proxy is `node dist/src/main.js serve` on loopback with log level warn, a local upstream (bench/upstream.js) and its own snapshot file.',
    'Boot time is wall time from spawn to the first 200 from the traffic port\'s `/up` (what a load balancer sees), polled every 10 ms; the load average is the one-minute',
    'figure after the boots (timings drift with it: the benchmark, PostgreSQL and the proxies share the machine). The one-tenant boot has no snapshot file. The snapshot-file boot points REGISTRY_DATABASE_URL at the same',
    'host, port and database with a NOLOGIN role (the file\'s fingerprint ignores the user) and TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS=1000. VmRSS and VmHWM come from /proc/<pid>/status.',
    'Propagation: each change is one transaction (UPDATE … state, flipped between active and maintenance, tenants round-robin over 1,000 hosts); after COMMIT returns every proxy is',
    `requested for that tenant's host back to back over a keep-alive connection (no sleeps, at most ${CHANGE_BUDGET_MS} ms) until it answers 200 (active) or 503 TENANT_PROXY_ERR_TENANT_MAINTENANCE;`,
    'the latency is commit → receipt of that response, per proxy. The benchmark, PostgreSQL and all proxies share the machine\'s cores.',
    '',
    'Regenerate with `npm run bench:registry` on an idle machine (it builds dist/ first; figures drift with the machine and its load). One figure alone:',
    '`BENCH_ONLY=tiny npm run bench:registry` (one-tenant boot), `BENCH_ONLY=file …` (snapshot-file boot), `BENCH_ONLY=registry …` (registry boot and memory).',
    ''
  ]
  if (FULL_RUN) writeFileSync('docs/registry-benchmarks.md', lines.join('\n'))
  console.log(lines.join('\n'))
}

/** The commit measured, and whether src/ had uncommitted changes (dist/ is built from the working tree). */
function revision () {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).trim() !== ''
    return `${head}${dirty ? ' + uncommitted changes in src/' : ''}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

/** The version of the Node that runs the proxies (BENCH_NODE or this one). */
function nodeVersion () {
  return NODE === process.execPath ? process.version : execFileSync(NODE, ['--version'], { encoding: 'utf8' }).trim()
}

function commandLine () {
  const env = ['BENCH_DATABASE_URL', 'BENCH_TENANTS', 'BENCH_BIG_TENANTS', 'BENCH_CHANGES', 'BENCH_PROXIES', 'BENCH_ONLY', 'BENCH_BOOTS'].filter((k) => process.env[k] !== undefined).map((k) => `${k}=${k === 'BENCH_DATABASE_URL' ? redact(process.env[k]) : process.env[k]}`)
  return [...env, COMMAND].join(' ')
}

function redact (url) {
  const u = new URL(url)
  if (u.password !== '') u.password = 'REDACTED'
  return u.toString()
}
