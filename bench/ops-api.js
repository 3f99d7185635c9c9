// Cost of the ops descriptor API at registry scale: a throwaway registry with BENCH_TENANTS
// tenants (1 % in maintenance), one `serve` process with an API token, then, over loopback with
// one keep-alive connection: the first list page (it sorts the slugs) and the slowest /up the
// proxy answered meanwhile on another connection (how long the sort held its event loop), a walk
// over every tenant with limit=1000, the same walk filtered by state=maintenance, a page right
// after a registry write (the sorted slugs are patched, not rebuilt), and descriptors for
// distinct tenants. Prints milliseconds per call; not run in CI.
//
//   npm run build && node bench/ops-api.js
//   BENCH_DATABASE_URL=postgres://…  BENCH_TENANTS=1000000 node bench/ops-api.js
//
// Everything is on 127.0.0.1; loops are bounded; the database is dropped and the proxy (started
// here, stopped by its PID) killed, also on error.
import { spawn } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { Client } from 'undici'
import { freePort } from './free-port.js'

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const TENANTS = Number(process.env.BENCH_TENANTS ?? 100_000)
const DESCRIPTORS = 1_000
// BENCH_CLI: another build of the CLI (to compare two versions).
const CLI = process.env.BENCH_CLI ?? path.resolve(path.dirname(new URL(import.meta.url).pathname), '../dist/src/main.js')
if (!Number.isInteger(TENANTS) || TENANTS < 1_000) throw new Error('BENCH_TENANTS must be an integer ≥ 1000')

const tmp = mkdtempSync(path.join(tmpdir(), 'tp-bench-ops-api-'))
const database = `tp_bench_ops_api_${process.pid}`
const admin = new pg.Client({ connectionString: ADMIN_URL })
let child = null

async function main () {
  await admin.connect()
  await admin.query(`CREATE DATABASE ${database}`)
  const url = new URL(ADMIN_URL)
  url.pathname = `/${database}`
  const registryUrl = url.toString()
  const seed = new pg.Client({ connectionString: registryUrl })
  await seed.connect()
  const migrated = spawn(process.execPath, [CLI, 'migrate'], { env: { PATH: process.env.PATH, REGISTRY_DATABASE_URL: registryUrl }, stdio: 'ignore' })
  if (await new Promise((resolve) => migrated.once('exit', resolve)) !== 0) throw new Error('migrate failed')
  await seed.query(`INSERT INTO tenant_proxy.tenants (slug, database_name, state)
    SELECT 'tenant-' || md5(i::text), 'db_' || i, CASE WHEN i % 100 = 0 THEN 'maintenance' ELSE 'active' END FROM generate_series(1, $1::int) AS i`, [TENANTS])
  await seed.query(`INSERT INTO tenant_proxy.domains (hostname, tenant_id, kind) SELECT slug || '.example.com', id, 'primary' FROM tenant_proxy.tenants`)

  const token = randomBytes(32).toString('hex')
  const opsPort = await freePort()
  const keyFile = path.join(tmp, 'key.pem')
  writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
  child = spawn(process.execPath, [CLI, 'serve'], {
    env: {
      PATH: process.env.PATH,
      REGISTRY_DATABASE_URL: registryUrl,
      TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile,
      TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: token,
      TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
      TENANT_PROXY_TRAFFIC_PORT: '0',
      TENANT_PROXY_OPS_HOST: '127.0.0.1',
      TENANT_PROXY_OPS_PORT: String(opsPort),
      TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
      TENANT_PROXY_LOG_LEVEL: 'warn'
    },
    stdio: ['ignore', 'inherit', 'inherit']
  })
  const ops = new Client(`http://127.0.0.1:${opsPort}`)
  const call = async (p) => {
    const started = performance.now()
    const res = await ops.request({ method: 'GET', path: p, headers: { authorization: `Bearer ${token}` } })
    const body = await res.body.json()
    if (res.statusCode !== 200) throw new Error(`${p}: ${res.statusCode} ${JSON.stringify(body)}`)
    return { ms: performance.now() - started, body }
  }
  const walk = async (query) => {
    const times = []
    let after = null
    let seen = 0
    for (let n = 0; n < TENANTS; n++) {
      const { ms, body } = await call(`/v1/tenants?${query}${after === null ? '' : `&after=${after}`}`)
      times.push(ms)
      seen += body.tenants.length
      after = body.next
      if (after === null) break
    }
    return { times, seen }
  }

  // Up once /up answers (bounded: 60 s).
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`serve exited with ${child.exitCode}`)
    const up = await fetch(`http://127.0.0.1:${opsPort}/up`).then((r) => r.status, () => 0)
    if (up === 200) break
    if (Date.now() > deadline) throw new Error('serve not up within 60 s')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  // /up on a second connection, back to back, while the first list call builds the sorted slugs.
  const probe = new Client(`http://127.0.0.1:${opsPort}`)
  let probing = true
  let slowestUp = 0
  const probes = (async () => {
    for (let n = 0; probing && n < 100_000; n++) {
      const started = performance.now()
      await (await probe.request({ method: 'GET', path: '/up' })).body.dump()
      slowestUp = Math.max(slowestUp, performance.now() - started)
    }
  })()
  await new Promise((resolve) => setTimeout(resolve, 50))
  const first = await call('/v1/tenants?limit=1000')
  probing = false
  await probes
  await probe.close()
  const all = await walk('limit=1000')
  const filtered = await walk('limit=1000&state=maintenance')
  await seed.query("INSERT INTO tenant_proxy.tenants (slug, database_name) VALUES ('zz-added', 'zz_added')")
  const written = performance.now()
  let afterWrite = null
  let visibleMs = null
  // Until the write shows (the change feed applies it), at most 60 s and 100,000 polls.
  for (let n = 0; n < 100_000 && afterWrite === null && performance.now() - written < 60_000; n++) {
    const r = await call('/v1/tenants?limit=1000&after=zz')
    if (r.body.tenants.some((t) => t.slug === 'zz-added')) {
      afterWrite = r.ms
      visibleMs = performance.now() - written
    }
  }
  const slugs = (await seed.query('SELECT slug FROM tenant_proxy.tenants ORDER BY random() LIMIT $1', [DESCRIPTORS])).rows.map((r) => r.slug)
  const issued = []
  for (const slug of slugs) issued.push((await call(`/v1/tenants/${slug}/descriptor`)).ms)
  await seed.end()
  await ops.close()

  const stats = (xs) => {
    const s = [...xs].sort((a, b) => a - b)
    const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
    return `median ${at(0.5).toFixed(2)} ms, p95 ${at(0.95).toFixed(2)} ms, max ${s[s.length - 1].toFixed(2)} ms (${s.length} calls)`
  }
  console.log(`tenants: ${TENANTS}`)
  console.log(`first page (builds the sorted slugs): ${first.ms.toFixed(1)} ms; slowest /up meanwhile ${slowestUp.toFixed(1)} ms`)
  console.log(`walk, limit=1000: ${all.seen} tenants; per page ${stats(all.times)}`)
  console.log(`walk, limit=1000&state=maintenance: ${filtered.seen} tenants; per page ${stats(filtered.times)}`)
  console.log(`page right after a registry write: ${afterWrite === null ? 'the write did not show within 60 s' : `${afterWrite.toFixed(2)} ms (the write showed after ${visibleMs.toFixed(0)} ms)`}`)
  console.log(`descriptor for a random tenant: ${stats(issued)}`)
}


async function cleanup () {
  if (child !== null && child.exitCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(timer)
  }
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch((err) => console.error(`cannot drop ${database}: ${err.message}`))
  await admin.end().catch(() => {})
  rmSync(tmp, { recursive: true, force: true })
}

main().then(cleanup, async (err) => {
  console.error(err)
  await cleanup()
  process.exitCode = 1
})
