/**
 * `npm run bench:fleet` in its quick mode (2 proxies, 2,000 tenants), end to end, so the script
 * cannot rot: it starts its own PostgreSQL, boots the proxies, measures propagation, a registry
 * restart and a full load forced on every proxy under traffic, and stops everything it started. Only the shape of the figures is checked, never their
 * values (those depend on the machine's load; docs/fleet.md holds measured runs), except what
 * must hold on any machine: every proxy booted and came back after the restart, none exited, and
 * the private PostgreSQL, the proxies and the temp directory are gone afterwards. It takes about
 * 50 s on a shared 2-core machine at a load average of 15–20 (initdb, three starts of the private
 * server, two proxy boots, one restart wave; the benchmark's only fixed waits are measurement
 * windows, about 1 s in quick mode, never stand-ins for an event), so it is slower than the 30 s
 * aimed at but bounded, and deterministic in what it asserts.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

interface FleetRun {
  proxies: number
  exits: unknown[]
  boot: { allUpMs: number, medianMs: number }
  propagation: { pairs: number, timeouts: number, p50: number, p99: number }
  settled: { total: number, perProxy: number[] }
  connections: Record<string, number>
  rssAfterPropagation: number[]
  rebuild: { notLoaded: number, fullLoads: number, fullLoadReasons: Record<string, number>, requests: number, errors: number, statuses: Record<string, number>, baselineP99Ms: number, p99Ms: number, lagMaxMs: number, turnMaxMs: number }
  restart: { notResynced: number, allResyncedMs: number, fullLoads: number, cpuS: number, rows: number, bytesToProxies: number, stallMaxMs: number, stallRequests: number, stallErrors: number, stallStatuses: Record<string, number> }
}
interface FleetResults { tmp: string, registryPids: number[], proxyPids: number[], targets: unknown[], runs: FleetRun[] }

t.test('bench:fleet quick mode runs end to end and cleans up', async (t) => {
  t.setTimeout(150_000)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-test-bench-fleet-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const out = path.join(dir, 'fleet.json')
  const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) => {
    execFile(process.execPath, ['bench/fleet.js'], {
      cwd: ROOT,
      env: { ...process.env, BENCH_FLEET_QUICK: '1', BENCH_FLEET_JSON: out },
      timeout: 140_000,
      maxBuffer: 16 * 1024 * 1024
    }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`bench/fleet.js failed: ${err.message}\n${stderr.slice(-4_000)}`))
      else resolve({ stdout })
    })
  })
  const r = JSON.parse(await readFile(out, 'utf8')) as FleetResults
  t.match(stdout, /\| target \| figure \| result \|/, 'prints the table of targets')
  t.equal(r.runs.length, 1)
  const run = r.runs[0]
  if (run === undefined) return
  t.equal(run.proxies, 2)
  t.same(run.exits, [], 'no proxy exited')
  t.ok(run.boot.allUpMs > 0 && run.boot.medianMs <= run.boot.allUpMs, 'boot times')
  t.equal(run.propagation.pairs, 20 * 2, 'every (change, proxy) pair polled')
  t.ok(run.propagation.timeouts < run.propagation.pairs, 'propagation measured')
  t.equal(run.settled.perProxy.length, 2, 'connections counted per proxy')
  t.ok(run.settled.perProxy.every((n) => n >= 1), 'every proxy holds a registry connection')
  t.equal(run.rssAfterPropagation.length, 2)
  t.ok(run.rssAfterPropagation.every((x) => x > 0), 'VmRSS read per proxy')
  const w = run.restart
  t.equal(w.notResynced, 0, 'every proxy resynced after the registry restart')
  t.ok(w.allResyncedMs > 0)
  t.ok(Number.isInteger(w.fullLoads) && w.fullLoads >= 0, 'full loads counted')
  t.ok(w.cpuS > 0, 'registry CPU read from /proc')
  t.ok(w.bytesToProxies > 0, 'bytes counted from the kernel socket counters (the reconnects at least)')
  t.ok(w.rows >= 0, 'rows from pg_stat_statements')
  t.ok(w.stallRequests > 0 && w.stallMaxMs > 0, 'the request loops ran during the restart')
  t.equal(w.stallErrors, 0, 'no request failed during the restart')
  t.same(Object.keys(w.stallStatuses), ['200'], 'known hosts kept routing during the restart')
  const b = run.rebuild
  t.equal(b.notLoaded, 0, 'every proxy ran the forced full load')
  t.same(b.fullLoadReasons, { backlog: 2 }, 'one full load per proxy, because the change log held more than a delta reads')
  t.ok(b.requests > 0 && b.p99Ms > 0 && b.baselineP99Ms > 0, 'the request loops ran before and during the full loads')
  t.equal(b.errors, 0, 'no request failed during the full loads')
  t.same(Object.keys(b.statuses), ['200'], 'known hosts kept routing during the full loads')
  t.ok(Number.isFinite(b.lagMaxMs), 'event-loop delay read from the proxies')
  t.ok(Number.isFinite(b.turnMaxMs) && b.turnMaxMs >= 0, 'the longest turn read from the probe in each proxy')
  t.equal(r.targets.length, 4)
  // Everything it started is gone.
  t.ok(r.registryPids.length >= 2, 'the private PostgreSQL was started (and restarted)')
  for (const pid of [...r.registryPids, ...r.proxyPids]) t.notOk(existsSync(`/proc/${pid}`) && !(await readFile(`/proc/${pid}/stat`, 'utf8')).includes(') Z'), `process ${pid} is gone`)
  t.notOk(existsSync(r.tmp), 'temp directory removed')
})
