// Fleet benchmark: N proxies against one registry (issue 12, item 8). Starts a private PostgreSQL
// (initdb in a temp directory, on a free loopback port, trust authentication, stopped by its PID at
// the end and on failure; the machine's own PostgreSQL is never used), seeds it, then for each N:
//
//   boot          N proxies spawned together → every one answers /up 200 (and the feed is synced)
//   propagation   SQL commit → every proxy answers with the change (p50/p99 over all pairs)
//   restart       the registry restarted (fast shutdown, start) with nothing changed: registry CPU
//                 seconds of the new server, rows its statements returned (pg_stat_statements),
//                 bytes it sent to the proxies (the kernel's TCP counters), time until every
//                 proxy has reconnected and resynced, full loads, proxies that exited, and the
//                 latency of a paced request loop against every proxy meanwhile (stalls)
//   rebuild       one registry transaction with more changes than a delta reads (10,000) makes every
//                 proxy run a full load while the request loops run: latency added to their p99
//                 and max, and the longest event-loop delay each proxy reported meanwhile
//   connections   client connections per proxy (pg_stat_activity by application_name): settled
//                 after an idle period, and the most seen while booting and during the restart
//   memory        VmRSS per proxy at /up and after the propagation run
//
//   npm run bench:fleet                                   # N = 4, 12, 24 with 100,000 tenants
//   BENCH_FLEET_PROXIES=2 BENCH_FLEET_TENANTS=1000000 npm run bench:fleet   # a million, small N
//   BENCH_FLEET_QUICK=1 npm run bench:fleet               # N = 2, 2,000 tenants, no idle wait (the test)
//   BENCH_FLEET_CHANGES=200 BENCH_FLEET_IDLE_MS=11000 …   # changes per N; idle wait before counting settled connections
//   BENCH_FLEET_PACE_MS=5 …                               # ms between two polls of one proxy while timing a change
//   BENCH_FLEET_JSON=/tmp/fleet.json …                    # also write the figures as JSON
//   BENCH_PG_BIN=/usr/lib/postgresql/15/bin …             # where initdb and postgres are
//
// Prints a Markdown table (docs/fleet.md holds measured runs; this script never rewrites it).
// The proxies connect to the registry directly, as in production: bytes are counted from the
// kernel's per-socket TCP counters (ss -i), not by a relay in the path (one relay process for all
// the proxies' connections added two hops to every round trip and, with 12 proxies, doubled the
// propagation time it was meant to observe).
//
// Every loop is bounded in count and time; every child (PostgreSQL, upstream, proxies) is
// stopped by its PID on success, on error and on SIGINT/SIGTERM, and the temp directory removed.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { chownSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import pg from 'pg'
import { Client } from 'undici'
import { freePort } from './free-port.js'

const QUICK = process.env.BENCH_FLEET_QUICK === '1'
const PROXIES = (process.env.BENCH_FLEET_PROXIES ?? (QUICK ? '2' : '4,12,24')).split(',').map(Number)
const TENANTS = Number(process.env.BENCH_FLEET_TENANTS ?? (QUICK ? 2_000 : 100_000))
const CHANGES = Number(process.env.BENCH_FLEET_CHANGES ?? (QUICK ? 20 : 200))
const IDLE_MS = Number(process.env.BENCH_FLEET_IDLE_MS ?? (QUICK ? 0 : 11_000))
const JSON_OUT = process.env.BENCH_FLEET_JSON ?? null
const PG_BIN = process.env.BENCH_PG_BIN ?? '/usr/lib/postgresql/15/bin'
const NODE = process.env.BENCH_NODE ?? process.execPath
const HOSTS = Math.min(1_000, TENANTS)
const UP_POLL_MS = 25
const CHANGE_BUDGET_MS = 2_000 // per (change, proxy): give up after this long
const MAX_POLLS = 100_000 // per (change, proxy), besides the time budget
const PROPAGATION_PACE_MS = Number(process.env.BENCH_FLEET_PACE_MS ?? 5) // between two polls of one proxy for a change
// Generous: on a loaded 2-core machine 12 proxies loading 100,000 tenants together took over 60 s.
const BOOT_TIMEOUT_MS = Math.max(180_000, TENANTS / 5) // 200 s at a million
const RESYNC_TIMEOUT_MS = BOOT_TIMEOUT_MS
const STALL_PACE_MS = 20 // one request per proxy every 20 ms during the restart
const STALL_BASELINE_MS = QUICK ? 500 : 2_000
const IDLE_RESTART_MS = QUICK ? 300 : 1_000
const STALL_AFTER_MS = QUICK ? 300 : 1_000 // the request loops run on this long after the last proxy resynced
const METRICS_POLL_MS = 100
const CONN_SAMPLE_MS = 250
const APP = 'fleet' // registry.applicationName of proxy i is `fleet<i>`

for (const [name, value, min] of [['BENCH_FLEET_TENANTS', TENANTS, 1], ['BENCH_FLEET_CHANGES', CHANGES, 1], ['BENCH_FLEET_IDLE_MS', IDLE_MS, 0], ['BENCH_FLEET_PACE_MS', PROPAGATION_PACE_MS, 0], ...PROXIES.map((n) => ['BENCH_FLEET_PROXIES', n, 1])]) {
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be integers ≥ ${min}`)
}

const run = promisify(execFile)
const tmp = mkdtempSync(path.join(tmpdir(), 'tp-bench-fleet-'))
const children = new Set()
let registry = null // the private PostgreSQL
let cleaned = false
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
  // SIGQUIT: immediate shutdown of the private server (its children follow the postmaster).
  if (registry?.child?.exitCode === null) registry.child.kill('SIGQUIT')
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
  // The proxies first: a registry that stops under them is not the test.
  await Promise.all([...children].filter((c) => c.isProxy).map((c) => stopChild(c)))
  await Promise.all([...children].map((c) => stopChild(c)))
  await registry?.stop().catch((err) => console.error(`stopping the private PostgreSQL: ${err.message}`))
  rmSync(tmp, { recursive: true, force: true })
}

// ---- main (run at the end of the file, once every declaration is initialised) ----------------
async function main () {
  registry = await PrivatePostgres.create(path.join(tmp, 'pg'))
  await registry.start()
  const dbUrl = await registry.createDatabase('registry')
  results.seedMs = await seed(dbUrl, TENANTS)
  // What a restart of an idle server costs by itself (startup, background processes), to
  // subtract from a restart with the proxies.
  await registry.stop()
  await registry.start()
  await sleep(IDLE_RESTART_MS)
  results.idleRestartCpuS = registry.treeCpuSeconds()
  log(`private PostgreSQL on port ${registry.port}; a restart with no clients costs ${results.idleRestartCpuS.toFixed(2)} CPU-s (startup + ${s(IDLE_RESTART_MS)} idle)`)

  const upstream = await startUpstream()
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })
  const common = { TENANT_PROXY_UPSTREAM_URLS: upstream, TENANT_PROXY_DESCRIPTOR_KEYS: key, REGISTRY_DATABASE_URL: dbUrl }
  // A fleet that fails is reported as such and the next N still runs.
  for (const n of PROXIES) {
    try {
      results.runs.push(await fleet(n, common, dbUrl))
    } catch (err) {
      log(`N=${n} failed: ${err.stack}`)
      results.failed.push({ proxies: n, error: err.message })
    }
  }
}

/** Runs `fn` on a new connection to the registry database (the server restarts between uses). */
async function withAdmin (fn) {
  const c = await registry.client(registry.url('registry'))
  try {
    return await fn(c)
  } finally {
    await c.end().catch(() => undefined)
  }
}

/** One fleet of n proxies: boot, propagation, restart, connections, memory; stopped at the end. */
async function fleet (n, common, dbUrl) {
  const r = { proxies: n, exits: [] }
  const meter = byteMeter(registry.port, n)
  const sampler = connectionSampler(n, meter)
  const proxies = []
  try {
    // ---- boot: all n spawned together.
    sampler.phase('boot')
    const bootBytes0 = await meter.measure()
    const t0 = performance.now()
    const started = await Promise.allSettled(Array.from({ length: n }, (_, i) => startProxy({ ...common, TENANT_PROXY_REGISTRY_APPLICATION_NAME: `${APP}${i}`, TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: path.join(tmp, `n${n}-p${i}.json`) }, i, r.exits)))
    for (const s of started) if (s.status === 'fulfilled') proxies.push(s.value)
    const failed = started.filter((s) => s.status === 'rejected')
    if (failed.length > 0) throw new Error(`${failed.length} of ${n} proxies did not boot: ${failed[0].reason.message}`)
    await Promise.all(proxies.map((p) => waitFor(async () => (await metrics(p).catch(() => null))?.feedConnected === 1, `proxy ${p.i} synced`, BOOT_TIMEOUT_MS)))
    const bootMs = proxies.map((p) => p.bootMs)
    r.boot = { allUpMs: Math.max(...bootMs), medianMs: median(bootMs), allSyncedMs: performance.now() - t0, rssAtUp: proxies.map((p) => p.rssAtUp), bytesToProxies: (await meter.measure()).toClient - bootBytes0.toClient }
    log(`N=${n}: every proxy /up ${s(r.boot.allUpMs)} after spawn (median ${s(r.boot.medianMs)}), synced ${s(r.boot.allSyncedMs)}; VmRSS at /up median ${mb(median(r.boot.rssAtUp))}; ${mb(r.boot.bytesToProxies)} from the registry`)

    // ---- propagation.
    sampler.phase('propagation')
    for (const p of proxies) {
      p.http = new Client(`http://127.0.0.1:${p.trafficPort}`, { pipelining: 1, keepAliveTimeout: 60_000 })
      for (let j = 0; j < 50; j++) await probe(p.http, host(slotTenant(j % HOSTS)))
    }
    const writer = await registry.client(dbUrl)
    // Where the CPU goes per change: the registry's processes, the proxies, this benchmark (the
    // writer and the probes); on a machine with fewer cores than processes this is the queue.
    const cpu0 = { registry: registry.treeCpuSeconds(sampler.backendPids()), proxies: proxiesCpuSeconds(proxies), bench: process.cpuUsage() }
    try {
      r.propagation = await propagate(writer, proxies)
    } finally {
      await writer.end().catch(() => undefined)
    }
    const perChange = (seconds) => seconds * 1000 / CHANGES
    const benchCpu = process.cpuUsage(cpu0.bench)
    r.propagation.cpuMsPerChange = {
      registry: perChange(registry.treeCpuSeconds(sampler.backendPids()) - cpu0.registry),
      proxies: perChange(proxiesCpuSeconds(proxies) - cpu0.proxies),
      bench: perChange((benchCpu.user + benchCpu.system) / 1e6)
    }
    const ps = r.propagation.samples
    r.propagation.p50 = pct(ps, 50)
    r.propagation.p99 = pct(ps, 99)
    r.propagation.max = pct(ps, 100)
    delete r.propagation.samples
    r.rssAfterPropagation = proxies.map((p) => rss(p.child.pid))
    const cpu = r.propagation.cpuMsPerChange
    log(`N=${n}: propagation to every proxy over ${CHANGES} changes: p50 ${ms(r.propagation.p50)} p99 ${ms(r.propagation.p99)} max ${ms(r.propagation.max)}, ${r.propagation.timeouts} not visible within ${CHANGE_BUDGET_MS} ms; CPU per change: registry ${ms(cpu.registry)}, proxies ${ms(cpu.proxies)} (${ms(cpu.proxies / n)} each), benchmark (writer and probes) ${ms(cpu.bench)}; VmRSS median ${mb(median(r.rssAfterPropagation))} max ${mb(Math.max(...r.rssAfterPropagation))}`)

    // ---- settled connections: after an idle period longer than pg's pool idle timeout (10 s).
    sampler.phase('idle')
    if (IDLE_MS > 0) await sleep(IDLE_MS)
    r.settled = await withAdmin((c) => connectionsNow(c, n))
    log(`N=${n}: connections after ${s(IDLE_MS)} idle: ${r.settled.total} (per proxy ${describeCounts(r.settled.perProxy)})`)

    // ---- registry restart with nothing changed.
    sampler.phase('restart')
    r.restart = await restartWave(proxies, meter, sampler)
    r.settledAfterRestart = await withAdmin((c) => connectionsNow(c, n))

    // ---- a full load on every proxy, under traffic.
    sampler.phase('rebuild')
    r.rebuild = await rebuildWave(proxies)
  } finally {
    sampler.stop()
    r.connections = sampler.maxima()
    await Promise.all(proxies.map(async (p) => {
      await p.http?.close().catch(() => undefined)
      p.stopping = true
      await stopChild(p.child)
    }))
  }
  log(`N=${n}: most connections seen: ${Object.entries(r.connections).map(([k, v]) => `${k} ${v}`).join(', ')}; proxies that exited: ${r.exits.length}`)
  return r
}

/**
 * Restarts the registry (SIGINT: fast shutdown; then start) with the request loops running, and
 * waits until every proxy has reconnected and resynced (its feed-reconnect counter went up and
 * its feed is connected again).
 */
async function restartWave (proxies, meter, sampler) {
  const before = await Promise.all(proxies.map((p) => metrics(p)))
  const statements0 = await withAdmin(statements)
  const loops = proxies.map((p) => stallLoop(p))
  await sleep(STALL_BASELINE_MS)
  for (const l of loops) l.mark()
  const bytes0 = await meter.measure()
  const t0 = performance.now()
  await registry.stop()
  const downMs = performance.now() - t0
  await registry.start()
  const upMs = performance.now() - t0
  // Resynced: the reconnect counter moved and the feed is connected; bounded by RESYNC_TIMEOUT_MS.
  const resyncMs = await untilEveryProxy(proxies, t0, 'restart', 'resynced', (m, i) => m.reconnects > before[i].reconnects && m.feedConnected === 1)
  await sleep(STALL_AFTER_MS)
  const stalls = await Promise.all(loops.map((l) => l.stop()))
  const bytes1 = await meter.measure()
  // CPU first: the benchmark's own queries below run on the server too; the connection sampler's
  // backend is left out.
  const cpuS = registry.treeCpuSeconds(sampler.backendPids())
  const after = await Promise.all(proxies.map((p) => metrics(p).catch(() => null)))
  const statements1 = await withAdmin(statements)
  const rows = diffStatements(statements0, statements1)
  const w = {
    downMs,
    upMs,
    resyncMs,
    allResyncedMs: resyncMs.includes(null) ? null : Math.max(...resyncMs),
    notResynced: resyncMs.filter((x) => x === null).length,
    fullLoads: after.reduce((a, m, i) => a + (m === null ? 0 : m.loadsOk - before[i].loadsOk), 0),
    fullLoadReasons: diffLabels(before, after),
    // null: the proxies do not count resumes (they had no such thing).
    resumes: after.every((m, i) => m !== null && m.resumes !== null && before[i].resumes !== null) ? after.reduce((a, m, i) => a + m.resumes - before[i].resumes, 0) : null,
    cpuS,
    netCpuS: cpuS - results.idleRestartCpuS,
    bytesToProxies: bytes1.toClient - bytes0.toClient,
    bytesFromProxies: bytes1.toServer - bytes0.toServer,
    connectionsAccepted: bytes1.sockets - bytes0.sockets,
    rows: rows.total,
    calls: rows.calls,
    topStatements: rows.top,
    stallBaselineMaxMs: Math.max(...stalls.map((x) => x.baselineMax)),
    stallMaxMs: Math.max(...stalls.map((x) => x.max)),
    stallP99Ms: pct(stalls.flatMap((x) => x.samples), 99),
    stallMaxPerProxyMedianMs: median(stalls.map((x) => x.max)),
    stallRequests: stalls.reduce((a, x) => a + x.samples.length, 0),
    stallErrors: stalls.reduce((a, x) => a + x.errors, 0),
    stallStatuses: stalls.reduce((a, x) => { for (const [k, v] of Object.entries(x.statuses)) a[k] = (a[k] ?? 0) + v; return a }, {})
  }
  log(`restart with ${proxies.length} proxies: server down ${s(w.downMs)}, up again ${s(w.upMs)}; every proxy resynced ${w.allResyncedMs === null ? `NOT (${w.notResynced} not)` : s(w.allResyncedMs)} after the stop began; full loads ${w.fullLoads}${w.fullLoadReasons === null ? '' : ` ${JSON.stringify(w.fullLoadReasons)}`}, resumes from the change log ${w.resumes ?? 'not counted'}; registry CPU ${w.cpuS.toFixed(2)} s (${w.netCpuS.toFixed(2)} s beyond an idle restart); ${w.rows} rows in ${w.calls} statements; ${mb(w.bytesToProxies)} to the proxies over ${w.connectionsAccepted} connections; request latency max ${ms(w.stallMaxMs)} (before the restart ${ms(w.stallBaselineMaxMs)}), p99 ${ms(w.stallP99Ms)}, ${w.stallRequests} requests, statuses ${JSON.stringify(w.stallStatuses)}, ${w.stallErrors} errors`)
  for (const t of w.topStatements) log(`  ${t.calls} calls, ${t.rows} rows: ${t.query}`)
  return w
}

/**
 * Waits until `done(metrics, i)` holds for every proxy (its metrics read every METRICS_POLL_MS,
 * bounded by RESYNC_TIMEOUT_MS); each proxy's time since t0, or null when it exited or ran out
 * of time (logged under `phase`).
 */
async function untilEveryProxy (proxies, t0, phase, what, done) {
  return await Promise.all(proxies.map(async (p, i) => {
    try {
      await waitFor(async () => {
        if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`proxy ${p.i} exited`)
        // A proxy busy with a full load may not answer within the timeout: ask again.
        const m = await metrics(p).catch(() => null)
        return m !== null && done(m, i)
      }, `proxy ${p.i} ${what}`, RESYNC_TIMEOUT_MS, METRICS_POLL_MS)
      return performance.now() - t0
    } catch (err) {
      log(`${phase}: ${err.message}`)
      return null
    }
  }))
}

/** Changes a proxy's delta reads at most (src/registry/sync.ts DELTA_LIMIT); more make it load fully. */
const DELTA_LIMIT = 10_000

/**
 * Forces a full load on every proxy with the request loops running: one transaction flips every
 * tenant's state and back, as often as needed to log more than DELTA_LIMIT changes, so nothing
 * routes differently afterwards and every proxy's delta says "backlog". Waits until each proxy
 * has counted one more full load; meanwhile each proxy's event-loop delay (prom-client's
 * nodejs_eventloop_lag_max_seconds, reset at each scrape) is read every METRICS_POLL_MS.
 */
async function rebuildWave (proxies) {
  const before = await Promise.all(proxies.map((p) => metrics(p)))
  const loops = proxies.map((p) => stallLoop(p))
  await sleep(STALL_BASELINE_MS)
  for (const l of loops) l.mark()
  const lagMax = proxies.map(() => 0)
  const rounds = Math.ceil((DELTA_LIMIT + 1) / (2 * TENANTS))
  const t0 = performance.now()
  const windowStart = Date.now()
  await withAdmin(async (c) => {
    await c.query('BEGIN')
    for (let k = 0; k < rounds; k++) {
      await c.query(`UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE state = 'active'`)
      await c.query(`UPDATE tenant_proxy.tenants SET state = 'active' WHERE state = 'maintenance'`)
    }
    await c.query('COMMIT')
  })
  const committedMs = performance.now() - t0
  const loadedMs = await untilEveryProxy(proxies, t0, 'rebuild', 'loaded fully', (m, i) => {
    if (Number.isFinite(m.lagMaxS)) lagMax[i] = Math.max(lagMax[i], m.lagMaxS * 1000)
    return m.loadsOk > before[i].loadsOk && m.feedConnected === 1
  })
  const windowEnd = Date.now()
  await sleep(STALL_AFTER_MS)
  const stalls = await Promise.all(loops.map((l) => l.stop()))
  const after = await Promise.all(proxies.map((p) => metrics(p).catch(() => null)))
  const turnMax = proxies.map((p) => longestTurn(p, windowStart, windowEnd))
  const baseline = stalls.flatMap((x) => x.baselineSamples)
  const during = stalls.flatMap((x) => x.samples)
  const w = {
    committedMs,
    allLoadedMs: loadedMs.includes(null) ? null : Math.max(...loadedMs),
    notLoaded: loadedMs.filter((x) => x === null).length,
    fullLoads: after.reduce((a, m, i) => a + (m === null ? 0 : m.loadsOk - before[i].loadsOk), 0),
    fullLoadReasons: diffLabels(before, after),
    baselineP99Ms: pct(baseline, 99),
    baselineMaxMs: Math.max(0, ...baseline),
    p99Ms: pct(during, 99),
    maxMs: Math.max(0, ...during),
    addedP99Ms: pct(during, 99) - pct(baseline, 99),
    lagMaxMs: Math.max(...lagMax),
    lagMaxPerProxyMedianMs: median(lagMax),
    // The longest event-loop turn of each proxy during the wave (bench/turn-probe.js).
    turnMaxMs: Math.max(...turnMax),
    turnMaxPerProxyMedianMs: median(turnMax),
    requests: during.length,
    errors: stalls.reduce((a, x) => a + x.errors, 0),
    statuses: stalls.reduce((a, x) => { for (const [k, v] of Object.entries(x.statuses)) a[k] = (a[k] ?? 0) + v; return a }, {})
  }
  log(`rebuild with ${proxies.length} proxies: ${rounds * 2} updates of every tenant committed in ${s(w.committedMs)}; every proxy loaded fully ${w.allLoadedMs === null ? `NOT (${w.notLoaded} not)` : s(w.allLoadedMs)} after the commit began; full loads ${w.fullLoads}${w.fullLoadReasons === null ? '' : ` ${JSON.stringify(w.fullLoadReasons)}`}; request latency p99 ${ms(w.p99Ms)} (before ${ms(w.baselineP99Ms)}: ${ms(w.addedP99Ms)} added), max ${ms(w.maxMs)} (before ${ms(w.baselineMaxMs)}); event-loop delay max ${ms(w.lagMaxMs)} (median of the proxies' maxima ${ms(w.lagMaxPerProxyMedianMs)}); longest turn ${ms(w.turnMaxMs)} (median of the proxies' ${ms(w.turnMaxPerProxyMedianMs)}); ${w.requests} requests, statuses ${JSON.stringify(w.statuses)}, ${w.errors} errors`)
  return w
}

/** Full loads per reason between two readings of every proxy's metrics (null when not counted by reason). */
function diffLabels (before, after) {
  const out = {}
  for (const [i, m] of after.entries()) {
    if (m?.loadReasons == null || before[i].loadReasons === null) return null
    for (const [reason, v] of Object.entries(m.loadReasons)) {
      const d = v - (before[i].loadReasons[reason] ?? 0)
      if (d > 0) out[reason] = (out[reason] ?? 0) + d
    }
  }
  return out
}

/**
 * A request loop against one proxy, one request every STALL_PACE_MS over a keep-alive
 * connection, for a host the index holds (it must keep routing while the registry is away).
 * mark() starts the measured part; stop() ends the loop and returns its figures.
 */
function stallLoop (p) {
  const http = new Client(`http://127.0.0.1:${p.trafficPort}`, { pipelining: 1, keepAliveTimeout: 60_000 })
  const hostname = host(slotTenant((p.i * 7) % HOSTS, true))
  const out = { samples: [], baselineSamples: [], baselineMax: 0, max: 0, statuses: {}, errors: 0 }
  let measuring = false
  let stopped = false
  const deadline = performance.now() + RESYNC_TIMEOUT_MS + 60_000
  const done = (async () => {
    for (let k = 0; k < 1_000_000 && !stopped && performance.now() < deadline; k++) {
      const t = performance.now()
      try {
        const res = await http.request({ method: 'GET', path: '/', headers: { host: hostname }, headersTimeout: 30_000, bodyTimeout: 30_000 })
        await res.body.dump()
        if (measuring) out.statuses[res.statusCode] = (out.statuses[res.statusCode] ?? 0) + 1
      } catch {
        if (measuring) out.errors++
      }
      const latency = performance.now() - t
      if (measuring) {
        out.samples.push(latency)
        out.max = Math.max(out.max, latency)
      } else {
        out.baselineSamples.push(latency)
        out.baselineMax = Math.max(out.baselineMax, latency)
      }
      await sleep(STALL_PACE_MS)
    }
  })()
  return {
    mark () { measuring = true },
    async stop () {
      stopped = true
      await done
      await http.close().catch(() => undefined)
      return out
    }
  }
}

// ---- connections -----------------------------------------------------------------------------
/** Client connections per proxy now (application_name `fleet<i>` or `fleet<i> feed …`). */
async function connectionsNow (admin, n) {
  const r = await admin.query(`SELECT substring(application_name from '^${APP}([0-9]+)')::int AS proxy, count(*)::int AS n, array_agg(client_port) AS ports
    FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name ~ '^${APP}[0-9]+( |$)' GROUP BY 1`)
  const perProxy = Array(n).fill(0)
  const ports = []
  for (const row of r.rows) {
    if (row.proxy < n) perProxy[row.proxy] = row.n
    ports.push(...row.ports)
  }
  return { total: perProxy.reduce((a, x) => a + x, 0), perProxy, ports }
}

/**
 * Bytes between the registry and the proxies, from the kernel's counters of the server's TCP
 * sockets (`ss -tin`: bytes_sent, bytes_received), attributed to the proxies by their client ports
 * in pg_stat_activity (the benchmark's own connections are left out). Sampled with the connection
 * counts and at each measure(); a socket's bytes between its last sample and its close are lost,
 * which only a registry restart does, when nothing is being sent. The counters are cumulative per
 * socket: a port seen again with smaller counters is a new socket, and the old one's bytes are kept.
 */
function byteMeter (port, n) {
  const proxyPorts = new Set()
  const open = new Map() // client port → { sent, received } last seen
  const closed = { sent: 0, received: 0, sockets: 0 }
  return {
    attribute (ports) { for (const p of ports) proxyPorts.add(p) },
    async sample () {
      const { stdout } = await run('ss', ['-Htin', 'state', 'established', `( sport = :${port} )`])
      // One socket per two lines: addresses, then the indented TCP info.
      const lines = stdout.split('\n')
      for (let i = 0; i + 1 < lines.length; i += 2) {
        const peer = Number(/:(\d+)\s*$/.exec(lines[i].trim())?.[1])
        const sent = Number(/bytes_sent:(\d+)/.exec(lines[i + 1])?.[1] ?? 0)
        const received = Number(/bytes_received:(\d+)/.exec(lines[i + 1])?.[1] ?? 0)
        if (!Number.isInteger(peer)) continue
        const was = open.get(peer)
        if (was !== undefined && proxyPorts.has(peer) && (sent < was.sent || received < was.received)) {
          closed.sent += was.sent
          closed.received += was.received
          closed.sockets++
        }
        open.set(peer, { sent, received })
      }
    },
    /** Counts now: toClient (registry → proxies), toServer, sockets (distinct proxy connections seen). */
    async measure () {
      this.attribute((await withAdmin((c) => connectionsNow(c, n))).ports)
      await this.sample()
      const t = { toClient: closed.sent, toServer: closed.received, sockets: closed.sockets }
      for (const [peer, x] of open) {
        if (!proxyPorts.has(peer)) continue
        t.toClient += x.sent
        t.toServer += x.received
        t.sockets++
      }
      return t
    }
  }
}

/** Samples the connections every CONN_SAMPLE_MS; the most seen per phase. Never throws (the registry restarts under it). */
function connectionSampler (n, meter) {
  const maxima = {}
  const pids = new Set()
  let phase = 'boot'
  let stopped = false
  let admin = null
  const deadline = performance.now() + 3_600_000
  const done = (async () => {
    while (!stopped && performance.now() < deadline) {
      try {
        if (admin === null) {
          admin = await registry.client(registry.url('registry'))
          pids.add((await admin.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
        }
        const c = await connectionsNow(admin, n)
        maxima[phase] = Math.max(maxima[phase] ?? 0, c.total)
        meter.attribute(c.ports)
        await meter.sample()
      } catch {
        await admin?.end().catch(() => undefined)
        admin = null
      }
      await sleep(CONN_SAMPLE_MS)
    }
    await admin?.end().catch(() => undefined)
  })()
  return {
    phase (p) { phase = p },
    backendPids () { return pids },
    stop () { stopped = true; return done },
    maxima () { return maxima }
  }
}

function describeCounts (xs) {
  const counts = {}
  for (const x of xs) counts[x] = (counts[x] ?? 0) + 1
  return Object.entries(counts).map(([k, v]) => `${v}×${k}`).join(', ')
}

// ---- registry statements -----------------------------------------------------------------------
async function statements (admin) {
  const r = await admin.query(`SELECT queryid::text AS id, query, calls::float8 AS calls, rows::float8 AS rows FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'registry') AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%pg_backend_pid%'`)
  return new Map(r.rows.map((x) => [x.id, x]))
}

function diffStatements (a, b) {
  const diffs = []
  for (const [id, x] of b) {
    const y = a.get(id)
    const calls = x.calls - (y?.calls ?? 0)
    const rows = x.rows - (y?.rows ?? 0)
    if (calls > 0) diffs.push({ calls, rows, query: x.query.replace(/\s+/g, ' ').slice(0, 140) })
  }
  diffs.sort((p, q) => q.rows - p.rows || q.calls - p.calls)
  return { total: diffs.reduce((s, d) => s + d.rows, 0), calls: diffs.reduce((s, d) => s + d.calls, 0), top: diffs.slice(0, 5) }
}

// ---- the private PostgreSQL --------------------------------------------------------------------
class PrivatePostgres {
  /** initdb into `dir` (as the postgres system user when this runs as root: PostgreSQL refuses root). */
  static async create (dir) {
    const pgDir = new PrivatePostgres()
    pgDir.dir = dir
    pgDir.data = path.join(dir, 'data')
    mkdirSync(dir, { recursive: true })
    if (process.getuid?.() === 0) {
      pgDir.ids = { uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()), gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()) }
      chownSync(tmp, pgDir.ids.uid, pgDir.ids.gid)
      chownSync(dir, pgDir.ids.uid, pgDir.ids.gid)
    }
    await run(path.join(PG_BIN, 'initdb'), ['-D', pgDir.data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--no-instructions'], { ...pgDir.ids, env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' } })
    pgDir.port = await freePort()
    return pgDir
  }

  url (db) { return `postgres://postgres@127.0.0.1:${this.port}/${db}` }

  /** Starts `postgres` directly (so this process holds its PID) and waits until it accepts connections. */
  async start () {
    const child = spawn(path.join(PG_BIN, 'postgres'), ['-D', this.data, '-p', String(this.port), '-k', this.dir,
      '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
      '-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.save=on'], {
      ...this.ids, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' }
    })
    this.child = child
    // What the test checks is gone after the run.
    results.registryPids.push(child.pid)
    this.log = ''
    child.stderr.on('data', (c) => { this.log = (this.log + c.toString()).slice(-4_000) })
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()))
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`postgres exited: ${this.log}`)
      const c = new pg.Client({ connectionString: this.url('postgres'), application_name: 'bench-fleet' })
      c.on('error', () => {})
      try {
        await c.connect()
        await c.query('SELECT 1')
        return true
      } catch {
        return false
      } finally {
        await c.end().catch(() => undefined)
      }
    }, 'the private PostgreSQL to accept connections', 30_000, 20)
  }

  /** Fast shutdown (SIGINT) by PID; SIGQUIT after 30 s. */
  async stop () {
    const child = this.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGINT')
    const timer = setTimeout(() => child.kill('SIGQUIT'), 30_000)
    await this.exited
    clearTimeout(timer)
  }

  async client (url) {
    const c = new pg.Client({ connectionString: url, application_name: 'bench-fleet' })
    c.on('error', () => {})
    await c.connect()
    return c
  }

  async createDatabase (name) {
    const c = await this.client(this.url('postgres'))
    try {
      await c.query(`CREATE DATABASE ${name}`)
      await c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    } finally {
      await c.end()
    }
    const d = await this.client(this.url(name))
    try {
      await d.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    } finally {
      await d.end()
    }
    return this.url(name)
  }

  /**
   * CPU seconds of this server since it started: the postmaster's own and its reaped children's
   * (backends that ended, /proc/<pid>/stat cutime + cstime), plus every live child's.
   */
  treeCpuSeconds (exclude = new Set()) {
    const pid = this.child.pid
    let ticks = 0
    const self = procStat(pid)
    if (self !== null) ticks += self.utime + self.stime + self.cutime + self.cstime
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const st = procStat(Number(entry))
      if (st !== null && st.ppid === pid && !exclude.has(Number(entry))) ticks += st.utime + st.stime + st.cutime + st.cstime
    }
    return ticks / CLK_TCK
  }
}

/** CPU seconds the proxies' processes used so far. */
function proxiesCpuSeconds (proxies) {
  let ticks = 0
  for (const p of proxies) {
    const st = procStat(p.child.pid)
    if (st !== null) ticks += st.utime + st.stime
  }
  return ticks / CLK_TCK
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100

function procStat (pid) {
  let text
  try { text = readFileSync(`/proc/${pid}/stat`, 'utf8') } catch { return null }
  // Fields after the command (which may hold spaces) in parentheses: state is field 3.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]), cutime: Number(f[13]), cstime: Number(f[14]) }
}

/** Migrates with the CLI, then one INSERT … SELECT generate_series per table, in one transaction. */
async function seed (url, n) {
  const migrate = spawnChild(process.execPath, ['dist/src/main.js', 'migrate'], { REGISTRY_DATABASE_URL: url })
  const code = await exited(migrate, 60_000)
  if (code !== 0) throw new Error(`migrate exited with ${code}`)
  const c = await registry.client(url)
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
  log(`seeded ${n} tenants in ${s(seedMs)}`)
  return seedMs
}

// ---- change propagation (as bench/registry.js) --------------------------------------------------
function slotTenant (slot, half = false) {
  return 1 + Math.floor((slot + (half ? 0.5 : 0)) * TENANTS / HOSTS)
}
function host (i) { return `t${i}.bench.example` }

/**
 * CHANGES sequential state flips via SQL, one transaction each; latency per (change, proxy). The
 * flipped tenants go between maintenance and suspended, two states the proxy answers itself, so a
 * probe costs the proxy one routing decision and no upstream request: with 12 proxies probed
 * every 5 ms, probes of an active tenant forwarded to the upstream took more CPU than the
 * propagation they measured. The path a change takes to the index is the same for every field.
 */
async function propagate (writer, proxies) {
  const samples = []
  let timeouts = 0
  const slugs = Array.from({ length: Math.min(CHANGES, HOSTS) }, (_, k) => 't' + slotTenant(k))
  await writer.query(`UPDATE tenant_proxy.tenants SET state = 'maintenance' WHERE slug = ANY($1)`, [slugs])
  for (const p of proxies) {
    if (await pollUntil(p.http, host(slotTenant(0)), 'maintenance', performance.now()) === null) throw new Error(`proxy ${p.i} did not see the probed tenants in maintenance`)
  }
  const started = performance.now()
  for (let k = 0; k < CHANGES; k++) {
    const i = slotTenant(k % HOSTS)
    await writer.query('BEGIN')
    const r = await writer.query(`UPDATE tenant_proxy.tenants SET state = CASE state WHEN 'maintenance' THEN 'suspended' ELSE 'maintenance' END WHERE slug = $1 RETURNING state`, ['t' + i])
    await writer.query('COMMIT')
    const committedAt = performance.now()
    const outcomes = await Promise.all(proxies.map((p) => pollUntil(p.http, host(i), r.rows[0].state, committedAt)))
    for (const o of outcomes) {
      if (o === null) timeouts++
      else samples.push(o)
    }
    if (performance.now() - started > CHANGES * (CHANGE_BUDGET_MS + 100)) throw new Error('propagation run exceeded its time bound')
  }
  // The flipped tenants back to active: the restart that follows must change nothing, and every
  // host must route.
  await writer.query(`UPDATE tenant_proxy.tenants SET state = 'active' WHERE state <> 'active'`)
  return { samples, timeouts, pairs: CHANGES * proxies.length }
}

/**
 * Requests `hostname` every PROPAGATION_PACE_MS until the response shows `state`; its latency, or
 * null after the budget. Paced, not back to back: N loops polling N proxies back to back kept a
 * 2-core machine busy with the probes themselves (12 proxies: thousands of requests a second), so
 * the figure measured the probing more than the propagation. A sample is late by at most the pace.
 */
async function pollUntil (http, hostname, state, since) {
  for (let polls = 0; polls < MAX_POLLS; polls++) {
    const seen = await probe(http, hostname)
    const now = performance.now()
    if (seen === state) return now - since
    if (now - since > CHANGE_BUDGET_MS) break
    await sleep(PROPAGATION_PACE_MS)
  }
  return null
}

async function probe (http, hostname) {
  let res
  let body
  try {
    res = await http.request({ method: 'GET', path: '/', headers: { host: hostname }, headersTimeout: 5_000, bodyTimeout: 5_000 })
    body = await res.body.text()
  } catch (err) {
    return `error ${err.message}` // polled again until the change's budget is spent
  }
  if (res.statusCode === 200) return 'active'
  if (res.statusCode === 503 && body.includes('TENANT_PROXY_ERR_TENANT_MAINTENANCE')) return 'maintenance'
  if (res.statusCode === 403 && body.includes('TENANT_PROXY_ERR_TENANT_SUSPENDED')) return 'suspended'
  return `${res.statusCode} ${body.slice(0, 100)}`
}

// ---- processes -------------------------------------------------------------------------------
function spawnChild (cmd, args, env, stdout = 'ignore') {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['pipe', stdout, 'inherit'] })
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

/** SIGTERM (drain delay 0: the proxy exits at once), SIGKILL after 10 s. */
async function stopChild (child) {
  if (child.exitCode !== null || child.signalCode !== null) { children.delete(child); return }
  await new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve() }, 10_000)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    child.kill('SIGTERM')
  })
  children.delete(child)
}

async function firstLine (child, what) {
  const lines = createInterface({ input: child.stdout })
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start in 10 s`)), 10_000)
    lines.once('line', (l) => { clearTimeout(timer); resolve(l) })
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)))
  })
  return { line, lines }
}

async function startUpstream () {
  const child = spawnChild(process.execPath, ['bench/upstream.js'], {}, 'pipe')
  const { line, lines } = await firstLine(child, 'upstream')
  lines.close()
  child.stdout.resume()
  return `http://127.0.0.1:${JSON.parse(line).port}`
}

/** The longest event-loop turn bench/turn-probe.js recorded for proxy `p` between two epoch times (0: none over its threshold). */
function longestTurn (p, from, to) {
  let text = ''
  try { text = readFileSync(p.turnFile, 'utf8') } catch { return 0 }
  let longest = 0
  for (const line of text.split('\n')) {
    const [at, ms] = line.split(' ').map(Number)
    if (at >= from && at <= to && ms > longest) longest = ms
  }
  return longest
}

/** Spawns `serve` and waits for its first /up 200; bootMs is spawn → that answer. */
async function startProxy (env, i, exits) {
  const trafficPort = await freePort()
  const opsPort = await freePort()
  const t0 = performance.now()
  const turnFile = path.join(tmp, `turns-${trafficPort}.txt`)
  const child = spawnChild(NODE, ['--import', './bench/turn-probe.js', 'dist/src/main.js', 'serve'], {
    TURN_PROBE_FILE: turnFile,
    TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
    TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
    TENANT_PROXY_OPS_HOST: '127.0.0.1',
    TENANT_PROXY_OPS_PORT: String(opsPort),
    TENANT_PROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
    TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
    TENANT_PROXY_SHUTDOWN_GRACE_MS: '1000',
    ...env
  }, 'pipe')
  child.isProxy = true
  const p = { i, child, trafficPort, opsPort, turnFile, stopping: false }
  results.proxyPids.push(child.pid)
  child.once('exit', (code, signal) => {
    if (!p.stopping) {
      exits.push({ proxy: i, code, signal })
      log(`proxy ${i} EXITED with ${code ?? signal}`)
    }
  })
  // The proxy logs JSON to stdout (warn and up): forward it, tagged, to our stderr.
  createInterface({ input: child.stdout }).on('line', (line) => process.stderr.write(`  [proxy ${i}] ${line}\n`))
  const up = new Client(`http://127.0.0.1:${trafficPort}`)
  try {
    await waitFor(async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`proxy ${i} exited with ${child.exitCode ?? child.signalCode} before /up answered`)
      try {
        const res = await up.request({ method: 'GET', path: '/up', headers: { host: 'bench.invalid' }, headersTimeout: 2_000, bodyTimeout: 2_000 })
        await res.body.dump()
        return res.statusCode === 200
      } catch {
        return false
      }
    }, `proxy ${i} /up`, BOOT_TIMEOUT_MS, UP_POLL_MS)
  } finally {
    await up.close().catch(() => undefined)
  }
  p.bootMs = performance.now() - t0
  p.rssAtUp = rss(child.pid)
  return p
}

/** The registry figures of a proxy's /metrics. */
async function metrics (p) {
  const http = new Client(`http://127.0.0.1:${p.opsPort}`)
  try {
    const res = await http.request({ method: 'GET', path: '/metrics', headersTimeout: 5_000, bodyTimeout: 5_000 })
    const text = await res.body.text()
    const value = (re) => Number(re.exec(text)?.[1] ?? NaN)
    /** Sum over the labels of a counter, with the value per label; null when the proxy has no such metric. */
    const byLabel = (name) => {
      const all = [...text.matchAll(new RegExp(`^${name}\\{\\w+="([^"]*)"\\} (\\S+)$`, 'gm'))]
      if (all.length === 0) return null
      return { total: all.reduce((a, m) => a + Number(m[2]), 0), labels: Object.fromEntries(all.map((m) => [m[1], Number(m[2])])) }
    }
    // Full loads: by reason where the proxy counts them so (a resume from the change log is not
    // one), else every successful snapshot load.
    const full = byLabel('tenant_proxy_registry_full_loads_total')
    const resumes = byLabel('tenant_proxy_registry_resumes_total')
    return {
      feedConnected: value(/^tenant_proxy_registry_feed_connected (\S+)$/m),
      reconnects: value(/^tenant_proxy_registry_feed_reconnects_total (\S+)$/m),
      loadsOk: full?.total ?? value(/^tenant_proxy_registry_loads_total\{result="ok"\} (\S+)$/m),
      loadReasons: full?.labels ?? null,
      resumes: resumes?.total ?? null,
      lagMaxS: value(/^nodejs_eventloop_lag_max_seconds (\S+)$/m)
    }
  } finally {
    await http.close().catch(() => undefined)
  }
}


// ---- helpers ---------------------------------------------------------------------------------
/** Polls `probe` every `pauseMs` until it returns true; throws naming `what` after `timeoutMs`. */
async function waitFor (probe, what, timeoutMs, pauseMs = 50) {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await probe()) return
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(pauseMs)
  }
}

function rss (pid) {
  try {
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024
  } catch {
    return NaN
  }
}

function median (xs) {
  const v = [...xs].sort((a, b) => a - b)
  return v.length === 0 ? NaN : v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
}

/** Nearest-rank percentile; 100 is the maximum. */
function pct (xs, p) {
  if (xs.length === 0) return NaN
  const v = [...xs].sort((a, b) => a - b)
  return v[Math.min(v.length, Math.max(1, Math.ceil(p / 100 * v.length))) - 1]
}

function sleep (msec) { return new Promise((resolve) => setTimeout(resolve, msec)) }
function mb (bytes) { return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} kB` : `${(bytes / 1024 / 1024).toFixed(1)} MB` }
function ms (x) { return x === null || Number.isNaN(x) ? 'n/a' : x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms` }
function s (x) { return x === null ? 'n/a' : `${(x / 1000).toFixed(2)} s` }
function log (line) { console.error(line) }

function revision () {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).trim() !== ''
    return `${head}${dirty ? ' + uncommitted changes in src/' : ''}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

function nodeVersion () {
  return NODE === process.execPath ? process.version : execFileSync(NODE, ['--version'], { encoding: 'utf8' }).trim()
}

function commandLine () {
  const env = Object.keys(process.env).filter((k) => k.startsWith('BENCH_FLEET_') && k !== 'BENCH_FLEET_JSON').sort().map((k) => `${k}=${process.env[k]}`)
  return [...env, 'npm run bench:fleet'].join(' ')
}

// ---- report ----------------------------------------------------------------------------------
function report () {
  const la = (x) => x.map((v) => v.toFixed(2)).join(' ')
  const lines = [
    `${results.startedAt} · code ${results.code} · node ${results.node} · nproc ${results.nproc} · load average ${la(results.loadAtStart)} at start, ${la(results.loadAtEnd)} at end · ${TENANTS.toLocaleString('en-US')} tenants (one domain each) · ${CHANGES} changes per N, each proxy polled every ${PROPAGATION_PACE_MS} ms for a change`,
    '',
    `Command: \`${results.command}\``,
    '',
    '| N | boot: all /up (median) | propagation p50 / p99 / max | restart: every proxy resynced | full loads | exits | registry CPU (beyond an idle restart) | rows returned (statements) | bytes to proxies | request latency max during restart (before; p99) | connections settled · most at boot / restart | VmRSS per proxy median (max) |',
    '|---:|---|---|---|---:|---:|---|---|---|---|---|---|'
  ]
  for (const r of results.runs) {
    const w = r.restart
    const rssAll = r.rssAfterPropagation
    lines.push(`| ${r.proxies} | ${s(r.boot.allUpMs)} (${s(r.boot.medianMs)}) | ${ms(r.propagation.p50)} / ${ms(r.propagation.p99)} / ${ms(r.propagation.max)}${r.propagation.timeouts > 0 ? ` (${r.propagation.timeouts} timeouts)` : ''} | ${w.allResyncedMs === null ? `**${w.notResynced} never**` : s(w.allResyncedMs)} | ${w.fullLoads}${w.resumes === null ? '' : ` (${w.resumes} resumes)`} | ${r.exits.length} | ${w.cpuS.toFixed(2)} s (${w.netCpuS.toFixed(2)} s) | ${w.rows.toLocaleString('en-US')} (${w.calls}) | ${mb(w.bytesToProxies)} | ${ms(w.stallMaxMs)} (${ms(w.stallBaselineMaxMs)}; ${ms(w.stallP99Ms)}) | ${r.settled.total} · ${r.connections.boot ?? 'n/a'} / ${r.connections.restart ?? 'n/a'} | ${mb(median(rssAll))} (${mb(Math.max(...rssAll))}) |`)
  }
  for (const f of results.failed) lines.push(`| ${f.proxies} | **failed**: ${f.error} |  |  |  |  |  |  |  |  |  |  |`)
  lines.push('', '| N | full load on every proxy under traffic: all done | full loads | request latency p99 before → during (added) | max before → during | event-loop delay max (median of the proxies) | longest turn (median of the proxies) |', '|---:|---|---:|---|---|---|---|')
  for (const r of results.runs) {
    const b = r.rebuild
    if (b === undefined) continue
    lines.push(`| ${r.proxies} | ${b.allLoadedMs === null ? `**${b.notLoaded} never**` : s(b.allLoadedMs)} | ${b.fullLoads} | ${ms(b.baselineP99Ms)} → ${ms(b.p99Ms)} (${ms(b.addedP99Ms)}) | ${ms(b.baselineMaxMs)} → ${ms(b.maxMs)} | ${ms(b.lagMaxMs)} (${ms(b.lagMaxPerProxyMedianMs)}) | ${ms(b.turnMaxMs)} (${ms(b.turnMaxPerProxyMedianMs)}) |`)
  }
  lines.push('')
  const twelve = results.runs.find((r) => r.proxies === 12)
  const targets = [
    ['propagation p99 ≤ 50 ms to every replica with 12 proxies', twelve === undefined ? 'not run (no N = 12)' : ms(twelve.propagation.p99), twelve === undefined ? null : twelve.propagation.p99 <= 50 && twelve.propagation.timeouts === 0],
    ['no proxy exits and no full reload during a registry restart with nothing changed', results.runs.map((r) => `N=${r.proxies}: ${r.exits.length} exits, ${r.restart.fullLoads} full loads`).join('; '), results.failed.length === 0 && results.runs.every((r) => r.exits.length === 0 && r.restart.fullLoads === 0 && r.restart.notResynced === 0)],
    // Issue 12 item 3 (a proxy rebuilding a million tenants under traffic). With more proxies loading
    // at once than the machine has cores, the figure is the CPU queue they and the requests share.
    [`requests during a full load on every proxy: p99 added ≤ 50 ms (${cpus().length} cores; up to registry.maxConcurrentFullLoads proxies load at once)`, results.runs.map((r) => `N=${r.proxies}: ${r.rebuild === undefined ? 'not run' : ms(r.rebuild.addedP99Ms)}`).join('; '), results.failed.length === 0 && results.runs.every((r) => r.rebuild !== undefined && r.rebuild.notLoaded === 0 && r.rebuild.addedP99Ms <= 50)],
    ['connections = N (+ at most a few during loads)', results.runs.map((r) => `N=${r.proxies}: settled ${r.settled.total}, most at boot ${r.connections.boot}, during the restart ${r.connections.restart}`).join('; '), results.failed.length === 0 && results.runs.every((r) => r.settled.total === r.proxies && (r.connections.restart ?? 0) <= r.proxies + 3)]
  ]
  lines.push('| target | figure | result |', '|---|---|---|')
  for (const [what, figure, pass] of targets) lines.push(`| ${what} | ${figure} | ${pass === null ? 'n/a' : pass ? 'pass' : '**FAIL**'} |`)
  results.targets = targets.map(([what, figure, pass]) => ({ what, figure, pass }))
  console.log(lines.join('\n'))
}

// ---- run -------------------------------------------------------------------------------------
const results = { command: commandLine(), startedAt: new Date().toISOString(), code: revision(), node: nodeVersion(), nproc: cpus().length, loadAtStart: loadavg(), tenants: TENANTS, changes: CHANGES, paceMs: PROPAGATION_PACE_MS, tmp, registryPids: [], proxyPids: [], runs: [], failed: [] }
try {
  await main()
  results.loadAtEnd = loadavg()
  report()
  if (JSON_OUT !== null) writeFileSync(JSON_OUT, JSON.stringify(results, null, 2) + '\n')
  if (results.failed.length > 0) process.exitCode = 1
} catch (err) {
  console.error(err)
  process.exitCode = 1
} finally {
  await cleanup()
}
