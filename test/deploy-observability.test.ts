/**
 * The Prometheus and Grafana files of the deploy kit: promtool accepts the scrape config and the
 * alert rules and their unit tests pass, and every PromQL expression (alerts, dashboard panels,
 * dashboard variables) names only metrics that tenant-proxy really exports.
 */
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { ProxyMetrics } from '../src/ops/metrics.js'

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
