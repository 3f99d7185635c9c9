// Benchmark of the in-memory registry index by itself: the memory it holds per tenant, the time
// to build it, the cost of one lookup through the resolver, and a proxy's boot from a snapshot
// file of that size (spawn → first /up 200, resident memory at /up and settled). Synthetic
// tenants shaped as bench/registry.js seeds them (slug t<i>, database db_<i>, one primary domain
// t<i>.bench.example). Needs no PostgreSQL: the boot points the registry at a closed loopback
// port, so the proxy routes from the file, as a proxy whose registry is down does. Not run in CI.
//
//   npm run bench:index                                  # 100,000 and 1,000,000 tenants (builds dist/ first)
//   BENCH_INDEX_TENANTS=1000000 npm run bench:index      # one size
//   BENCH_INDEX_LOOKUPS=1000000 BENCH_BOOTS=3 npm run bench:index
//   BENCH_INDEX_ROOT=/path/to/other/checkout node bench/index.js   # measure another build (its dist/)
//   BENCH_ONLY=memory npm run bench:index                # parts: memory (in-process build, bytes, lookups),
//                                                        # load (a fresh process reads the snapshot file and builds the index, as serve does
//                                                        # before /up: CPU time and RSS, robust on a busy machine), boot (serve → /up)
//   BENCH_BOOT_TIMEOUT_S=600 …                           # how long a boot may take (default 180)
//
// Prints one line per figure and a markdown table at the end; writes nothing under docs/.
import { execFileSync, spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { Client } from 'undici'
import { freePort } from './free-port.js'

const SIZES = (process.env.BENCH_INDEX_TENANTS ?? '100000,1000000').split(',').map(Number)
const LOOKUPS = Number(process.env.BENCH_INDEX_LOOKUPS ?? 1_000_000)
const BOOTS = Number(process.env.BENCH_BOOTS ?? 3)
const PARTS = new Set((process.env.BENCH_ONLY ?? 'memory,load,boot').split(','))
const BOOT_TIMEOUT_MS = Number(process.env.BENCH_BOOT_TIMEOUT_S ?? 180) * 1000
// Another build to measure (a directory holding dist/), e.g. a copy built from an older commit.
const ROOT = path.resolve(process.env.BENCH_INDEX_ROOT ?? '.')
const dist = (file) => pathToFileURL(path.join(ROOT, 'dist', file)).href
const SCHEMA = 'tenant_proxy'
/** The registry fingerprint of the load part's files (any string: no proxy checks it against a config). */
const FINGERPRINT = 'bench-index'
const DEFAULTS = { defaultHost: 'localhost', defaultPort: 5432 }
for (const n of SIZES) if (!Number.isInteger(n) || n < 1 || n > 5_000_000) throw new Error('BENCH_INDEX_TENANTS: integers 1 … 5,000,000')
if (!Number.isInteger(LOOKUPS) || LOOKUPS < 1 || LOOKUPS > 10_000_000) throw new Error('BENCH_INDEX_LOOKUPS: 1 … 10,000,000')
if (!Number.isInteger(BOOTS) || BOOTS < 1 || BOOTS > 20) throw new Error('BENCH_BOOTS: 1 … 20')

if (process.argv[2] === '--child-load') {
  await loadChild(process.argv[3], process.argv[4])
  process.exit(0)
}
if (process.argv[2] === '--child-memory') {
  await memoryChild(Number(process.argv[3]))
  process.exit(0)
}

const { buildIndex } = await import(dist('src/registry/index.js'))
const { writeSnapshotFile, registryFingerprint } = await import(dist('src/registry/snapshot-file.js'))

const tmp = mkdtempSync(path.join(tmpdir(), 'tp-bench-index-'))
const children = new Set()
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
  rmSync(tmp, { recursive: true, force: true })
})

const rows = []
const revision = (() => { try { return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim() } catch { return 'unknown' } })()
for (const n of SIZES) {
  if (PARTS.has('memory')) {
    // A fresh process per size: a heap that held the previous size would blur the figures.
    const out = execFileSync(process.execPath, ['--expose-gc', 'bench/index.js', '--child-memory', String(n)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 600_000 })
    const m = JSON.parse(out.trim().split('\n').at(-1))
    const ns = (x) => `${x.cpuNs.toFixed(0)} ns CPU (${x.ns.toFixed(0)} ns wall)`
    log(`${n} tenants in-process: build ${m.buildMs.toFixed(0)} ms (CPU ${m.buildCpuMs.toFixed(0)} ms); heap and buffers +${mb(m.heapDelta)} (${(m.heapDelta / n).toFixed(0)} B/tenant), RSS +${mb(m.rssDelta)} (${(m.rssDelta / n).toFixed(0)} B/tenant), RSS ${mb(m.rss)}; lookups ${ns(m.lookup)} (hits), ${ns(m.miss)} (misses), ${ns(m.slug)} (wildcard slug)`)
    rows.push(`| ${n.toLocaleString('en-US')} | in-process build | ${(m.buildMs / 1000).toFixed(2)} s (CPU ${(m.buildCpuMs / 1000).toFixed(2)} s) | heap and buffers ${(m.heapDelta / n).toFixed(0)} B/tenant, RSS ${(m.rssDelta / n).toFixed(0)} B/tenant (RSS ${mb(m.rss)}) | exact ${ns(m.lookup)} · miss ${ns(m.miss)} · wildcard ${ns(m.slug)} |`)
  }
  if (PARTS.has('load')) {
    const l = await loadFromFile(n)
    log(`${n} tenants: snapshot file (${mb(l.fileBytes)}) read and indexed in a fresh process: ${(l.ms / 1000).toFixed(2)} s (CPU ${(l.cpuMs / 1000).toFixed(2)} s); VmRSS after the collection ${mb(l.rss)} (before the load ${mb(l.rssBefore)}), peak ${mb(l.hwm)}`)
    rows.push(`| ${n.toLocaleString('en-US')} | snapshot file read and indexed in a fresh process (what serve does before /up), then the post-load collection | ${(l.ms / 1000).toFixed(2)} s (CPU ${(l.cpuMs / 1000).toFixed(2)} s) | VmRSS ${mb(l.rss)} (${mb(l.rssBefore)} before the load; ${((l.rss - l.rssBefore) / n).toFixed(0)} B/tenant), peak ${mb(l.hwm)} | ${l.tenants} tenants |`)
  }
  if (PARTS.has('boot')) {
    const b = await bootFromFile(n)
    log(`${n} tenants from the snapshot file (${mb(b.fileBytes)}): /up in ${b.boots.map((x) => (x / 1000).toFixed(2)).join(', ')} s (CPU ${b.cpus.map((x) => (x / 1000).toFixed(2)).join(', ')} s); VmRSS at /up ${mb(b.atUp)}, settled ${mb(b.settled)}, peak ${mb(b.hwm)}; known host → ${b.routed}`)
    rows.push(`| ${n.toLocaleString('en-US')} | serve from the snapshot file (median of ${BOOTS}) | ${(median(b.boots) / 1000).toFixed(2)} s (CPU ${(median(b.cpus) / 1000).toFixed(2)} s) | VmRSS at /up ${mb(b.atUp)}, settled ${mb(b.settled)} (${(b.settled / n).toFixed(0)} B/tenant all in), peak ${mb(b.hwm)} | known host → ${b.routed} |`)
  }
}
console.log(`\nnode ${process.version} · code ${revision} · ${ROOT} · ${new Date().toISOString()} · load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}\n`)
console.log('| tenants | what | time | memory | lookups / check |\n|---|---|---|---|---|')
for (const r of rows) console.log(r)

// ---- in-process: memory and lookups ------------------------------------------------------------
async function memoryChild (n) {
  const { buildIndex } = await import(dist('src/registry/index.js'))
  const { Resolver } = await import(dist('src/routing/resolve.js'))
  const resolver = new Resolver({ wwwFallback: true, wildcardDomains: ['wild.example'], reservedLabels: ['www'], passthroughHosts: [] })
  const settle = () => { for (let i = 0; i < 3; i++) globalThis.gc() }
  settle()
  const before = process.memoryUsage()
  const t0 = performance.now()
  const cpu0 = process.cpuUsage()
  // Rows built inside a function so that they are garbage once it returns (as in a real load).
  const index = build(n, buildIndex)
  const buildMs = performance.now() - t0
  const cpu1 = process.cpuUsage(cpu0)
  const buildCpuMs = (cpu1.user + cpu1.system) / 1000
  settle()
  const after = process.memoryUsage()
  // Hosts built fresh (not interned, no cached hash), as a request's Host header is.
  const pick = (k) => 1 + ((k * 2654435761) >>> 0) % n
  const hosts = Array.from({ length: LOOKUPS }, (_, k) => ['t', String(pick(k)), '.bench.example'].join(''))
  const misses = Array.from({ length: LOOKUPS }, (_, k) => ['x', String(pick(k)), '.bench.example'].join(''))
  const slugs = Array.from({ length: LOOKUPS }, (_, k) => ['t', String(pick(k)), '.wild.example'].join(''))
  const time = (list, expect) => {
    let found = 0
    const t = process.hrtime.bigint()
    const cpu = process.cpuUsage()
    for (let k = 0; k < list.length; k++) if (resolver.resolve(index, list[k]).kind === 'tenant') found++
    const ns = Number(process.hrtime.bigint() - t) / list.length
    const used = process.cpuUsage(cpu)
    if (found !== expect) throw new Error(`expected ${expect} hits, got ${found}`)
    // CPU time as well as wall time: on a shared machine the wall time mostly measures the others.
    return { ns, cpuNs: (used.user + used.system) * 1000 / list.length }
  }
  const lookup = time(hosts, LOOKUPS)
  const miss = time(misses, 0)
  const slug = time(slugs, LOOKUPS)
  console.log(JSON.stringify({ buildMs, buildCpuMs, heapDelta: after.heapUsed + after.external - before.heapUsed - before.external, rssDelta: after.rss - before.rss, rss: after.rss, lookup, miss, slug }))
}

function build (n, buildIndex) {
  const tenants = []
  const domains = []
  for (let i = 1; i <= n; i++) {
    tenants.push({ id: i, slug: `t${i}`, databaseName: `db_${i}`, databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: `t${i}.bench.example`, holdMs: null })
    domains.push({ hostname: `t${i}.bench.example`, tenantId: i })
  }
  return buildIndex({ version: 1, registryId: 'bench', tenants, domains }, DEFAULTS)
}

// ---- the snapshot file, read in a fresh process ------------------------------------------------
async function loadFromFile (n) {
  const file = path.join(tmp, `load-${n}.json`)
  await writeSnapshotFile(file, build(n, buildIndex), FINGERPRINT)
  const out = execFileSync(process.execPath, ['bench/index.js', '--child-load', file, String(n)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 1_800_000 })
  return { ...JSON.parse(out.trim().split('\n').at(-1)), fileBytes: statSync(file).size }
}

async function loadChild (file) {
  const { indexFromFile } = await import(dist('src/registry/load-index.js'))
  const { collectGarbage } = await import(dist('src/gc.js'))
  const rssBefore = rss(process.pid).rss
  const t0 = performance.now()
  const cpu0 = process.cpuUsage()
  const { index } = await indexFromFile(file, FINGERPRINT, DEFAULTS)
  collectGarbage()
  const cpu = process.cpuUsage(cpu0)
  const ms = performance.now() - t0
  const r = rss(process.pid)
  console.log(JSON.stringify({ ms, cpuMs: (cpu.user + cpu.system) / 1000, rss: r.rss, hwm: r.hwm, rssBefore, tenants: index.bySlug.size }))
}

// ---- serve from the snapshot file ---------------------------------------------------------------
async function bootFromFile (n) {
  const closed = await freePort() // nothing listens there: the registry is down
  const url = `postgres://postgres@127.0.0.1:${closed}/bench`
  const file = path.join(tmp, `snapshot-${n}.json`)
  await writeSnapshotFile(file, build(n, buildIndex), registryFingerprint(url, path.join(tmp, 'embedded'), SCHEMA))
  const fileBytes = statSync(file).size
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })
  const boots = []
  const cpus = []
  let atUp = 0
  let settled = 0
  let hwm = 0
  let routed = null
  for (let i = 0; i < BOOTS; i++) {
    const p = await startProxy({
      REGISTRY_DATABASE_URL: url,
      TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: file,
      TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '1000',
      TENANT_PROXY_UPSTREAM_URLS: 'http://127.0.0.1:9',
      TENANT_PROXY_DESCRIPTOR_KEYS: key
    }, `${n} boot ${i + 1}`)
    boots.push(p.bootMs)
    cpus.push(p.cpuMs)
    if (i === 0) {
      atUp = rss(p.child.pid).rss
      // Settled: after the post-load collection and a quiet second.
      await sleep(2_000)
      const r = rss(p.child.pid)
      settled = r.rss
      hwm = r.hwm
      routed = await status(p.trafficPort, `t${n}.bench.example`)
    }
    await stop(p.child)
  }
  return { boots, cpus, atUp, settled, hwm, routed, fileBytes }
}

async function startProxy (env, label, timeoutMs = BOOT_TIMEOUT_MS) {
  const trafficPort = await freePort()
  const opsPort = await freePort()
  const t0 = performance.now()
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/main.js'), 'serve'], {
    env: {
      ...process.env,
      TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
      TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
      TENANT_PROXY_OPS_HOST: '127.0.0.1',
      TENANT_PROXY_OPS_PORT: String(opsPort),
      TENANT_PROXY_LOG_LEVEL: 'error',
      TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
      TENANT_PROXY_SHUTDOWN_GRACE_MS: '1000',
      ...env
    },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  children.add(child)
  child.once('exit', () => children.delete(child))
  const up = new Client(`http://127.0.0.1:${trafficPort}`)
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${label}: proxy exited with ${child.exitCode ?? child.signalCode}`)
      try {
        const res = await up.request({ method: 'GET', path: '/up', headers: { host: 'bench.invalid' }, headersTimeout: 2_000, bodyTimeout: 2_000 })
        await res.body.dump()
        if (res.statusCode === 200) break
      } catch { // not listening yet
      }
      if (performance.now() - t0 > timeoutMs) throw new Error(`${label}: no /up 200 within ${timeoutMs} ms`)
      await sleep(10)
    }
  } finally {
    await up.close().catch(() => undefined)
  }
  return { child, trafficPort, bootMs: performance.now() - t0, cpuMs: cpuMsOf(child.pid) }
}

async function stop (child) {
  if (child.exitCode !== null || child.signalCode !== null) return
  await new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve() }, 10_000)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    child.kill('SIGTERM')
  })
}

async function status (port, hostname) {
  const http = new Client(`http://127.0.0.1:${port}`)
  try {
    const res = await http.request({ method: 'GET', path: '/', headers: { host: hostname }, headersTimeout: 10_000, bodyTimeout: 10_000 })
    await res.body.dump()
    return res.statusCode
  } finally {
    await http.close()
  }
}


/** CPU time (user + system) a process has used, ms: /proc/<pid>/stat fields 14 and 15, in clock ticks (100 Hz). */
function cpuMsOf (pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 10
}

function rss (pid) {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
  return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 }
}

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
function sleep (msec) { return new Promise((resolve) => setTimeout(resolve, msec)) }
function mb (bytes) { return `${(bytes / 1024 / 1024).toFixed(1)} MB` }
function log (line) { console.error(line) }
