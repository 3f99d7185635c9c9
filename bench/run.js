// Benchmark of the data path: tenant-proxy (BENCH_TENANTS tenants in the registry, access log on,
// ES256 descriptors) against bare Fastify + @fastify/http-proxy and, where it is installed, nginx
// with one worker (a host map and an injected header of the descriptor's size), all in front of
// the same local upstream, with wrk as the load generator, in interleaved rounds so machine drift
// hits every server alike. Reports per server req/s, p50/p99 latency, CPU time per request,
// memory and errors (medians of the rounds), the ratios and the targets of issue 14, and writes
// docs/benchmarks.md (whose footer says how it measures). Not run in CI.
//
//   npm run bench                        # defaults below (builds dist/ first)
//   BENCH_ROUNDS=5 BENCH_SECONDS=5 BENCH_CONNECTIONS=32 BENCH_TENANTS=100000 npm run bench
//   BENCH_ROUNDS=1 BENCH_SECONDS=2 BENCH_WARMUP_SECONDS=1 BENCH_OUTPUT= npm run bench   # quick look, docs untouched
//   BENCH_SERVERS=bare,tenant-proxy npm run bench     # a subset (bare, tenant-proxy, nginx)
//   BENCH_WORKERS=1,2 npm run bench      # tenant-proxy once per worker count (TENANT_PROXY_WORKERS=<n>)
//   BENCH_LOG_LEVEL=warn npm run bench   # tenant-proxy without its access log (default info: on)
//   BENCH_PROFILE_DIR=/tmp/prof npm run bench   # also a V8 CPU profile of every node server
//   BENCH_BASELINE=../other-checkout npm run bench   # also that checkout's tenant-proxy (built), in the same rounds
//
// Other knobs: BENCH_DATABASE_URL (admin URL of the PostgreSQL that gets a throwaway database;
// default postgres://postgres@127.0.0.1:5432/postgres), BENCH_HOSTS (distinct tenant hosts
// requested, default 1000), BENCH_THREADS (wrk threads, default 1), BENCH_WARMUP_SECONDS (per
// server before the rounds, default 3), BENCH_PIN=0 (no CPU pinning), BENCH_NGINX (nginx binary;
// default `nginx` on PATH; 0 skips it), BENCH_OUTPUT (report file; default docs/benchmarks.md,
// empty writes none).
//
// Pinning (with 2+ CPUs and taskset): each server under test runs alone on the last CPU; wrk,
// the upstream and this script share the others. Servers are measured one at a time. A
// tenant-proxy with n workers gets the last n CPUs, or every CPU when that would leave none to
// the load generator (on 2 CPUs, 2 workers share CPU 0 with wrk and the upstream).
//
// Everything is on 127.0.0.1; every wait and every load run is bounded in time; every child is
// stopped by PID (with its descendants: nginx's worker, tenant-proxy's workers), the throwaway
// database is dropped and the temp directory removed, also on error and on SIGINT/SIGTERM.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { generateKeyPairSync, createHash } from 'node:crypto'
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { Pool } from 'undici'
import { freePort } from './free-port.js'

/** A failure the benchmark foresees (a bad knob, a missing tool, a server that will not start): reported without a stack. */
class BenchError extends Error {}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const TENANTS = int('BENCH_TENANTS', 100_000, 1)
const HOSTS = Math.min(int('BENCH_HOSTS', 1_000, 1), TENANTS)
const ROUNDS = int('BENCH_ROUNDS', 5, 1)
const SECONDS = int('BENCH_SECONDS', 5, 1)
const WARMUP_SECONDS = int('BENCH_WARMUP_SECONDS', 3, 0)
const CONNECTIONS = int('BENCH_CONNECTIONS', 32, 1)
const THREADS = int('BENCH_THREADS', 1, 1)
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL ?? 'info'
const OUTPUT = process.env.BENCH_OUTPUT ?? 'docs/benchmarks.md'
const WORKERS = process.env.BENCH_WORKERS === undefined || process.env.BENCH_WORKERS === '' ? [null] : process.env.BENCH_WORKERS.split(',').map((w) => {
  const n = Number(w.trim())
  if (!Number.isInteger(n) || n < 1) badKnob(`BENCH_WORKERS: ${JSON.stringify(w)} is not a worker count (a comma-separated list of integers ≥ 1, like 1,2)`)
  return n
})
const BASELINE = baselineCheckout(process.env.BENCH_BASELINE)
const SERVER_KINDS = ['bare', 'tenant-proxy', 'nginx']
const SERVERS = (process.env.BENCH_SERVERS ?? SERVER_KINDS.join(',')).split(',').map((s) => s.trim()).filter((s) => s !== '')
for (const s of SERVERS) if (!SERVER_KINDS.includes(s)) badKnob(`BENCH_SERVERS: unknown server ${s}; servers: ${SERVER_KINDS.join(', ')}`)
if (BASELINE !== null && !SERVERS.includes('tenant-proxy')) badKnob('BENCH_BASELINE needs tenant-proxy among BENCH_SERVERS')
if (THREADS > CONNECTIONS) badKnob('BENCH_THREADS must not exceed BENCH_CONNECTIONS (wrk needs a connection per thread)')
const DESCRIPTOR_HEADER = 'x-tenant-descriptor' // the proxy's default descriptor.header
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100 // /proc/<pid>/stat times are in these
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 15_000
const COMMAND = 'npm run bench'
const KNOBS = ['BENCH_BASELINE', 'BENCH_DATABASE_URL', 'BENCH_TENANTS', 'BENCH_HOSTS', 'BENCH_ROUNDS', 'BENCH_SECONDS', 'BENCH_WARMUP_SECONDS', 'BENCH_CONNECTIONS', 'BENCH_THREADS', 'BENCH_LOG_LEVEL', 'BENCH_SERVERS', 'BENCH_WORKERS', 'BENCH_PIN', 'BENCH_NGINX', 'BENCH_OUTPUT', 'BENCH_PROFILE_DIR']

// ---- CPUs ----------------------------------------------------------------------------------
const CPUS = availableParallelism()
const PIN = process.env.BENCH_PIN !== '0' && CPUS >= 2 && spawnSync('taskset', ['-V']).status === 0
/** CPUs a server with `processes` busy processes runs on, and the rest (load generator and upstream). */
function cpuPlan (processes) {
  const all = Array.from({ length: CPUS }, (_, i) => i)
  if (!PIN) return { server: null, load: null }
  const n = Math.min(processes, CPUS - 1)
  // With more processes than CPUs left beside the load generator's, they share every CPU.
  return processes <= CPUS - 1 ? { server: all.slice(CPUS - n), load: all.slice(0, CPUS - n) } : { server: all, load: all.slice(0, 1) }
}
const LOAD_CPUS = PIN ? cpuPlan(1).load : null
// This script, and so wrk and the upstream it spawns, stay on the load CPUs.
if (PIN) spawnSync('taskset', ['-a', '-p', '-c', LOAD_CPUS.join(','), String(process.pid)], { stdio: 'ignore' })

// ---- cleanup: children (by PID, with descendants), database, temp dir -----------------------
const children = new Set()
const tmp = mkdtempSync(path.join(tmpdir(), 'tp-bench-'))
let admin = null
let dbName = null
let cleaned = false
process.on('exit', () => {
  for (const c of children) killTree(c, 'SIGKILL')
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
    if (dbName !== null) await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch((err) => console.error(`cannot drop ${dbName}: ${err.message}`))
    await admin.end().catch(() => undefined)
  }
  rmSync(tmp, { recursive: true, force: true })
}

// ---- main ----------------------------------------------------------------------------------
const startedAt = new Date()
const loadAtStart = loadavg()
const codeRevision = revision()
const facts = { nginx: null, descriptorBytes: null, realDescriptors: null, headers: {}, notes: [] }
try {
  report(await run())
} catch (err) {
  // A failure the benchmark foresaw is told as it is; anything else with its stack. After
  // SIGINT/SIGTERM the children are gone and what failed for it is no news.
  if (!cleaned) console.error(err instanceof BenchError ? `bench: ${err.message}` : err)
  process.exitCode = 1
} finally {
  await cleanup()
}

async function run () {
  checkWrk()
  admin = new pg.Client({ connectionString: ADMIN_URL })
  await admin.connect()
  dbName = `tp_bench_${process.pid}`
  await admin.query(`CREATE DATABASE ${dbName}`)
  const dbUrl = new URL(ADMIN_URL)
  dbUrl.pathname = `/${dbName}`
  await seed(dbUrl.toString())

  const hosts = Array.from({ length: HOSTS }, (_, i) => host(1 + Math.floor(i * TENANTS / HOSTS)))
  const hostsFile = path.join(tmp, 'hosts.txt')
  writeFileSync(hostsFile, hosts.join('\n') + '\n')

  const upstream = await startUpstream()
  const targets = []
  if (SERVERS.includes('bare')) targets.push(await startBare(upstream.origin))
  if (SERVERS.includes('tenant-proxy')) {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })
    for (const workers of WORKERS) targets.push(await startTenantProxy(dbUrl.toString(), upstream.origin, key, workers))
    if (BASELINE !== null) targets.push(await startTenantProxy(dbUrl.toString(), upstream.origin, key, null, BASELINE))
  }
  // What the app receives from each, and the descriptors nginx will inject: tenant-proxy's own.
  let descriptors = null
  for (const t of targets) {
    const probe = await probeHeaders(t, t.kind === 'bare' ? hosts.slice(0, 1) : hosts)
    facts.headers[t.name] = probe.names
    if (t.kind === 'tenant-proxy' && descriptors === null) descriptors = probe.descriptors
  }
  if (SERVERS.includes('nginx')) {
    const nginx = nginxBinary()
    if (nginx === null) {
      const note = process.env.BENCH_NGINX === '0' ? 'nginx: skipped (BENCH_NGINX=0)' : 'nginx: not installed, skipped (Debian: `apt-get install nginx-light`; or BENCH_NGINX=/path/to/nginx)'
      console.error(note)
      facts.notes.push(note)
    } else {
      const t = await startNginx(nginx, upstream.origin, hosts, descriptors)
      const probe = await probeHeaders(t, hosts)
      facts.headers[t.name] = probe.names
      targets.push(t)
    }
  }
  if (targets.length === 0) throw new BenchError('no server to measure')

  if (WARMUP_SECONDS > 0) {
    for (const t of targets) {
      const r = await measure(t, upstream, hostsFile, WARMUP_SECONDS)
      log(`warm-up  ${t.name.padEnd(20)} ${r.rps.toFixed(0).padStart(6)} req/s  p99 ${ms(r.p99)}  CPU ${r.cpuUs.toFixed(1)} µs/req  errors ${r.errors}${r.errorDetail === '' ? '' : ` (${r.errorDetail})`}`)
    }
  }
  const rounds = new Map(targets.map((t) => [t.name, []]))
  for (let round = 1; round <= ROUNDS; round++) {
    // Alternate the order so that no server always follows the same one.
    const order = round % 2 === 1 ? targets : [...targets].reverse()
    for (const t of order) {
      const r = await measure(t, upstream, hostsFile, SECONDS)
      rounds.get(t.name).push(r)
      log(`round ${round} ${t.name.padEnd(20)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${ms(r.p50)} p99 ${ms(r.p99)} p99.9 ${ms(r.p999)}  CPU ${r.cpuUs.toFixed(1)} µs/req (user ${r.userUs.toFixed(1)}, sys ${r.sysUs.toFixed(1)}; ${pctOf(r.serverUse)} of a CPU; load side ${pctOf(r.loadUse)}${r.others === null ? '' : `; others on its CPU ${pctOf(r.others)}`})  ${r.readsPerReq.toFixed(2)} reads ${r.writesPerReq.toFixed(2)} writes/req  RSS ${mb(r.rss)} (PSS ${mb(r.pss)})  errors ${r.errors}${r.errorDetail === '' ? '' : ` (${r.errorDetail})`}`)
    }
  }
  // Stopped, the servers have written out their buffered log lines (and profiles).
  for (const t of targets) {
    await stopChild(t.child)
    t.logBytes = t.logFile === null ? null : fileSize(t.logFile)
  }
  await upstream.http.close()
  return { targets, rounds }
}

// ---- registry ------------------------------------------------------------------------------
/** Migrates with the CLI, then one INSERT … SELECT generate_series per table, in one transaction. */
async function seed (url) {
  const migrate = spawnChild('migrate', process.execPath, ['dist/src/main.js', 'migrate'], { REGISTRY_DATABASE_URL: url, TENANT_PROXY_LOG_LEVEL: 'warn' })
  const code = await exited(migrate, 60_000)
  if (code !== 0) throw new BenchError(`migrate exited with ${code}`)
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  const t0 = performance.now()
  try {
    await c.query('BEGIN')
    await c.query(`INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 't' || i, 'db_' || i FROM generate_series(1, $1) AS i`, [TENANTS])
    await c.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.bench.example', id, 'primary' FROM tenant_proxy.tenants`)
    await c.query('COMMIT')
    await c.query('ANALYZE tenant_proxy.tenants, tenant_proxy.domains')
  } finally {
    await c.end()
  }
  log(`seeded ${TENANTS} tenants in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
}

function host (i) { return `t${i}.bench.example` }

// ---- servers -------------------------------------------------------------------------------
async function startUpstream () {
  const child = spawnChild('upstream', process.execPath, ['bench/upstream.js', DESCRIPTOR_HEADER], {}, { stdout: 'pipe' })
  const { port } = await firstJsonLine(child, 'upstream')
  const origin = `http://127.0.0.1:${port}`
  return { child, origin, http: new Pool(origin, { connections: 1 }) }
}

async function startBare (origin) {
  const plan = cpuPlan(1)
  const child = spawnChild('bare', ...pinned(plan.server, nodeArgs(['bench/bare-proxy.js', origin])), {}, { stdout: 'pipe' })
  const { port } = await firstJsonLine(child, 'bare')
  return { name: 'bare', kind: 'bare', label: 'bare Fastify + @fastify/http-proxy', child, port, plan, logFile: null }
}

/** tenant-proxy from this checkout's dist/, or from `baseline`'s (another checkout, built). */
async function startTenantProxy (dbUrl, origin, key, workers, baseline = null) {
  const name = baseline !== null ? 'baseline' : workers === null ? 'tenant-proxy' : `tenant-proxy ×${workers}`
  const plan = cpuPlan(workers ?? 1)
  const trafficPort = await freePort()
  const opsPort = await freePort()
  const logFile = path.join(tmp, `${name.replace(/\W+/g, '-')}.log`)
  const env = {
    REGISTRY_DATABASE_URL: dbUrl,
    TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
    TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
    TENANT_PROXY_OPS_HOST: '127.0.0.1',
    TENANT_PROXY_OPS_PORT: String(opsPort),
    TENANT_PROXY_UPSTREAM_URLS: origin,
    TENANT_PROXY_DESCRIPTOR_KEYS: key,
    TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
    TENANT_PROXY_LOG_LEVEL: LOG_LEVEL,
    TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
    TENANT_PROXY_SHUTDOWN_GRACE_MS: '1000'
  }
  // The workers setting (issue 14, item 2) is set only when asked for: a proxy without it
  // refuses the variable (unknown configuration key, exit 78), and the run stops saying so.
  if (workers !== null) env.TENANT_PROXY_WORKERS = String(workers)
  const main = baseline === null ? 'dist/src/main.js' : path.join(baseline.dir, 'dist/src/main.js')
  const child = spawnChild(name, ...pinned(plan.server, nodeArgs([main, 'serve'])), env, { stdout: logFile })
  const details = [LOG_LEVEL === 'info' ? 'access log on' : `log level ${LOG_LEVEL}`]
  if (workers !== null) details.push(`${workers} worker${workers === 1 ? '' : 's'}`)
  if (baseline !== null) details.push(`baseline: code ${baseline.revision}`)
  const label = `tenant-proxy (${details.join(', ')})`
  const t = { name, kind: 'tenant-proxy', label, child, port: trafficPort, plan, logFile, workers, baseline: baseline !== null }
  try {
    await waitFor(child, name, () => status(trafficPort, '/up', 'bench.invalid').then((s) => s === 200))
  } catch (err) {
    if (workers !== null) throw new BenchError(`${name}: this tenant-proxy does not start with TENANT_PROXY_WORKERS=${workers} (a build without the workers setting refuses the variable):\n${err.message}`)
    throw err
  }
  if (workers !== null && workers > 1) {
    // The proxy answered, but is it `workers` processes? Its workers may take a moment after /up.
    const deadline = Date.now() + START_TIMEOUT_MS
    let count = 0
    while ((count = processTree(child.pid).length) < workers && Date.now() < deadline) await sleep(100)
    if (count < workers) throw new BenchError(`${name}: asked for ${workers} workers with TENANT_PROXY_WORKERS, but the proxy runs ${count} process${count === 1 ? '' : 'es'}: this build ignores the setting`)
    log(`${name}: ${count} processes`)
    t.workerMemory = await workerMemory(opsPort)
    log(`${name}: ${describeWorkerMemory(t.workerMemory)}`)
  }
  return t
}

/**
 * nginx, one worker, from a config generated in the temp directory (no system file read or
 * written): a map from every one of the TENANTS hostnames to a descriptor-sized value, injected
 * as the descriptor header with the forwarding headers tenant-proxy sets, keep-alive connections
 * to the upstream, and an access log buffered like tenant-proxy's.
 */
async function startNginx (binary, origin, hosts, descriptors) {
  const plan = cpuPlan(1)
  const dir = path.join(tmp, 'nginx')
  mkdirSync(dir)
  const port = await freePort()
  // The requested hosts get the descriptors tenant-proxy signed for them (the very bytes it
  // injects); the other tenants get distinct strings of the median descriptor's length, so the
  // map is as large as the registry and nginx cannot share one value between hosts.
  const known = new Map()
  if (descriptors !== null) hosts.forEach((h, i) => known.set(h, descriptors[i]))
  // Without tenant-proxy in the run: the size of its ES256 descriptors for these hosts (461–477 bytes).
  const size = descriptors === null ? 470 : Math.round(median(descriptors.map((d) => d.length)))
  facts.descriptorBytes = size
  facts.realDescriptors = descriptors !== null
  const mapFile = path.join(dir, 'tenants.map')
  const fd = openSync(mapFile, 'w')
  try {
    const chunk = []
    for (let i = 1; i <= TENANTS; i++) {
      const h = host(i)
      chunk.push(`${h} "${known.get(h) ?? filler(h, size)}";\n`)
      if (chunk.length === 5_000 || i === TENANTS) { writeFileSync(fd, chunk.join('')); chunk.length = 0 }
    }
  } finally {
    closeSync(fd)
  }
  const logFile = path.join(dir, 'access.log')
  const upstreamPort = new URL(origin).port
  const conf = `# Generated by bench/run.js for one run; removed with its temp directory.
${process.getuid?.() === 0 ? `# Started as root, nginx would run its worker as nobody; it keeps this user instead, so that
# the worker can use the temp directory (mode 0700) and the benchmark can read its /proc files.
user root;
` : ''}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  # tenant-proxy's access line: request id, host, status, times, as JSON; batched, flushed every second.
  log_format bench escape=json '{"time":$msec,"reqId":"$request_id","host":"$host","status":$status,"ms":$request_time,"upstreamMs":"$upstream_response_time"}';
  access_log ${logFile} bench buffer=16k flush=1s;
  # Clients and the upstream keep their connections as long as Node's servers let them.
  keepalive_timeout 75s;
  keepalive_requests 1000000000;
  map_hash_max_size ${2 ** Math.ceil(Math.log2(TENANTS * 4))};
  map_hash_bucket_size 128;
  map $host $tenant_descriptor {
    default "";
    include ${mapFile};
  }
  upstream app {
    server 127.0.0.1:${upstreamPort};
    keepalive 128;
    keepalive_requests 1000000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      # An unknown host gets 404, as from tenant-proxy.
      if ($tenant_descriptor = "") { return 404; }
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Tenant-Descriptor $tenant_descriptor;
      proxy_hide_header X-Tenant-Descriptor;
      add_header X-Request-Id $request_id always;
    }
  }
}
`
  const confFile = path.join(dir, 'nginx.conf')
  writeFileSync(confFile, conf)
  const version = spawnSync(binary, ['-v'], { encoding: 'utf8' }).stderr.trim().replace(/^nginx version: nginx\//, '')
  facts.nginx = { version, binary }
  const t0 = performance.now()
  const child = spawnChild('nginx', ...pinned(plan.server, [binary, '-c', confFile, '-p', `${dir}/`, '-e', `${dir}/error.log`, '-g', 'daemon off;']), {}, {})
  await waitFor(child, 'nginx', () => status(port, '/', hosts[0]).then((s) => s === 200))
  const warnings = readFileSync(path.join(dir, 'error.log'), 'utf8').trim()
  if (warnings !== '') log(`nginx's error log after start:\n${warnings}`)
  log(`nginx ${version}: ${TENANTS} hosts in its map (${mb(statSync(mapFile).size)} of config), answering after ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  return { name: 'nginx', kind: 'nginx', label: `nginx ${version}, 1 worker, host map + injected header`, child, port, plan, logFile }
}

/** A descriptor-shaped string of `size` characters, different for each host. */
function filler (h, size) {
  const seed = createHash('sha256').update(h).digest('base64url')
  return ('eyJ' + seed.repeat(Math.ceil(size / seed.length))).slice(0, size)
}

function nginxBinary () {
  const candidate = process.env.BENCH_NGINX ?? 'nginx'
  if (candidate === '0') return null
  const r = spawnSync(candidate, ['-v'], { encoding: 'utf8' })
  if (r.status === 0) return candidate
  if (candidate === 'nginx' && spawnSync('/usr/sbin/nginx', ['-v']).status === 0) return '/usr/sbin/nginx'
  return null
}

function checkWrk () {
  if (spawnSync('wrk', ['--version']).error !== undefined) throw new BenchError('wrk not found: the benchmark drives the servers with wrk (Debian: `apt-get install wrk`)')
}

/** Argument vector for a node script, with a CPU profile when BENCH_PROFILE_DIR is set. */
function nodeArgs (args) {
  const prof = process.env.BENCH_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE_DIR}`] : []
  return [process.execPath, ...prof, ...args]
}

/** [command, args] running `argv` on `cpus` (taskset), or as it is without pinning. */
function pinned (cpus, argv) {
  return cpus === null ? [argv[0], argv.slice(1)] : ['taskset', ['-c', cpus.join(','), ...argv]]
}

// ---- probes --------------------------------------------------------------------------------
/**
 * Requests /__bench/headers for each host through `target` (the upstream answers with the
 * headers it received): every answer must be 200, and for a tenant-aware server carry the
 * descriptor header. Returns the header names the app saw and each host's descriptor.
 */
async function probeHeaders (target, hosts) {
  const http = new Pool(`http://127.0.0.1:${target.port}`, { connections: 8 })
  const descriptors = new Array(hosts.length)
  let names = null
  try {
    let next = 0
    const worker = async () => {
      while (next < hosts.length) {
        const i = next++
        const res = await http.request({ method: 'GET', path: '/__bench/headers', headers: { host: hosts[i] }, headersTimeout: 10_000, bodyTimeout: 10_000 })
        const text = await res.body.text()
        if (res.statusCode !== 200) throw new BenchError(`${target.name}: ${hosts[i]} answered ${res.statusCode}: ${text.slice(0, 200)}`)
        const received = JSON.parse(text)
        if (target.kind !== 'bare' && typeof received[DESCRIPTOR_HEADER] !== 'string') throw new BenchError(`${target.name}: the app received no ${DESCRIPTOR_HEADER} for ${hosts[i]}`)
        descriptors[i] = received[DESCRIPTOR_HEADER]
        names ??= Object.keys(received).sort()
        target.requests = (target.requests ?? 0) + 1
      }
    }
    await Promise.all(Array.from({ length: 8 }, worker))
  } finally {
    await http.close()
  }
  if (target.kind !== 'bare') {
    const sizes = descriptors.map((d) => d.length)
    log(`${target.name}: the app received a ${DESCRIPTOR_HEADER} of ${Math.min(...sizes)}–${Math.max(...sizes)} bytes for each of ${hosts.length} hosts; headers: ${names.join(', ')}`)
  } else {
    log(`${target.name}: the app received headers: ${names.join(', ')}`)
  }
  return { names, descriptors }
}

// ---- measurement ---------------------------------------------------------------------------
/** One wrk run of `seconds` against `target`, with the CPU, memory and I/O of its processes. */
async function measure (target, upstream, hostsFile, seconds) {
  const statsBefore = await settledStats(upstream)
  const cpuBefore = treeCpu(target.child.pid)
  const ioBefore = treeIo(target.child.pid)
  const upBefore = cpuOf(upstream.child.pid)
  const reapedBefore = reapedChildrenCpu()
  const serverCpusBefore = cpuTimes(target.plan.server)
  const t0 = performance.now()
  const wrk = spawnChild('wrk', 'wrk', ['-t', String(THREADS), '-c', String(CONNECTIONS), '-d', `${seconds}s`, '--timeout', '10s', '-s', path.join(ROOT, 'bench/wrk-hosts.lua'), `http://127.0.0.1:${target.port}/`, '--', hostsFile], {}, { stdout: 'pipe' })
  let out = ''
  wrk.stdout.setEncoding('utf8').on('data', (d) => { out += d })
  const code = await exited(wrk, (seconds + 30) * 1_000)
  const wallS = (performance.now() - t0) / 1_000
  const cpuAfter = treeCpu(target.child.pid)
  const ioAfter = treeIo(target.child.pid)
  const upAfter = cpuOf(upstream.child.pid)
  const reapedAfter = reapedChildrenCpu()
  const serverCpusAfter = cpuTimes(target.plan.server)
  const statsAfter = await settledStats(upstream)
  if (code !== 0) throw new BenchError(`wrk exited with ${code}: ${out.slice(-500)}${wrk.stderrTail()}`)
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '))
  if (line === undefined) throw new BenchError(`wrk printed no BENCH_JSON line:\n${out}`)
  const w = JSON.parse(line.slice('BENCH_JSON '.length))
  const done = w.requests
  target.requests = (target.requests ?? 0) + done
  const served = statsAfter.served - statsBefore.served
  const withDescriptor = statsAfter.withDescriptor - statsBefore.withDescriptor
  // wrk counts a status ≥ 400 as an error; an answer that never came from the upstream (a
  // redirect or an error page of the proxy's own) shows as more responses than the upstream
  // served (which can exceed wrk's count by the requests in flight when wrk stopped).
  const notFromApp = Math.max(0, done - served)
  const noDescriptor = target.kind === 'bare' ? 0 : served - withDescriptor
  // Bare sends no X-Forwarded-For: requests without the descriptor but with it came from a
  // tenant-aware server, not from a straggler of bare's round.
  const forwardedNoDescriptor = statsAfter.forwardedWithoutDescriptor - statsBefore.forwardedWithoutDescriptor
  const e = w.errors
  const parts = [['connect', e.connect], ['read', e.read], ['write', e.write], ['timeout', e.timeout], ['status ≥ 400', e.status], ['not from the app', notFromApp], [`no descriptor (${forwardedNoDescriptor} with X-Forwarded-For)`, noDescriptor]].filter(([, n]) => n > 0)
  const delta = (a, b, field) => Math.max(0, sumTree(b, field) - sumTree(a, field, b))
  const userTicks = delta(cpuBefore, cpuAfter, 'user')
  const sysTicks = delta(cpuBefore, cpuAfter, 'sys')
  const perReq = (ticks) => done > 0 ? ticks / CLK_TCK * 1e6 / done : NaN
  const loadTicks = (upAfter - upBefore) + (reapedAfter - reapedBefore)
  // What else ran on the server's CPUs (other processes of the machine; wrk and the upstream too
  // when they share them), as a share of those CPUs' time: the round's noise.
  let others = null
  if (serverCpusBefore !== null) {
    const shared = target.plan.server.some((c) => target.plan.load.includes(c))
    const busy = serverCpusAfter.busy - serverCpusBefore.busy - (userTicks + sysTicks) - (shared ? loadTicks : 0)
    others = Math.max(0, busy) / Math.max(1, serverCpusAfter.total - serverCpusBefore.total)
  }
  return {
    requests: done,
    rps: done / (w.durationUs / 1e6),
    p50: w.latencyUs.p50 / 1_000,
    p90: w.latencyUs.p90 / 1_000,
    p99: w.latencyUs.p99 / 1_000,
    p999: w.latencyUs.p999 / 1_000,
    cpuUs: perReq(userTicks + sysTicks),
    userUs: perReq(userTicks),
    sysUs: perReq(sysTicks),
    serverUse: (userTicks + sysTicks) / CLK_TCK / wallS,
    loadUse: loadTicks / CLK_TCK / wallS,
    others,
    readsPerReq: done > 0 ? delta(ioBefore, ioAfter, 'reads') / done : NaN,
    writesPerReq: done > 0 ? delta(ioBefore, ioAfter, 'writes') / done : NaN,
    ...treeMemory(target.child.pid),
    processes: cpuAfter.size,
    errors: parts.reduce((n, [, x]) => n + x, 0),
    errorDetail: parts.map(([what, n]) => `${n} ${what}`).join(', ')
  }
}

/**
 * The upstream's counters once they stop moving: a proxy may still be forwarding requests it
 * read before wrk stopped, which would otherwise count in the next server's round. Polled every
 * 50 ms until unchanged three times running, for at most 5 s.
 */
async function settledStats (upstream) {
  const deadline = Date.now() + 5_000
  let last = await upstreamStats(upstream)
  let quiet = 0
  for (;;) {
    await sleep(50)
    const now = await upstreamStats(upstream)
    if (now.served === last.served) {
      if (++quiet >= 3) return now
    } else {
      quiet = 0
    }
    if (Date.now() > deadline) return now
    last = now
  }
}

async function upstreamStats (upstream) {
  const res = await upstream.http.request({ method: 'GET', path: '/__bench/stats', headersTimeout: 10_000, bodyTimeout: 10_000 })
  return JSON.parse(await res.body.text())
}

// ---- /proc ---------------------------------------------------------------------------------
function statFields (pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return text.slice(text.lastIndexOf(') ') + 2).split(' ') // fields from the 3rd (state) on
  } catch {
    return null // gone
  }
}

/** `pid` and every descendant, each as [pid, start time]: this kernel has no /proc/…/children, so from every process's parent. */
function processTree (rootPid) {
  const parentOf = new Map()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const f = statFields(entry)
    if (f !== null) parentOf.set(Number(entry), { ppid: Number(f[1]), start: f[19] })
  }
  const tree = []
  const root = parentOf.get(rootPid)
  if (root === undefined) return tree
  tree.push([rootPid, root.start])
  for (let i = 0; i < tree.length; i++) {
    for (const [pid, p] of parentOf) if (p.ppid === tree[i][0]) tree.push([pid, p.start])
  }
  return tree
}

/** utime and stime (ticks) of every process of the tree, by "pid:start" so a reused PID is a new process. */
function treeCpu (rootPid) {
  const out = new Map()
  for (const [pid, start] of processTree(rootPid)) {
    const f = statFields(pid)
    if (f !== null) out.set(`${pid}:${start}`, { user: Number(f[11]), sys: Number(f[12]) })
  }
  return out
}

function treeIo (rootPid) {
  const out = new Map()
  for (const [pid, start] of processTree(rootPid)) {
    try {
      const io = Object.fromEntries(readFileSync(`/proc/${pid}/io`, 'utf8').trim().split('\n').map((l) => l.split(': ')))
      out.set(`${pid}:${start}`, { reads: Number(io.syscr), writes: Number(io.syscw) })
    } catch { // gone, or not ours to read
    }
  }
  return out
}

/** Sum of `field` over the processes of `m` (only those also in `within`, when given: a process that exited took its figures along). */
function sumTree (m, field, within = null) {
  let n = 0
  for (const [id, v] of m) if (within === null || within.has(id)) n += v[field]
  return n
}

/** Busy (including time the hypervisor took: steal) and total ticks of `cpus`, from /proc/stat; null for no pinning. */
function cpuTimes (cpus) {
  if (cpus === null) return null
  let busy = 0
  let total = 0
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line)
    if (m === null || !cpus.includes(Number(m[1]))) continue
    const [user, nice, system, idle, iowait, irq, softirq, steal] = m[2].trim().split(/\s+/).map(Number)
    busy += user + nice + system + irq + softirq + steal
    total += user + nice + system + idle + iowait + irq + softirq + steal
  }
  return { busy, total }
}

function cpuOf (pid) {
  const f = statFields(pid)
  return f === null ? 0 : Number(f[11]) + Number(f[12])
}

/** CPU ticks of this process's children that have exited and been waited for (wrk runs). */
function reapedChildrenCpu () {
  const f = statFields('self')
  return Number(f[13]) + Number(f[14]) // cutime + cstime
}

/**
 * Resident memory of the tree: the sum of VmRSS, and the sum of PSS (each shared page split among
 * the processes sharing it, so nginx's master and worker, or several workers, count a page once).
 */
function treeMemory (rootPid) {
  let rss = 0
  let pss = 0
  for (const [pid] of processTree(rootPid)) {
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
      rss += Number(/^Rss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024
      pss += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024
    } catch { /* gone */ }
  }
  return { rss, pss }
}

// ---- processes -----------------------------------------------------------------------------
/**
 * Spawns a child (stdout: 'ignore', 'pipe' or a file path to append to; stderr kept, its last
 * 4 KiB shown if the child fails).
 */
function spawnChild (name, cmd, args, env, { stdout = 'ignore' } = {}) {
  let out = stdout
  let fd = null
  if (stdout !== 'ignore' && stdout !== 'pipe') out = fd = openSync(stdout, 'a')
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', out, 'pipe'] })
  if (fd !== null) closeSync(fd)
  let tail = ''
  child.stderr.setEncoding('utf8').on('data', (d) => { tail = (tail + d).slice(-4_096) })
  child.stderrTail = () => tail === '' ? '' : `\n--- ${name} stderr ---\n${tail}`
  child.benchName = name
  child.tree = [] // the descendants last seen, to stop with it
  children.add(child)
  child.once('exit', () => children.delete(child))
  child.once('error', (err) => { tail += `\n${err.message}` })
  return child
}

async function firstJsonLine (child, name) {
  const lines = createInterface({ input: child.stdout })
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new BenchError(`${name} did not start in ${START_TIMEOUT_MS / 1000} s${child.stderrTail()}`)), START_TIMEOUT_MS)
      lines.once('line', (line) => { clearTimeout(timer); resolve(JSON.parse(line)) })
      child.once('exit', (code) => { clearTimeout(timer); reject(new BenchError(`${name} exited with ${code}${child.stderrTail()}`)) })
    })
  } finally {
    lines.close()
    child.stdout.resume() // keep draining, so the child never blocks on a full pipe
  }
}

/** Polls `check` every 50 ms until it resolves true; fails if the child exits or after START_TIMEOUT_MS. */
async function waitFor (child, name, check) {
  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new BenchError(`${name} exited with ${child.exitCode ?? child.signalCode} before it answered${child.stderrTail()}`)
    try {
      if (await check()) return
    } catch { // not listening yet
    }
    if (Date.now() > deadline) throw new BenchError(`${name} did not answer within ${START_TIMEOUT_MS / 1000} s${child.stderrTail()}`)
    await sleep(50)
  }
}

async function exited (child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { killTree(child, 'SIGKILL'); reject(new BenchError(`${child.benchName} did not exit within ${timeoutMs} ms`)) }, timeoutMs)
    child.once('exit', (code, signal) => { clearTimeout(timer); resolve(code ?? signal) })
  })
}

/** SIGTERM to the child (the servers exit at once and write their profiles), then SIGKILL to it and its descendants after STOP_TIMEOUT_MS. */
async function stopChild (child) {
  if (child.pid === undefined) { children.delete(child); return }
  child.tree = processTree(child.pid)
  if (child.exitCode === null && child.signalCode === null) {
    await new Promise((resolve) => {
      const timer = setTimeout(() => { killTree(child, 'SIGKILL'); resolve() }, STOP_TIMEOUT_MS)
      child.once('exit', () => { clearTimeout(timer); resolve() })
      child.kill('SIGTERM')
    })
  }
  // Descendants a parent leaves behind (a worker whose master was killed) go too.
  killTree(child, 'SIGKILL')
  children.delete(child)
}

/** Sends `signal` to the child and to the descendants recorded or found now, each by PID, if it is still the same process. */
function killTree (child, signal) {
  if (child.pid === undefined) return
  const live = child.exitCode === null && child.signalCode === null ? processTree(child.pid) : []
  const seen = new Map([...child.tree, ...live])
  for (const [pid, start] of seen) {
    if (pid === child.pid && (child.exitCode !== null || child.signalCode !== null)) continue
    const f = statFields(pid)
    if (f === null || f[19] !== start) continue // gone, or the PID now belongs to someone else
    try { process.kill(pid, signal) } catch { /* exited meanwhile */ }
  }
}


async function status (port, urlPath, hostname) {
  const http = new Pool(`http://127.0.0.1:${port}`, { connections: 1 })
  try {
    const res = await http.request({ method: 'GET', path: urlPath, headers: { host: hostname }, headersTimeout: 5_000, bodyTimeout: 5_000 })
    await res.body.dump()
    return res.statusCode
  } finally {
    await http.close()
  }
}

/** The per-worker memory a primary's /ready lists (after start, index loaded), or null if it lists none. */
async function workerMemory (opsPort) {
  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    const http = new Pool(`http://127.0.0.1:${opsPort}`, { connections: 1 })
    try {
      const res = await http.request({ method: 'GET', path: '/ready', headersTimeout: 5_000, bodyTimeout: 5_000 })
      const body = await res.body.json()
      const processes = body.workers?.processes ?? null
      if (processes === null) return null
      if (processes.length === body.workers.expected && processes.every((p) => p.indexHeapBytes !== null)) return processes
    } catch { /* not answering yet */ } finally {
      await http.close()
    }
    if (Date.now() > deadline) return null
    await sleep(200)
  }
}

function describeWorkerMemory (processes) {
  if (processes === null) return 'no per-worker memory in /ready'
  return processes.map((p) => `worker ${p.slot}: RSS ${mb(p.rssBytes)}, heap ${mb(p.heapUsedBytes)}, index ${mb(p.indexHeapBytes)}`).join('; ')
}

// ---- report --------------------------------------------------------------------------------
function report ({ targets, rounds }) {
  const row = (t) => {
    const rs = rounds.get(t.name)
    const rps = rs.map((r) => r.rps)
    return {
      t,
      rps: median(rps),
      rpsMin: Math.min(...rps),
      rpsMax: Math.max(...rps),
      p50: median(rs.map((r) => r.p50)),
      p99: median(rs.map((r) => r.p99)),
      cpu: median(rs.map((r) => r.cpuUs)),
      serverUse: median(rs.map((r) => r.serverUse)),
      loadUse: median(rs.map((r) => r.loadUse)),
      others: rs[0].others === null ? null : median(rs.map((r) => r.others)),
      pss: Math.max(...rs.map((r) => r.pss)),
      processes: Math.max(...rs.map((r) => r.processes)),
      requests: rs.reduce((n, r) => n + r.requests, 0),
      errors: rs.reduce((n, r) => n + r.errors, 0),
      errorDetail: rs.map((r) => r.errorDetail).filter((d) => d !== '').join('; ')
    }
  }
  const rows = targets.map(row)
  const bare = rows.find((r) => r.t.kind === 'bare')
  const nginx = rows.find((r) => r.t.kind === 'nginx')
  const tps = rows.filter((r) => r.t.kind === 'tenant-proxy')
  const base = rows.find((r) => r.t.baseline === true)
  // A server that used less than 90 % of its CPUs while the load side used 90 % of its own was
  // waiting for the load generator, not the other way round.
  const bound = (r) => r.t.plan.server !== null && r.serverUse < 0.9 * r.t.plan.server.length && r.loadUse >= 0.9 * r.t.plan.load.length ? ' (load-generator bound)' : ''
  const f = (x, d = 0) => Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : 'n/a'
  const ratio = (a, b) => Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : 'n/a'
  // Over every request the server answered (probes, warm-up and rounds): its log file is that long.
  const logPerReq = (r) => r.t.logBytes === null || r.t.logBytes === undefined ? '–' : f(r.t.logBytes / r.t.requests, 0)
  const lines = [
    '# Benchmark: the data path',
    '',
    ...noiseNote(rows),
    `${startedAt.toISOString()} · code ${codeRevision} · node ${process.version} · wrk ${wrkVersion()}${facts.nginx === null ? '' : ` · nginx ${facts.nginx.version}`} · nproc ${CPUS} · load average ${loadAtStart.map((x) => x.toFixed(2)).join(' ')} at start, ${loadavg().map((x) => x.toFixed(2)).join(' ')} at end`,
    '',
    `${TENANTS.toLocaleString('en-US')} tenants in the registry, ${HOSTS.toLocaleString('en-US')} distinct hosts requested in turn · wrk, ${THREADS} thread${THREADS === 1 ? '' : 's'}, ${CONNECTIONS} connections · ${ROUNDS} interleaved rounds of ${SECONDS} s after ${WARMUP_SECONDS} s of warm-up per server · medians · ${PIN ? `each server on CPU ${cpuList(cpuPlan(1).server)}${WORKERS.some((w) => w !== null && w > 1) ? ' (several workers: see the CPUs column)' : ''}, wrk and the upstream on CPU ${cpuList(LOAD_CPUS)}` : 'no CPU pinning'}`,
    '',
    `Command: \`${commandLine()}\``,
    '',
    '| server | req/s (range) | p50 ms | p99 ms | CPU µs/request | CPUs | CPU use | others on its CPUs | memory (PSS) | access log bytes/request | errors |',
    '|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.t.label} | ${f(r.rps)} (${f(r.rpsMin)}–${f(r.rpsMax)})${bound(r)} | ${f(r.p50, 2)} | ${f(r.p99, 2)} | ${f(r.cpu, 1)} | ${r.t.plan.server === null ? 'any' : cpuList(r.t.plan.server)} | ${pctOf(r.serverUse)} | ${r.others === null ? 'n/a' : pctOf(r.others)} | ${mb(r.pss)}${r.processes > 1 ? ` (${r.processes} processes)` : ''} | ${logPerReq(r)} | ${r.errors}${r.errors > 0 ? ` (${r.errorDetail})` : ''} |`),
    ''
  ]
  if (tps.length > 0 && (bare !== undefined || nginx !== undefined)) {
    lines.push('| ratio | req/s | CPU µs/request | p99 |', '|---|---:|---:|---:|')
    for (const tp of tps) {
      if (bare !== undefined) lines.push(`| ${tp.t.name} / bare | ${ratio(tp.rps, bare.rps)} | ${ratio(tp.cpu, bare.cpu)} | ${ratio(tp.p99, bare.p99)} |`)
      if (nginx !== undefined) lines.push(`| ${tp.t.name} / nginx | ${ratio(tp.rps, nginx.rps)} | ${ratio(tp.cpu, nginx.cpu)} | ${ratio(tp.p99, nginx.p99)} |`)
      if (base !== undefined && tp !== base) lines.push(`| ${tp.t.name} / baseline | ${ratio(tp.rps, base.rps)} | ${ratio(tp.cpu, base.cpu)} | ${ratio(tp.p99, base.p99)} |`)
    }
    lines.push('')
  }
  const withWorkers = tps.filter((r) => r.t.workerMemory !== undefined && r.t.workerMemory !== null)
  if (withWorkers.length > 0) {
    lines.push('Memory of each worker after start (its /ready entry; the index measured by a full GC on either side of building it):', '')
    for (const r of withWorkers) lines.push(`- ${r.t.name}: ${describeWorkerMemory(r.t.workerMemory)}`)
    lines.push('')
  }
  const measured = tps.filter((r) => r !== base) // the targets are this checkout's, not the baseline's
  if (measured.length > 0) {
    lines.push('Targets (issue 14):', '', '| target | figure | result |', '|---|---|---|')
    for (const tp of measured) {
      const tag = measured.length > 1 ? `${tp.t.name}: ` : ''
      if (bare !== undefined) lines.push(`| ${tag}req/s ≥ 1.0× bare (required) | ${ratio(tp.rps, bare.rps)} | ${verdict(tp.rps >= bare.rps)}${noisy(tp, bare)} |`)
      lines.push(`| ${tag}CPU per request ≤ 70 µs (aimed for) | ${f(tp.cpu, 1)} µs | ${verdict(tp.cpu <= 70)} |`)
      if (bare !== undefined) lines.push(`| ${tag}p99 latency ≤ bare's (aimed for) | ${f(tp.p99, 2)} ms vs ${f(bare.p99, 2)} ms | ${verdict(tp.p99 <= bare.p99)}${noisy(tp, bare)} |`)
    }
    lines.push('')
  }
  lines.push('Per round (req/s · p99 ms · CPU µs/request):', '', `| server | ${Array.from({ length: ROUNDS }, (_, i) => `round ${i + 1}`).join(' | ')} |`, `|---|${'---|'.repeat(ROUNDS)}`)
  for (const r of rows) lines.push(`| ${r.t.name} | ${rounds.get(r.t.name).map((x) => `${f(x.rps)} · ${f(x.p99, 2)} · ${f(x.cpuUs, 1)}`).join(' | ')} |`)
  lines.push('')
  if (Object.keys(facts.headers).length > 0) {
    lines.push('Request headers the app received (one probe request per host through each server before the rounds):', '')
    for (const [name, names] of Object.entries(facts.headers)) lines.push(`- ${name}: ${names.join(', ')}`)
    lines.push('')
  }
  for (const note of facts.notes) lines.push(`Note: ${note}`, '')
  lines.push(
    '## How the benchmark works',
    '',
    `\`npm run bench\` (bench/run.js) builds dist/, creates a throwaway registry database with ${TENANTS.toLocaleString('en-US')} tenants (one hostname each, \`t<i>.bench.example\`) and starts a local upstream (bench/upstream.js: a 12-byte JSON answer) and the servers, all on 127.0.0.1:`,
    '',
    '- **bare**: Fastify + @fastify/http-proxy with the upstream options tenant-proxy uses and no tenant logic (bench/bare-proxy.js): the floor a Fastify proxy starts from.',
    `- **tenant-proxy**: \`node dist/src/main.js serve\` with its default configuration except the addresses, an ES256 key, no snapshot file and log level ${LOG_LEVEL} (${LOG_LEVEL === 'info' ? 'the access log on' : 'no access log'}), stdout to a file.`,
    ...(BASELINE === null ? [] : [`- **baseline**: the same tenant-proxy setup run from another checkout's dist/ (BENCH_BASELINE, code ${BASELINE.revision}), in the same rounds.`]),
    `- **nginx** (where installed; skipped with a note otherwise): one worker, configured in the run's temp directory. A \`map $host\` over all ${TENANTS.toLocaleString('en-US')} hostnames, not only the requested ones, so the lookup works on a table the registry's size; ${facts.realDescriptors === false ? `without tenant-proxy in the run, every host maps to a distinct ${facts.descriptorBytes}-byte stand-in` : `the requested hosts map to the descriptors tenant-proxy signed for them (the very bytes it injects), every other host to a distinct string of the median descriptor's size${facts.descriptorBytes === null ? '' : ` (${facts.descriptorBytes} bytes)`}`}; unknown hosts get 404. It sets the descriptor header and the forwarding headers tenant-proxy sets (Host, X-Forwarded-For/-Proto/-Host/-Port, X-Request-Id, also on the response), keeps connections to the upstream (\`keepalive 128\`, HTTP/1.1) and writes a JSON access line per request with \`buffer=16k flush=1s\` (tenant-proxy batches its lines in 16 KiB and flushes every second). Started as root, the worker keeps the root user instead of dropping to nobody, so it can use the private temp directory and the benchmark can read its /proc files. It shows what the same work costs outside Node.`,
    '',
    `wrk drives each server in turn for a round of ${SECONDS} s with ${CONNECTIONS} keep-alive connections; its script (bench/wrk-hosts.lua) sets the Host header of each request to the next of the ${HOSTS.toLocaleString('en-US')} requested hosts, spread evenly over the registry, and prints the latency percentiles. The order of the servers alternates between rounds, so drift in the machine's load hits each alike; figures are the medians of the rounds. ${PIN ? `The server under test runs alone on CPU ${cpuList(cpuPlan(1).server)} (taskset); wrk, the upstream and the benchmark share CPU ${cpuList(LOAD_CPUS)}. "CPU use" is the server's CPU time over the round's wall time: near 100 % means the server was the bottleneck; below, with the load side's CPU full, the load generator was ("load-generator bound"). "Others on its CPUs" is the time anything else ran on the server's CPUs (/proc/stat), as a share of their time: near 0 on a quiet machine. Other work on the machine fills whatever a server leaves idle, and takes time from a busy server: its req/s drops and its latency grows, while its CPU µs/request moves much less.` : 'No CPU pinning (BENCH_PIN=0, one CPU, or no taskset).'}`,
    '',
    'CPU µs/request is the utime + stime (/proc/<pid>/stat) of every process of the server (nginx\'s master and worker; all of tenant-proxy\'s workers) over the round, divided by the responses wrk counted. Memory is the sum over those processes of their proportional set size (PSS, /proc/<pid>/smaps_rollup: resident memory with each shared page split among the processes that share it, so a page nginx\'s master and worker share counts once; for one process it is its RSS less its share of shared libraries), the highest after any round. An error is any wrk socket error or timeout, any status ≥ 400, any response the upstream did not serve (the upstream counts what it served; more responses than that means the proxy answered by itself), and, for tenant-proxy and nginx, any request that reached the upstream without the descriptor header. Before the rounds, each server is sent one request per requested host for the headers the app received (listed above).',
    '',
    'Regenerate with `npm run bench` on a machine as idle as you can get it (needs wrk and the PostgreSQL on 127.0.0.1:5432 or BENCH_DATABASE_URL; nginx is optional); bench/run.js lists the knobs.',
    ''
  )
  const text = lines.join('\n')
  if (OUTPUT !== '') writeFileSync(path.resolve(ROOT, OUTPUT), text)
  console.log(text)
}

/** A warning on top when the machine was busy with other work during the run. */
function noiseNote (rows) {
  const others = rows.map((r) => r.others).filter((x) => x !== null)
  const worst = others.length === 0 ? null : Math.max(...others)
  const load = Math.max(loadAtStart[0], loadavg()[0])
  if (load < 1 && (worst === null || worst < 0.05)) return []
  return [`**Preliminary**: the machine was running other work (one-minute load average ${loadAtStart[0].toFixed(1)} at the start, ${loadavg()[0].toFixed(1)} at the end${worst === null ? '' : `; other processes ran on a server's CPU up to ${pctOf(worst)} of the time, the highest of the servers' medians`}). Absolute figures are lower and noisier than on an idle machine; the ratios, from interleaved rounds, hold better.`, '']
}

/**
 * A caveat for a verdict on wall-clock figures (req/s, latency) when other work ran on the
 * servers' CPU more than a fifth of the time: then it decided those figures as much as the servers.
 */
function noisy (...rows) {
  const worst = Math.max(...rows.map((r) => r.others ?? 0))
  return worst > 0.2 ? ` (inconclusive: other work ran on the servers' CPU ${pctOf(worst)} of the time)` : ''
}

function verdict (pass) { return pass ? 'pass' : '**FAIL**' }

// ---- small things --------------------------------------------------------------------------
/** A knob that makes no sense stops the run before anything is started. */
function badKnob (message) {
  console.error(`bench: ${message}`)
  process.exit(2)
}

/** BENCH_BASELINE: another checkout of tenant-proxy, built, whose dist/ runs beside this one's. */
function baselineCheckout (dir) {
  if (dir === undefined || dir === '') return null
  const abs = path.resolve(dir)
  try {
    statSync(path.join(abs, 'dist/src/main.js'))
  } catch {
    badKnob(`BENCH_BASELINE: ${abs} has no dist/src/main.js (a checkout of tenant-proxy after \`npm ci && npm run build\`)`)
  }
  return { dir: abs, revision: revision(abs) }
}

function int (name, dflt, min) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min) badKnob(`${name} must be an integer ≥ ${min}, not ${JSON.stringify(raw)}`)
  return n
}

/** The commit measured, and whether src/ had uncommitted changes (dist/ is built from the working tree). */
function revision (dir = ROOT) {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: dir, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: dir, encoding: 'utf8' }).trim() !== ''
    return `${head}${dirty ? ' + uncommitted changes in src/' : ''}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

function wrkVersion () {
  const r = spawnSync('wrk', ['--version'], { encoding: 'utf8' })
  return /wrk (\S+)/.exec(`${r.stdout}${r.stderr}`)?.[1] ?? 'unknown'
}

function commandLine () {
  // A baseline's directory is this machine's business; its commit is what matters.
  const value = (k) => k === 'BENCH_DATABASE_URL' ? redact(process.env[k]) : k === 'BENCH_BASELINE' ? `<checkout at ${BASELINE.revision}>` : process.env[k]
  const env = KNOBS.filter((k) => process.env[k] !== undefined).map((k) => `${k}=${value(k)}`)
  return [...env, COMMAND].join(' ')
}

function redact (url) {
  const u = new URL(url)
  if (u.password !== '') u.password = 'REDACTED'
  return u.toString()
}

function fileSize (file) {
  try { return statSync(file).size } catch { return null }
}

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

function cpuList (cpus) { return cpus === null ? 'any' : cpus.join(',') }
function sleep (msec) { return new Promise((resolve) => setTimeout(resolve, msec)) }
function mb (bytes) { return `${(bytes / 1024 / 1024).toFixed(0)} MB` }
function ms (x) { return `${x.toFixed(2)} ms` }
function pctOf (x) { return `${(x * 100).toFixed(0)} %` }
function log (line) { console.error(line) }
