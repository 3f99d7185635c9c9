// Benchmark: tenant-proxy (100,000 tenants in the registry) against bare Fastify +
// @fastify/http-proxy, both in front of the same local upstream, measured in interleaved rounds
// with autocannon so machine drift hits both alike. Reports req/s, p50/p99 latency and the
// proxy process's CPU time per request, and the ratio tenant-proxy / bare.
//
//   npm run bench                       # defaults below
//   BENCH_DATABASE_URL=postgres://…  BENCH_TENANTS=100000 BENCH_ROUNDS=3 BENCH_SECONDS=5 BENCH_CONNECTIONS=32 npm run bench
//   BENCH_PROFILE_DIR=/tmp/prof npm run bench   # also writes a CPU profile per process
//
// Everything is on 127.0.0.1; every round is bounded in time; the throwaway database is dropped.
import { spawn, spawnSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import autocannon from 'autocannon'
import pg from 'pg'

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const TENANTS = Number(process.env.BENCH_TENANTS ?? 100_000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32)
const HOSTS = 1_000 // distinct tenant hosts cycled through by the load generator
const CLK_TCK = 100 // Linux USER_HZ: /proc/<pid>/stat times are in 1/100 s
// With 2+ CPUs, each proxy under test runs alone on the last CPU and the load generator and the
// upstream share the others, so the proxies' throughput is not decided by the scheduler's mood.
// BENCH_PIN=0 turns it off.
const CPUS = (await import('node:os')).availableParallelism()
const PIN = process.env.BENCH_PIN !== '0' && CPUS >= 2 && spawnSync('taskset', ['-V']).status === 0
if (PIN) spawnSync('taskset', ['-a', '-p', '-c', `0-${CPUS - 2}`, String(process.pid)])
const pinned = (args) => PIN ? ['taskset', ['-c', String(CPUS - 1), 'node', ...args]] : ['node', args]

const children = []
process.on('exit', () => { for (const c of children) c.kill('SIGKILL') })

const dbName = `tp_bench_${process.pid}`
const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`CREATE DATABASE ${dbName}`)
const dbUrl = new URL(ADMIN_URL)
dbUrl.pathname = `/${dbName}`
try {
  await seed(dbUrl.toString())
  const upstream = await start('node', ['bench/upstream.js'])
  const origin = `http://127.0.0.1:${upstream.info.port}`
  const bare = await start(...pinned(['bench/bare-proxy.js', origin]))
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })
  const trafficPort = await freePort()
  const tp = await start(...pinned(['dist/src/main.js', 'serve']), {
    REGISTRY_DATABASE_URL: dbUrl.toString(),
    TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
    TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
    TENANT_PROXY_OPS_HOST: '127.0.0.1',
    TENANT_PROXY_OPS_PORT: String(await freePort()),
    TENANT_PROXY_UPSTREAM_URLS: origin,
    TENANT_PROXY_DESCRIPTOR_KEYS: key,
    TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
    TENANT_PROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info'
  }, null)
  await waitForUp(trafficPort)
  tp.info = { port: trafficPort }

  const targets = { bare: { port: bare.info.port, pid: bare.child.pid }, 'tenant-proxy': { port: tp.info.port, pid: tp.child.pid } }
  const results = { bare: [], 'tenant-proxy': [] }
  for (const name of Object.keys(targets)) await measure(targets[name], 2) // warm-up (JIT, connection pools, descriptor cache)
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? ['bare', 'tenant-proxy'] : ['tenant-proxy', 'bare']
    for (const name of order) {
      const r = await measure(targets[name], SECONDS)
      results[name].push(r)
      console.error(`round ${round} ${name.padEnd(12)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50} ms  p99 ${r.p99} ms  ${r.cpuUsPerReq.toFixed(1)} µs CPU/req (user ${r.userUsPerReq.toFixed(1)}, sys ${r.sysUsPerReq.toFixed(1)})  ${r.readsPerReq.toFixed(2)} reads ${r.writesPerReq.toFixed(2)} writes/req  RSS ${r.rssMb.toFixed(0)} MB  errors ${r.errors}`)
    }
  }
  report(results)
} finally {
  // Wait (bounded) for the children to exit so they can write their profiles and flush logs.
  await Promise.all(children.map((c) => c.exitCode !== null ? null : new Promise((resolve) => {
    const timer = setTimeout(resolve, 15_000)
    c.once('exit', () => { clearTimeout(timer); resolve() })
    c.kill('SIGTERM')
  })))
  await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
  await admin.end()
}

async function seed (url) {
  const migrate = await start('node', ['dist/src/main.js', 'migrate'], { REGISTRY_DATABASE_URL: url }, null)
  await new Promise((resolve) => migrate.child.once('exit', resolve))
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  const t0 = performance.now()
  await c.query('BEGIN')
  await c.query(`INSERT INTO tenant_proxy.tenants (slug, database_name) SELECT 't' || i, 'db_' || i FROM generate_series(1, $1) AS i`, [TENANTS])
  await c.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.bench.example', id, 'primary' FROM tenant_proxy.tenants`)
  await c.query('COMMIT')
  await c.end()
  console.error(`seeded ${TENANTS} tenants in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
}

async function measure (target, seconds) {
  const before = cpuTicks(target.pid)
  const splitBefore = cpuSplit(target.pid)
  const ioBefore = syscalls(target.pid)
  // Cycle through HOSTS distinct tenants; bare ignores the Host header.
  const requests = Array.from({ length: HOSTS }, (_, i) => ({ method: 'GET', path: '/', headers: { host: `t${1 + Math.floor(i * TENANTS / HOSTS)}.bench.example` } }))
  const result = await autocannon({ url: `http://127.0.0.1:${target.port}`, connections: CONNECTIONS, duration: seconds, requests })
  const ticks = cpuTicks(target.pid) - before
  const split = cpuSplit(target.pid)
  const io = syscalls(target.pid)
  const done = result.requests.total
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    cpuUsPerReq: done > 0 ? (ticks / CLK_TCK) * 1e6 / done : NaN,
    errors: result.errors + result.non2xx,
    userUsPerReq: (split.user - splitBefore.user) / CLK_TCK * 1e6 / done,
    sysUsPerReq: (split.sys - splitBefore.sys) / CLK_TCK * 1e6 / done,
    rssMb: Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${target.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024,
    readsPerReq: (io.reads - ioBefore.reads) / done,
    writesPerReq: (io.writes - ioBefore.writes) / done,
    total: done
  }
}

async function freePort () {
  const { createServer } = await import('node:net')
  return await new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function waitForUp (port) {
  const deadline = Date.now() + 60_000
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/up`)
      if (res.status === 200) return
    } catch { // not listening yet
    }
    if (Date.now() > deadline) throw new Error('tenant-proxy did not answer /up within 60 s')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

function cpuSplit (pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return { user: Number(fields[11]), sys: Number(fields[12]) }
}

function cpuTicks (pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return Number(fields[11]) + Number(fields[12]) // utime + stime
}

/** Read and write system calls so far (/proc/<pid>/io): a proxy that writes more often pays for it in kernel time. */
function syscalls (pid) {
  const io = Object.fromEntries(readFileSync(`/proc/${pid}/io`, 'utf8').trim().split('\n').map((l) => l.split(': ')))
  return { reads: Number(io.syscr), writes: Number(io.syscw) }
}

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

function report (results) {
  const row = (name) => {
    const rs = results[name]
    return { rps: median(rs.map((r) => r.rps)), p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)), cpu: median(rs.map((r) => r.cpuUsPerReq)), errors: rs.reduce((n, r) => n + r.errors, 0) }
  }
  const bare = row('bare')
  const tp = row('tenant-proxy')
  const lines = [
    `# Benchmark: tenant-proxy vs bare Fastify + @fastify/http-proxy`,
    '',
    `${new Date().toISOString()} · node ${process.version} · ${PIN ? `each proxy pinned to CPU ${CPUS - 1}, load generator and upstream on the other${CPUS > 2 ? 's' : ''}` : 'no CPU pinning'} · ${TENANTS} tenants in the registry, ${HOSTS} distinct hosts requested · ${CONNECTIONS} connections · ${ROUNDS} interleaved rounds of ${SECONDS} s · medians`,
    '',
    '| proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req | errors |',
    '|---|---|---|---|---|---|',
    `| bare Fastify + @fastify/http-proxy | ${bare.rps.toFixed(0)} | ${bare.p50} | ${bare.p99} | ${bare.cpu.toFixed(1)} | ${bare.errors} |`,
    `| tenant-proxy | ${tp.rps.toFixed(0)} | ${tp.p50} | ${tp.p99} | ${tp.cpu.toFixed(1)} | ${tp.errors} |`,
    '',
    `**tenant-proxy / bare req/s: ${(tp.rps / bare.rps).toFixed(3)}** (target ≥ 0.95); CPU per request ratio ${(tp.cpu / bare.cpu).toFixed(3)}.`,
    '',
    'Regenerate with `npm run bench` (numbers drift with the machine; compare the ratio, not the absolute figures).',
    ''
  ]
  writeFileSync('docs/benchmarks.md', lines.join('\n'))
  console.log(lines.join('\n'))
}

/** Spawns a child, resolving once `ready(line)` returns info (first stdout JSON line by default). */
async function start (cmd, args, env = {}, ready = (line) => JSON.parse(line)) {
  // Without a readiness line to read, stdout (request logs) goes straight to /dev/null.
  // BENCH_PROFILE_DIR=/tmp/prof writes a V8 CPU profile of every node child (open in Chrome DevTools).
  if (process.env.BENCH_PROFILE_DIR) {
    const flags = ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE_DIR}`]
    if (cmd === 'node') args = [...flags, ...args]
    else if (cmd === 'taskset') args = [...args.slice(0, 3), ...flags, ...args.slice(3)] // taskset -c N node <flags> …
  }
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', ready === null ? 'ignore' : 'pipe', 'inherit'] })
  children.push(child)
  if (ready === null) return { child, info: null }
  const lines = createInterface({ input: child.stdout })
  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args.join(' ')} did not start in 60 s`)), 60_000)
    lines.on('line', (line) => {
      let value
      try { value = ready(line) } catch { value = undefined }
      if (value !== undefined) {
        clearTimeout(timer)
        lines.removeAllListeners('line')
        lines.close()
        resolve(value)
      }
    })
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${code}`)))
  })
  // Keep draining stdout (request logs) so the child never blocks on a full pipe.
  child.stdout.resume()
  return { child, info }
}
