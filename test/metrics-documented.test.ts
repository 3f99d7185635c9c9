/**
 * The Metrics table of docs/operations.md against a real proxy's first scrape: every documented
 * series, with every documented label value, exists before any traffic or error (a labelled
 * series prom-client has not seen yet is missing, not zero: dashboards show "no data" and rate()
 * misses the first increment), and every tenant_proxy_* metric the proxy exports is documented.
 */
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

interface DocumentedMetric { name: string, type: string, labels: string[], values: Map<string, string[]> }

/**
 * The rows of the Metrics table: names (several may share a row), type, label names and the values
 * the row lists for them; plus each label's values over all rows, for a row that names a label
 * without listing its values (`outcome` of the duration histogram). Values listed in a row are
 * that row's own: `result` is (ok, error) for registry loads and something else for TLS asks.
 */
function parseMetricsTable (markdown: string): { metrics: DocumentedMetric[], values: Map<string, string[]> } {
  const section = markdown.split(/^## /m).find((s) => s.startsWith('Metrics\n'))
  if (section === undefined) throw new Error('no "## Metrics" section')
  const metrics: DocumentedMetric[] = []
  const values = new Map<string, string[]>()
  for (const line of section.split('\n')) {
    const cells = line.split('|').slice(1, -1).map((c) => c.trim())
    const [names, type, labels] = cells
    if (cells.length !== 3 || names === undefined || type === undefined || labels === undefined || !names.startsWith('`')) continue
    const labelNames: string[] = []
    const rowValues = new Map<string, string[]>()
    // `label` optionally followed by (value, value, …); items that are not bare words are prose.
    for (const m of labels.matchAll(/`([a-z_]+)`(?:\s*\(([^)]*)\))?/g)) {
      const [, label, list] = m
      if (label === undefined) continue
      labelNames.push(label)
      const listed = (list ?? '').split(',').map((v) => v.trim()).filter((v) => /^[a-z0-9_]+$/i.test(v))
      if (listed.length > 0) {
        rowValues.set(label, listed)
        values.set(label, [...new Set([...(values.get(label) ?? []), ...listed])])
      }
    }
    for (const n of names.matchAll(/`([a-z_:][a-z0-9_:]*)`/g)) metrics.push({ name: n[1] as string, type, labels: labelNames, values: rowValues })
  }
  return { metrics, values }
}

/** Series of a Prometheus text exposition: name → label sets (as sorted `k="v"` strings); TYPE lines by name. */
function parseExposition (text: string): { series: Map<string, Set<string>>, types: Map<string, string> } {
  const series = new Map<string, Set<string>>()
  const types = new Map<string, string>()
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type !== null) types.set(type[1] as string, type[2] as string)
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line)
    if (m === null) throw new Error(`unparsed exposition line: ${line}`)
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1] ?? ''}="${l[2] ?? ''}"`).sort().join(',')
    const name = m[1] as string
    if (!series.has(name)) series.set(name, new Set())
    series.get(name)?.add(labels)
  }
  return { series, types }
}

/** Every combination of the label values (the row's own, else all rows'), as sorted `k="v"` strings. */
function combinations (labels: readonly string[], own: ReadonlyMap<string, readonly string[]>, values: ReadonlyMap<string, readonly string[]>): string[] {
  let sets: Array<Array<[string, string]>> = [[]]
  for (const label of labels) sets = sets.flatMap((set) => (own.get(label) ?? values.get(label) ?? []).map((v): Array<[string, string]> => [...set, [label, v]]))
  return sets.map((set) => set.map(([k, v]) => `${k}="${v}"`).sort().join(','))
}

t.test('parseMetricsTable reads names, types, labels and their values', async (t) => {
  const doc = ['## Metrics', '', '| Metric | Type | Labels |', '|---|---|---|',
    '| `a_total` | counter | `kind` (x, y): prose after, `other` (default, or a name from `some.key`) |',
    '| `b`, `c` | gauge | — (prose with `not_a_label_list`) |',
    '| `e_total` | counter | `kind` (z) |', '| `f` | histogram | `kind` |', '', '## Next', '| `d` | gauge | — |'].join('\n')
  const { metrics, values } = parseMetricsTable(doc)
  t.same(metrics.map((m) => ({ ...m, values: Object.fromEntries(m.values) })), [
    { name: 'a_total', type: 'counter', labels: ['kind', 'other'], values: { kind: ['x', 'y'], other: ['default'] } },
    { name: 'b', type: 'gauge', labels: ['not_a_label_list'], values: {} },
    { name: 'c', type: 'gauge', labels: ['not_a_label_list'], values: {} },
    { name: 'e_total', type: 'counter', labels: ['kind'], values: { kind: ['z'] } },
    { name: 'f', type: 'histogram', labels: ['kind'], values: {} }
  ])
  t.same(Object.fromEntries(values), { kind: ['x', 'y', 'z'], other: ['default'] })
  const [a, , , e, f] = metrics
  t.same(combinations(e?.labels ?? [], e?.values ?? new Map(), values), ['kind="z"'], 'a row\'s own values')
  t.same(combinations(a?.labels ?? [], a?.values ?? new Map(), values).length, 2)
  t.same(combinations(f?.labels ?? [], f?.values ?? new Map(), values), ['kind="x"', 'kind="y"', 'kind="z"'], 'all rows\' values for a row that lists none')
})

t.test('every series of the Metrics table exists in the first scrape, and every exported tenant_proxy_* metric is in the table', async (t) => {
  const { metrics, values } = parseMetricsTable(await readFile(path.join(ROOT, 'docs/operations.md'), 'utf8'))
  t.ok(metrics.length >= 15, `${metrics.length} documented metrics`)
  for (const key of ['kind', 'result', 'outcome', 'status_class', 'state']) t.ok(values.has(key), `values of ${key} are documented`)

  const registry = await testRegistry(t)
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const { series, types } = parseExposition(await (await request(`${proxy.opsUrl}/metrics`)).body.text())
  t.equal(upstream.seen.length, 0, 'no request reached the app: the scrape sees a proxy that has done nothing yet')

  for (const m of metrics) {
    // A label whose values the table does not list cannot be checked, so it must list them
    // (`pool`: "default", the only pool configured here; named pools are prose).
    for (const label of m.labels) t.ok(values.has(label), `${m.name}: the values of label ${label} are documented`)
    const expected = combinations(m.labels, m.values, values)
    t.equal(types.get(m.name), m.type, `${m.name} is a ${m.type}`)
    const seriesName = m.type === 'histogram' ? `${m.name}_count` : m.name
    const seen = series.get(seriesName) ?? new Set<string>()
    const missing = expected.filter((labels) => !seen.has(labels))
    t.same(missing, [], `${seriesName}: all ${expected.length} documented series present`)
    if (m.type === 'histogram') {
      for (const labels of expected) t.ok(series.get(`${m.name}_bucket`)?.has([labels, 'le="+Inf"'].filter((l) => l !== '').sort().join(',')), `${m.name}_bucket{${labels}} +Inf present`)
    }
  }

  const documented = new Map(metrics.map((m) => [m.name, m]))
  for (const [name, type] of types) {
    if (!name.startsWith('tenant_proxy_')) continue
    const doc = documented.get(name)
    t.ok(doc !== undefined, `${name} (${type}) is in the Metrics table`)
    if (doc === undefined) continue
    const suffixes = type === 'histogram' ? ['_bucket', '_sum', '_count'] : ['']
    const labelsSeen = new Set(suffixes.flatMap((s) => [...(series.get(name + s) ?? [])].flatMap((set) => set === '' ? [] : set.split(',').map((kv) => kv.split('=')[0] as string))))
    labelsSeen.delete('le')
    t.same([...labelsSeen].sort(), [...doc.labels].sort(), `${name}: exported labels are the documented ones`)
  }
})
