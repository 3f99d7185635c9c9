import { spawn } from 'node:child_process'
import { access, chmod, mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { CLI, runCli } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { startUpstream } from './helpers/upstream.js'

/** Polls `probe` until it returns true or the deadline passes (no fixed sleeps). */
async function eventually (probe: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function status (port: number, host: string, path = '/'): Promise<number> {
  const res = await request(`http://127.0.0.1:${port}${path}`, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

t.test('serve applies CLI changes live (LISTEN/NOTIFY), and SIGHUP forces a full reload', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const proxy = await spawnServe(t, { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_UPSTREAM_URLS: upstream.origin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(), TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: '0' })
  t.equal(await status(proxy.trafficPort, 'acme.example.com'), 200)
  t.equal(await status(proxy.trafficPort, 'new.example.com'), 404)
  t.equal((await runCli(['tenants', 'add', 'newco', '--domain', 'new.example.com', '--database', 'newco'], { REGISTRY_DATABASE_URL: registry.url })).code, 0)
  t.equal((await runCli(['tenants', 'state', 'acme', 'suspended'], { REGISTRY_DATABASE_URL: registry.url })).code, 0)
  await eventually(async () => await status(proxy.trafficPort, 'new.example.com') === 200, 'the new tenant, with no signal and no version check')
  await eventually(async () => await status(proxy.trafficPort, 'acme.example.com') === 403, 'the suspension')
  const loads = proxy.logs.filter((l) => l.includes('"msg":"registry loaded"')).length
  proxy.child.kill('SIGHUP')
  await eventually(async () => proxy.logs.filter((l) => l.includes('"msg":"registry loaded"') && l.includes('"reason":"reload"')).length === 1, 'a full reload logged after SIGHUP')
  t.ok(loads >= 1)
  t.equal(await status(proxy.trafficPort, 'new.example.com'), 200, 'still routing after the reload')
  const statusCli = await runCli(['registry', 'status', '--json'], { REGISTRY_DATABASE_URL: registry.url })
  t.match(JSON.parse(statusCli.stdout), { feeds: [{ application_name: /^tenant-proxy feed / }] }, 'registry status lists the proxy\'s change feed')
  t.equal(await proxy.stop(), 0)
})

t.test('without a registry URL, serve starts the embedded PostgreSQL and the CLI joins it', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-serve-'))
  await chmod(dir, 0o711) // the embedded server runs as the postgres user when we are root
  const dataDir = path.join(dir, 'registry')
  const env = { TENANT_PROXY_REGISTRY_EMBEDDED_DATA_DIR: dataDir, TENANT_PROXY_REGISTRY_EMBEDDED_PORT: String(await freePort()) }
  const upstream = await startUpstream(t)
  const proxy = await spawnServe(t, { ...env, TENANT_PROXY_UPSTREAM_URLS: upstream.origin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem() })
  t.equal(await status(proxy.trafficPort, 'anything', '/up'), 200, '/up with zero tenants on the embedded registry')
  const added = await runCli(['tenants', 'add', 'acme', '--domain', 'acme.localhost', '--database', 'acme'], env)
  t.equal(added.code, 0, added.stderr)
  const status1 = await runCli(['registry', 'status', '--json'], env)
  t.match(JSON.parse(status1.stdout), { embedded: true, tenants: 1, domains: 1, version: 1 })
  t.ok((JSON.parse(status1.stdout) as { connections: unknown[] }).connections.length >= 1, 'the running proxy shows in pg_stat_activity')
  proxy.child.kill('SIGHUP')
  await eventually(async () => await status(proxy.trafficPort, 'acme.localhost') === 200, 'acme after SIGHUP')
  t.equal(await proxy.stop(), 0)
  await t.rejects(access(path.join(dataDir, 'postmaster.pid')), 'the embedded server stopped with the proxy that started it')
  await rm(dir, { recursive: true, force: true })
})

t.test('npm run demo: two hosts reach two databases through a verifying echo app', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-demo-'))
  await chmod(dir, 0o711)
  const child = spawn(process.execPath, [CLI, 'demo'], {
    env: {
      PATH: process.env.PATH ?? '',
      TENANT_PROXY_REGISTRY_EMBEDDED_DATA_DIR: path.join(dir, 'registry'),
      TENANT_PROXY_REGISTRY_EMBEDDED_PORT: String(await freePort()),
      TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
      TENANT_PROXY_TRAFFIC_PORT: '0',
      TENANT_PROXY_OPS_HOST: '127.0.0.1',
      TENANT_PROXY_OPS_PORT: '0',
      TENANT_PROXY_LOG_LEVEL: 'warn'
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  t.teardown(async () => { if (child.exitCode === null) child.kill('SIGKILL'); await exited })
  const port = await new Promise<number>((resolve, reject) => {
    let text = ''
    child.stderr?.on('data', (c: Buffer) => {
      text += c.toString()
      const m = /traffic http:\/\/127\.0\.0\.1:(\d+)/.exec(text)
      if (m !== null && text.includes('Ctrl-C stops.')) resolve(Number(m[1]))
    })
    void exited.then((code) => reject(new Error(`demo exited with ${String(code)}: ${text}`)))
  })
  const get = async (host: string): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await request(`http://127.0.0.1:${port}/`, { headers: { host } })
    return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
  }
  t.match(await get('acme.localhost'), { status: 200, body: { verified: true, tenant: 'acme', database: { name: 'acme_production' } } })
  t.match(await get('globex.localhost'), { status: 200, body: { verified: true, tenant: 'globex', database: { name: 'globex_production' } } })
  t.match(await get('www.globex.localhost'), { status: 200, body: { verified: true, tenant: 'globex' } })
  t.match(await get('nobody.localhost'), { status: 404, body: { error: { code: 'TENANT_PROXY_ERR_UNKNOWN_HOST' } } })
  child.kill('SIGTERM')
  t.equal(await exited, 0)
  await rm(dir, { recursive: true, force: true })
})
