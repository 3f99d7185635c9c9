/**
 * The Prometheus and Grafana files of the deploy kit: promtool accepts the scrape config and the
 * alert rules and their unit tests pass, every PromQL expression (alerts, dashboard panels,
 * dashboard variables) names only metrics that tenant-proxy really exports, and a real Prometheus
 * running the shipped scrape config finds and scrapes the containers a Kamal host runs.
 */
import { execFile, spawn } from 'node:child_process'
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { parse, stringify } from 'yaml'
import { ProxyMetrics } from '../src/ops/metrics.js'
import { freePort } from './helpers/postgres.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { until } from './helpers/wait.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const PROMETHEUS = path.join(ROOT, 'deploy/prometheus')

/** Every series name the proxy's registry exposes, histogram and summary suffixes included. */
async function exportedNames (): Promise<Set<string>> {
  const metrics = new ProxyMetrics()
  const names = new Set<string>()
  for (const metric of await metrics.registry.getMetricsAsJSON()) {
    names.add(metric.name)
    // prom-client types `type` as an enum whose values are these strings.
    const type = String(metric.type)
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(metric.name + suffix)
    if (type === 'summary') for (const suffix of ['_sum', '_count']) names.add(metric.name + suffix)
  }
  return names
}

/** Series written by Prometheus itself for every target, not by the proxy. */
const PROMETHEUS_SERIES = new Set(['up'])
/** PromQL words that are not metric names. */
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan'])

/** Metric names an expression reads: identifiers that are not functions, keywords, labels, strings or Grafana variables. */
function metricNames (expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""') // string literals (label values, regexes)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery selectors
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/\$\{?\w+\}?/g, ' ') // Grafana variables ($__rate_interval, ${datasource})
  const names: string[] = []
  for (const m of stripped.matchAll(/(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, name, call] = m
    if (name === undefined || call !== undefined || KEYWORDS.has(name.toLowerCase())) continue
    names.push(name)
  }
  return names
}

t.test('metricNames finds metrics and skips functions, labels and variables', async (t) => {
  t.same(metricNames('histogram_quantile(0.99, sum by (le) (rate(foo_bucket{a="b", c=~"x|y"}[$__rate_interval])))'), ['foo_bucket'])
  t.same(metricNames('time() - max by (instance) (bar_seconds{job="j"}) > 300'), ['bar_seconds'])
  t.same(metricNames('sum(rate(a_total[5m])) / sum(rate(b_total[5m])) > 0.05 and on (instance) up == 0'), ['a_total', 'b_total', 'up'])
})

const alerts = parse(await readFile(path.join(PROMETHEUS, 'alerts.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert?: string, record?: string, expr: string }> }> }
const dashboard = JSON.parse(await readFile(path.join(ROOT, 'deploy/grafana/tenant-proxy.json'), 'utf8')) as {
  uid: string
  panels: Array<{ id: number, type: string, title: string, datasource?: { uid?: string }, targets?: Array<{ expr: string, refId: string }> }>
  templating: { list: Array<{ name: string, type: string, query?: unknown, definition?: string }> }
}

t.test('alerts.yml and the dashboard name only exported metrics', async (t) => {
  const exported = await exportedNames()
  const expressions: Array<{ where: string, expr: string }> = []
  for (const group of alerts.groups) for (const rule of group.rules) expressions.push({ where: `alert ${rule.alert ?? rule.record ?? '?'}`, expr: rule.expr })
  for (const panel of dashboard.panels) for (const target of panel.targets ?? []) expressions.push({ where: `panel "${panel.title}" ${target.refId}`, expr: target.expr })
  for (const variable of dashboard.templating.list) {
    // label_values(<selector>, <label>): only the selector names a metric.
    const m = /^label_values\((.*),\s*\w+\)$/.exec(variable.definition ?? '')
    if (m !== null) expressions.push({ where: `variable ${variable.name}`, expr: m[1] ?? '' })
  }
  t.ok(expressions.length > 20, `${expressions.length} expressions checked`)
  for (const { where, expr } of expressions) {
    const names = metricNames(expr)
    t.ok(names.length > 0, `${where} reads a metric`)
    for (const name of names) t.ok(exported.has(name) || PROMETHEUS_SERIES.has(name), `${where}: ${name} is exported`)
  }
  const used = new Set(expressions.flatMap(({ expr }) => metricNames(expr)))
  for (const wanted of ['tenant_proxy_requests_total', 'tenant_proxy_request_duration_seconds_bucket', 'tenant_proxy_upstream_duration_seconds_bucket', 'tenant_proxy_requests_in_flight',
    'tenant_proxy_registry_tenants', 'tenant_proxy_registry_domains', 'tenant_proxy_registry_feed_connected', 'tenant_proxy_registry_last_sync_timestamp_seconds',
    'tenant_proxy_descriptor_signatures_total', 'tenant_proxy_upstream_errors_total', 'tenant_proxy_upstream_attempt_errors_total', 'tenant_proxy_upstream_addresses', 'process_cpu_seconds_total', 'process_resident_memory_bytes']) {
    t.ok(used.has(wanted), `${wanted} is shown or alerted on`)
  }
})

t.test('the dashboard is well formed', async (t) => {
  t.equal(dashboard.uid, 'tenant-proxy')
  const ids = dashboard.panels.map((p) => p.id)
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique')
  for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
    t.equal(panel.datasource?.uid, '${datasource}', `"${panel.title}" uses the data source variable`)
    t.ok((panel.targets ?? []).length > 0, `"${panel.title}" has a query`)
  }
  t.ok(dashboard.templating.list.some((v) => v.name === 'datasource' && v.type === 'datasource'), 'data source chosen at import')
})

const promtool = await new Promise<boolean>((resolve) => execFile('promtool', ['--version'], (err) => resolve(err === null)))
const skip = promtool ? false : 'promtool not installed (Debian package prometheus; .ci/run installs it)'

async function runPromtool (args: string[]): Promise<{ code: number, out: string }> {
  return await new Promise((resolve) => {
    execFile('promtool', args, { cwd: PROMETHEUS, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, out: stdout + stderr })
    })
  })
}

t.test('promtool check config accepts prometheus.yml (and the rule file it loads)', { skip }, async (t) => {
  const result = await runPromtool(['check', 'config', 'prometheus.yml'])
  t.equal(result.code, 0, result.out)
  t.match(result.out, /SUCCESS: 1 rule files found/)
})

t.test('promtool check rules accepts alerts.yml', { skip }, async (t) => {
  const result = await runPromtool(['check', 'rules', 'alerts.yml'])
  t.equal(result.code, 0, result.out)
  const count = alerts.groups.reduce((n, g) => n + g.rules.length, 0)
  t.match(result.out, new RegExp(`SUCCESS: ${count} rules found`))
})

t.test('promtool test rules: every alert fires on its failing series and stays quiet otherwise', { skip }, async (t) => {
  const result = await runPromtool(['test', 'rules', 'alerts.test.yml'])
  t.equal(result.code, 0, result.out)
  const tests = parse(await readFile(path.join(PROMETHEUS, 'alerts.test.yml'), 'utf8')) as { tests: Array<{ alert_rule_test: Array<{ alertname: string, exp_alerts: unknown[] }> }> }
  const cases = tests.tests.flatMap((c) => c.alert_rule_test)
  for (const group of alerts.groups) {
    for (const rule of group.rules) {
      if (rule.alert === undefined) continue
      t.ok(cases.some((c) => c.alertname === rule.alert && c.exp_alerts.length > 0), `${rule.alert} is tested firing`)
      t.ok(cases.some((c) => c.alertname === rule.alert && c.exp_alerts.length === 0), `${rule.alert} is tested quiet`)
    }
  }
})

/**
 * A stand-in for the Docker Engine API on a unix socket, answering the three calls Prometheus'
 * Docker service discovery makes (API version ping, container list, network list) with the
 * containers a Kamal host runs. Modelled on what Kamal's `docker run` sets: the `kamal` network,
 * the labels service/role/destination on app containers (basecamp/kamal
 * lib/kamal/configuration/role.rb, default_labels) and service=<service>-<accessory> on
 * accessories (lib/kamal/configuration/accessory.rb); exposed ports come from the image.
 */
interface FakeContainer { name: string, labels: Record<string, string>, ip: string, ports: Array<{ privatePort: number, publicPort?: number, ip?: string }> }

async function fakeDockerApi (t: Test, socketPath: string, containers: readonly FakeContainer[]): Promise<{ calls: string[] }> {
  const networkId = 'f0e1d2c3b4a5'
  const calls: string[] = []
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://docker')
    const route = url.pathname.replace(/^\/v[\d.]+/, '')
    calls.push(`${req.method ?? ''} ${route}`)
    const json = (body: unknown): void => {
      res.writeHead(200, { 'content-type': 'application/json', 'api-version': '1.41' })
      res.end(JSON.stringify(body))
    }
    if (route === '/_ping') {
      res.writeHead(200, { 'content-type': 'text/plain', 'api-version': '1.41' })
      res.end(req.method === 'HEAD' ? undefined : 'OK')
    } else if (route === '/containers/json') {
      json(containers.map((c, i) => ({
        Id: `${String(i).padStart(2, '0')}${'c'.repeat(62)}`,
        Names: [`/${c.name}`],
        Image: 'acme/shop:latest',
        Labels: c.labels,
        State: 'running',
        Ports: c.ports.map((p) => ({ PrivatePort: p.privatePort, Type: 'tcp', ...(p.publicPort === undefined ? {} : { PublicPort: p.publicPort, IP: p.ip }) })),
        HostConfig: { NetworkMode: 'kamal' },
        NetworkSettings: { Networks: { kamal: { NetworkID: networkId, IPAddress: c.ip } } }
      })))
    } else if (route === '/networks') {
      json([{ Name: 'kamal', Id: networkId, Scope: 'local', Driver: 'bridge', Internal: false, Ingress: false, Labels: {} }])
    } else {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ message: `not in the stand-in: ${route}` }))
    }
  })
  await new Promise<void>((resolve) => server.listen(socketPath, resolve))
  t.teardown(async () => await new Promise<void>((resolve) => server.close(() => resolve())))
  return { calls }
}

interface PromTarget { scrapePool: string, labels: Record<string, string>, discoveredLabels: Record<string, string>, health: string, lastError: string }

const prometheusBinary = await new Promise<boolean>((resolve) => execFile('prometheus', ['--version'], (err) => resolve(err === null)))

t.test('prometheus.yml: Docker service discovery scrapes every running tenant-proxy container on the kamal network, and nothing else (real Prometheus, stand-in Docker API)', {
  skip: prometheusBinary ? false : 'prometheus not installed (Debian package prometheus; .ci/run installs it)'
}, async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-prom-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const socketPath = path.join(dir, 'docker.sock')

  // A real tenant-proxy whose ops listener stands where Docker would put a container's 9394: on an
  // address of its own (127.0.0.2 is loopback too), at the fixed port the relabelling keeps.
  const registry = await testRegistry(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, 'http://127.0.0.1:9', { TENANT_PROXY_OPS_HOST: '127.0.0.2', TENANT_PROXY_OPS_PORT: '9394' }))
  t.equal(proxy.ops.port, 9394)

  const web = { service: 'shop', role: 'web', destination: '' }
  const exposed = [{ privatePort: 8080 }, { privatePort: 9394 }]
  const containers: FakeContainer[] = [
    // A deploy in progress: the old and the new web container run side by side.
    { name: 'shop-web-0a1b2c', labels: web, ip: '127.0.0.2', ports: exposed },
    { name: 'shop-web-3d4e5f', labels: web, ip: '172.18.0.6', ports: exposed },
    // Another role of the same image (it exposes 9394, but runs bin/jobs, not the proxy).
    { name: 'shop-job-3d4e5f', labels: { service: 'shop', role: 'job', destination: '' }, ip: '172.18.0.7', ports: exposed },
    // `kamal app exec` runs the image without labels.
    { name: 'shop-web-exec-3d4e5f-a1b2c3', labels: {}, ip: '172.18.0.8', ports: exposed },
    // The tenant-proxy accessory (topology b), its ops port also published on a private address.
    { name: 'shop-tenant-proxy', labels: { service: 'shop-tenant-proxy' }, ip: '172.18.0.9', ports: [{ privatePort: 8080 }, { privatePort: 9394, publicPort: 9394, ip: '10.0.0.10' }] },
    // Kamal's own containers and another service on the same host.
    { name: 'kamal-proxy', labels: {}, ip: '172.18.0.2', ports: [{ privatePort: 80, publicPort: 80, ip: '0.0.0.0' }, { privatePort: 443, publicPort: 443, ip: '0.0.0.0' }] },
    { name: 'shop-prometheus', labels: { service: 'shop-prometheus' }, ip: '172.18.0.3', ports: [{ privatePort: 9090, publicPort: 9090, ip: '10.0.0.10' }] },
    { name: 'blog-web-777777', labels: { service: 'blog', role: 'web', destination: '' }, ip: '172.18.0.10', ports: exposed }
  ]
  const docker = await fakeDockerApi(t, socketPath, containers)

  // The shipped file with two local substitutions: the stand-in socket, and a 1 s interval so
  // the test need not wait 15 s for a scrape. Everything else (relabelling, ports) is as shipped.
  const config = parse(await readFile(path.join(PROMETHEUS, 'prometheus.yml'), 'utf8')) as {
    global: Record<string, unknown>
    scrape_configs: Array<{ job_name: string, scrape_timeout?: string, docker_sd_configs?: Array<{ host: string, refresh_interval?: string }> }>
  }
  const job = config.scrape_configs.find((j) => j.job_name === 'tenant-proxy')
  t.ok(job?.docker_sd_configs?.[0]?.host.startsWith('unix://'), 'the shipped job discovers through the local Docker socket')
  if (job?.docker_sd_configs?.[0] === undefined) return
  job.docker_sd_configs[0].host = `unix://${socketPath}`
  config.global.scrape_interval = '1s'
  job.scrape_timeout = '1s'
  await writeFile(path.join(dir, 'prometheus.yml'), stringify(config))
  await copyFile(path.join(PROMETHEUS, 'alerts.yml'), path.join(dir, 'alerts.yml'))

  const port = await freePort()
  const server = spawn('prometheus', [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  server.stderr.on('data', (c: Buffer) => { log += c.toString() })
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()))
  t.teardown(async () => {
    // Only the server this test started, by its pid.
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM')
    await exited
  })

  const targets = async (): Promise<{ active: PromTarget[], dropped: number }> => {
    const res = await request(`http://127.0.0.1:${port}/api/v1/targets`)
    const body = await res.body.json() as { data: { activeTargets: PromTarget[], droppedTargets: unknown[] } }
    return { active: body.data.activeTargets.filter((x) => x.scrapePool === 'tenant-proxy'), dropped: body.data.droppedTargets.length }
  }
  const discovered = await until(async () => {
    if (server.exitCode !== null) throw new Error(`prometheus exited:\n${log}`)
    try {
      const now = await targets()
      return now.active.length > 0 ? now : undefined
    } catch { return undefined } // not listening yet
  }, 'Prometheus to discover targets', 60_000)
  t.ok(docker.calls.some((c) => c === 'GET /containers/json'), 'Prometheus listed the containers through the Docker API')

  const found = discovered.active.map((x) => ({ address: x.labels.instance, service: x.labels.service, role: x.labels.role, container: x.labels.container })).sort((a, b) => String(a.container).localeCompare(String(b.container)))
  t.same(found, [
    { address: '172.18.0.9:9394', service: 'shop-tenant-proxy', role: undefined, container: 'shop-tenant-proxy' },
    { address: '127.0.0.2:9394', service: 'shop', role: 'web', container: 'shop-web-0a1b2c' },
    { address: '172.18.0.6:9394', service: 'shop', role: 'web', container: 'shop-web-3d4e5f' }
  ], 'the ops port of both web containers of a deploy and of the accessory; not the traffic port, other roles, exec containers, kamal-proxy, Prometheus or another service')
  const expectedTargets = containers.reduce((n, c) => n + c.ports.length, 0)
  t.equal(discovered.dropped + discovered.active.length, expectedTargets, 'one discovered target per exposed port, the rest dropped by relabelling')

  // The scrape itself: the real proxy behind the first web container answers on /metrics.
  const scraped = await until(async () => (await targets()).active.find((x) => x.labels.instance === '127.0.0.2:9394' && x.health === 'up'), 'a successful scrape of the tenant-proxy at 127.0.0.2:9394', 30_000)
  t.equal(scraped.lastError, '')
  const res = await request(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent('tenant_proxy_requests_in_flight{container="shop-web-0a1b2c"}')}`)
  const query = await res.body.json() as { data: { result: Array<{ metric: Record<string, string> }> } }
  t.equal(query.data.result.length, 1, 'tenant-proxy series reach Prometheus, labelled with the container')
  t.match(query.data.result[0]?.metric, { job: 'tenant-proxy', service: 'shop', role: 'web' })
})
