/**
 * The in-image Kamal topology's entry script (deploy/kamal/in-image/bin/tenant-proxy-entrypoint),
 * run for real under every POSIX shell found here, with a stand-in app and the built tenant-proxy:
 * requests go through the proxy to the app, SIGTERM stops the proxy first and then the app, and
 * when either process dies the other is stopped and the script exits non-zero. With the shutdown
 * settings of deploy/kamal/in-image/deploy.yml, a SIGTERM with requests in flight ends within the
 * stop timeout Kamal gives the container (Docker's 10 s), even when a request outlives the grace.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { parse } from 'yaml'
import { CLI } from './helpers/cli.js'
import { freePort } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { until } from './helpers/wait.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const SCRIPT = path.join(ROOT, 'deploy/kamal/in-image/bin/tenant-proxy-entrypoint')
const STAND_IN = path.join(ROOT, 'test/helpers/stand-in-app.mjs')

/** dash is /bin/sh on Debian-based Rails images; bash and busybox run it where they exist. */
const SHELLS = ['dash', 'bash', 'busybox'].filter((shell) => {
  try {
    execFileSync('sh', ['-c', `command -v ${shell}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}).map((shell) => shell === 'busybox' ? ['busybox', 'sh'] : shell === 'bash' ? ['bash', '--posix'] : [shell])

interface Entrypoint {
  child: ChildProcess
  output (): string
  /** Resolves with the first match of `pattern` in the combined output (rejects at the deadline or on exit). */
  waitFor (pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>
  /** Resolves with the exit code (rejects at the deadline). */
  exit (timeoutMs?: number): Promise<number | null>
}

function startEntrypoint (t: Test, shell: string[], env: Record<string, string>, app: string[] = [process.execPath, STAND_IN]): Entrypoint {
  const [file, ...shellArgs] = shell as [string, ...string[]]
  const child = spawn(file, [...shellArgs, SCRIPT, ...app], {
    env: { PATH: [path.dirname(process.execPath), process.env.PATH ?? ''].join(path.delimiter), NODE: process.execPath, PROXY_MAIN: CLI, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let text = ''
  const listeners = new Set<() => void>()
  const onData = (c: Buffer): void => {
    text += c.toString()
    for (const fn of listeners) fn()
  }
  child.stdout?.on('data', onData)
  child.stderr?.on('data', onData)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal === null ? null : -1))))
  t.teardown(async () => {
    // Last resort only: the tests themselves stop everything they start.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
    for (const pid of pids(text)) {
      try { process.kill(pid, 'SIGKILL') } catch { /* already gone, as it should be */ }
    }
  })
  return {
    child,
    output: () => text,
    async waitFor (pattern, timeoutMs = 30_000) {
      return await new Promise((resolve, reject) => {
        const check = (): void => {
          const m = pattern.exec(text)
          if (m !== null) { done(); resolve(m) }
        }
        const timer = setTimeout(() => { done(); reject(new Error(`no ${String(pattern)} within ${timeoutMs} ms:\n${text}`)) }, timeoutMs)
        const done = (): void => { clearTimeout(timer); listeners.delete(check) }
        listeners.add(check)
        void exited.then((code) => { if (listeners.has(check)) { check(); if (listeners.has(check)) { done(); reject(new Error(`exited with ${String(code)} before ${String(pattern)}:\n${text}`)) } } })
        check()
      })
    },
    async exit (timeoutMs = 30_000) {
      let timer: NodeJS.Timeout | undefined
      const deadline = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`did not exit within ${timeoutMs} ms:\n${text}`)), timeoutMs) })
      try {
        return await Promise.race([exited, deadline])
      } finally {
        clearTimeout(timer)
      }
    }
  }
}

/** Pids the entry script reported starting. */
function pids (text: string): number[] {
  return [...text.matchAll(/started (?:app|proxy) \(pid (\d+)\)/g)].map((m) => Number(m[1]))
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function get (port: number, host: string, p = '/'): Promise<{ status: number, body: string }> {
  const res = await request(`http://127.0.0.1:${port}${p}`, { headers: { host }, headersTimeout: 10_000, bodyTimeout: 10_000 })
  return { status: res.statusCode, body: await res.body.text() }
}

async function setup (t: Test): Promise<{ env: Record<string, string>, trafficPort: number }> {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const trafficPort = await freePort()
  return {
    trafficPort,
    env: {
      APP_PORT: String(await freePort()),
      REGISTRY_DATABASE_URL: registry.url,
      TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
      TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
      TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
      TENANT_PROXY_OPS_HOST: '127.0.0.1',
      TENANT_PROXY_OPS_PORT: String(await freePort()),
      TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0',
      TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: ''
    }
  }
}

const PROXY_STARTED = /started proxy \(pid (\d+)\)/
const PROXY_LISTENING = /"msg":"tenant-proxy listening"/
const APP_LISTENING = /stand-in app listening pid=(\d+)/

/** Waits until the proxy listens; resolves to the proxy's and the app's pids. */
async function running (ep: Entrypoint): Promise<{ proxyPid: number, appPid: number }> {
  await ep.waitFor(PROXY_LISTENING)
  return { proxyPid: Number((await ep.waitFor(PROXY_STARTED))[1]), appPid: Number((await ep.waitFor(APP_LISTENING))[1]) }
}

for (const shell of SHELLS) {
  t.test(`${shell.join(' ')}: requests reach the app through tenant-proxy; SIGTERM stops the proxy, then the app, exit 0`, async (t) => {
    const { env, trafficPort } = await setup(t)
    // The app boots slowly: the proxy (and with it /up) must wait for it.
    const ep = startEntrypoint(t, shell, { ...env, STAND_IN_BOOT_MS: '500' })
    const { proxyPid, appPid } = await running(ep)
    t.ok(ep.output().indexOf('stand-in app listening') < ep.output().indexOf('tenant-proxy listening'), 'tenant-proxy starts only once the app accepts connections')

    t.equal((await get(trafficPort, 'anything', '/up')).status, 200, "tenant-proxy's /up (what kamal-proxy checks)")
    const res = await get(trafficPort, 'acme.example.com', '/orders')
    t.equal(res.status, 200)
    const body = JSON.parse(res.body) as { app: string, pid: number, descriptor: string | null }
    t.match(body, { app: 'stand-in', pid: appPid }, 'the request reached the app')
    t.match(body.descriptor, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'with the signed descriptor')
    t.equal((await get(trafficPort, 'nobody.example.com')).status, 404, 'unknown hosts stop at the proxy')

    ep.child.kill('SIGTERM')
    t.equal(await ep.exit(), 0, 'the script exits 0 after a requested stop')
    const out = ep.output()
    t.ok(out.includes('"msg":"stopped"'), 'tenant-proxy drained and stopped')
    t.ok(out.indexOf('"msg":"stopped"') < out.indexOf('stand-in app got SIGTERM'), 'the app got SIGTERM only after the proxy had stopped')
    t.notOk(alive(proxyPid), 'tenant-proxy is gone')
    t.notOk(alive(appPid), 'the app is gone')
  })
}

const shell = SHELLS[0] ?? ['sh']

t.test('when the app dies, the script stops tenant-proxy and exits with the app\'s code', async (t) => {
  const { env } = await setup(t)
  const ep = startEntrypoint(t, shell, env)
  const { proxyPid, appPid } = await running(ep)
  process.kill(appPid, 'SIGKILL')
  t.equal(await ep.exit(), 128 + 9, 'exit code of a process killed by SIGKILL')
  t.match(ep.output(), /the app process ended with code 137; stopped the other/)
  t.notOk(alive(proxyPid), 'tenant-proxy was stopped')
})

t.test('when tenant-proxy dies, the script stops the app and exits non-zero', async (t) => {
  const { env } = await setup(t)
  const ep = startEntrypoint(t, shell, env)
  const { proxyPid, appPid } = await running(ep)
  process.kill(proxyPid, 'SIGKILL')
  t.equal(await ep.exit(), 128 + 9)
  t.match(ep.output(), /stand-in app got SIGTERM/, 'the app was asked to stop')
  t.notOk(alive(appPid), 'the app is gone')
})

t.test('an app that exits 0 on its own still fails the container', async (t) => {
  const { env } = await setup(t)
  const ep = startEntrypoint(t, shell, env, ['sh', '-c', 'exit 0'])
  t.equal(await ep.exit(), 1)
  t.notMatch(ep.output(), /tenant-proxy listening/, 'tenant-proxy never started')
})

t.test('an app that never listens: the script gives up after APP_BOOT_TIMEOUT without starting the proxy', async (t) => {
  const { env } = await setup(t)
  const ep = startEntrypoint(t, shell, { ...env, APP_BOOT_TIMEOUT: '1', STAND_IN_NO_LISTEN: '1' })
  t.equal(await ep.exit(), 1)
  t.match(ep.output(), /did not accept connections on 127\.0\.0\.1:\d+ within 1s/)
  t.match(ep.output(), /stand-in app got SIGTERM/, 'the app was stopped')
  t.notMatch(ep.output(), /tenant-proxy listening/)
})

t.test('SIGTERM while the app boots stops it without starting the proxy', async (t) => {
  const { env } = await setup(t)
  const ep = startEntrypoint(t, shell, { ...env, STAND_IN_NO_LISTEN: '1' })
  await ep.waitFor(/stand-in app starting pid=\d+/)
  ep.child.kill('SIGTERM')
  t.equal(await ep.exit(), 0)
  t.match(ep.output(), /stand-in app got SIGTERM/)
  t.notMatch(ep.output(), /tenant-proxy listening/)
})

t.test('without an app command the script prints its usage', async (t) => {
  const ep = startEntrypoint(t, shell, {}, [])
  t.equal(await ep.exit(), 64)
  t.match(ep.output(), /usage: tenant-proxy-entrypoint <app command>/)
})

/**
 * The stop budget a Kamal deploy gives the in-image container: `docker stop` without -t for a
 * proxied role, so Docker's 10 s, unless deploy.yml sets stop_timeout (Kamal 2.12 and later;
 * basecamp/kamal lib/kamal/configuration/role.rb, stop_args). Plus the fragment's shutdown settings.
 */
async function fragmentShutdown (): Promise<{ budgetMs: number, env: Record<string, string> }> {
  const deploy = parse(await readFile(path.join(ROOT, 'deploy/kamal/in-image/deploy.yml'), 'utf8')) as { stop_timeout?: number, env: { clear: Record<string, unknown> } }
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(deploy.env.clear)) if (k.startsWith('TENANT_PROXY_SHUTDOWN_')) env[k] = String(v)
  return { budgetMs: (deploy.stop_timeout ?? 10) * 1000, env }
}

/** Starts `count` requests to the stand-in's /slow?ms=`ms` through the proxy; resolves once the app holds them all. */
async function inFlight (ep: Entrypoint, trafficPort: number, count: number, ms: number): Promise<Array<Promise<{ status: number, body: string } | Error>>> {
  const before = (ep.output().match(/stand-in app request \/slow/g) ?? []).length
  const requests = Array.from({ length: count }, async () => {
    try {
      const res = await request(`http://127.0.0.1:${trafficPort}/slow?ms=${ms}`, { headers: { host: 'acme.example.com' }, headersTimeout: 60_000, bodyTimeout: 60_000 })
      return { status: res.statusCode, body: await res.body.text() }
    } catch (err) {
      return err as Error
    }
  })
  const held = (): number => (ep.output().match(/stand-in app request \/slow/g) ?? []).length
  await until(() => held() >= before + count ? true : undefined, `the app to hold ${count} requests`, 30_000)
  return requests
}

t.test('with the fragment\'s shutdown settings, SIGTERM lets in-flight requests finish and the container stops within Kamal\'s stop timeout', async (t) => {
  const { budgetMs, env: shutdown } = await fragmentShutdown()
  const { env, trafficPort } = await setup(t)
  // A real server needs a moment to stop after its last request.
  const ep = startEntrypoint(t, shell, { ...env, ...shutdown, STAND_IN_STOP_MS: '500' })
  await running(ep)
  const requests = await inFlight(ep, trafficPort, 4, 1500)
  const termAt = Date.now()
  ep.child.kill('SIGTERM')
  const code = await ep.exit(budgetMs + 20_000)
  const elapsed = Date.now() - termAt
  t.equal(code, 0)
  t.ok(elapsed < budgetMs, `stopped ${elapsed} ms after SIGTERM, within the ${budgetMs} ms Docker waits before SIGKILL`)
  for (const result of await Promise.all(requests)) {
    t.match(result, { status: 200 }, 'the request in flight at SIGTERM was answered')
    if (!(result instanceof Error)) t.match(JSON.parse(result.body), { app: 'stand-in', url: '/slow?ms=1500' })
  }
  const out = ep.output()
  t.ok(out.indexOf('"msg":"stopped"') < out.indexOf('stand-in app got SIGTERM'), 'the app was stopped after the proxy')
})

t.test('with the fragment\'s shutdown settings, a request that outlives the grace and a slow-stopping app still fit Kamal\'s stop timeout', async (t) => {
  const { budgetMs, env: shutdown } = await fragmentShutdown()
  const graceMs = Number(shutdown.TENANT_PROXY_SHUTDOWN_GRACE_MS)
  const delayMs = Number(shutdown.TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS)
  // The worst case the fragment is sized for: the proxy uses its whole drain delay and grace, and
  // the app then takes 2 s to stop.
  const appStopMs = 2000
  const { env, trafficPort } = await setup(t)
  const ep = startEntrypoint(t, shell, { ...env, ...shutdown, STAND_IN_STOP_MS: String(appStopMs) })
  await running(ep)
  const stuck = (await inFlight(ep, trafficPort, 1, 120_000))[0]
  const termAt = Date.now()
  ep.child.kill('SIGTERM')
  const code = await ep.exit(budgetMs + 30_000)
  const elapsed = Date.now() - termAt
  t.equal(code, 0, 'a clean stop, not a kill')
  t.ok(elapsed >= delayMs + graceMs, `the proxy used its drain delay and grace (${delayMs} + ${graceMs} ms) before giving up on the request`)
  t.ok(elapsed < budgetMs, `stopped ${elapsed} ms after SIGTERM (drain delay ${delayMs} + grace ${graceMs} + app ${appStopMs} ms), within the ${budgetMs} ms Docker waits before SIGKILL`)
  t.notMatch(await stuck, { status: 200 }, 'the request that outlived the grace was cut')
  t.match(ep.output(), /stand-in app got SIGTERM/, 'the app was stopped by the script, not killed')
})
