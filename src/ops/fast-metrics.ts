/**
 * Counters and histograms for the per-request path, printed by prom-client's Registry.
 * prom-client validates and hashes label values on every observe(), even through a bound child;
 * here every series is fixed at start and updated by array index, and the work of formatting
 * happens at scrape time instead.
 */

type Labels = Readonly<Record<string, string>>

/** The shape prom-client's Registry reads from a registered metric. */
interface MetricSnapshot {
  name: string
  help: string
  type: 'counter' | 'histogram'
  aggregator: 'sum'
  values: Array<{ value: number, labels: Labels, metricName?: string }>
}

/** A counter whose series are listed up front and incremented by index. */
export class IndexedCounter {
  readonly name: string
  readonly help: string
  readonly #series: readonly Labels[]
  readonly #counts: Float64Array

  constructor (name: string, help: string, series: readonly Labels[]) {
    this.name = name
    this.help = help
    this.#series = series
    this.#counts = new Float64Array(series.length)
  }

  /** Adds one to series `i`. */
  inc (i: number): void {
    this.#counts[i] = (this.#counts[i] ?? 0) + 1
  }

  /** Current values, for the Registry. */
  async get (): Promise<MetricSnapshot> {
    return { name: this.name, help: this.help, type: 'counter', aggregator: 'sum', values: this.#series.map((labels, i) => ({ value: this.#counts[i] ?? 0, labels })) }
  }
}

/** A histogram whose series are listed up front and observed by index. */
export class IndexedHistogram {
  readonly name: string
  readonly help: string
  readonly #series: readonly Labels[]
  readonly #bounds: readonly number[]
  /** Per series: one slot per bound plus +Inf (not cumulative; summed at scrape). */
  readonly #buckets: Float64Array
  readonly #sums: Float64Array
  readonly #counts: Float64Array

  constructor (name: string, help: string, bounds: readonly number[], series: readonly Labels[] = [{}]) {
    this.name = name
    this.help = help
    this.#series = series
    this.#bounds = bounds
    this.#buckets = new Float64Array(series.length * (bounds.length + 1))
    this.#sums = new Float64Array(series.length)
    this.#counts = new Float64Array(series.length)
  }

  /** Records `value` in series `i`. */
  observe (i: number, value: number): void {
    const bounds = this.#bounds
    let b = 0
    while (b < bounds.length && value > (bounds[b] as number)) b++
    const slot = i * (bounds.length + 1) + b
    this.#buckets[slot] = (this.#buckets[slot] ?? 0) + 1
    this.#sums[i] = (this.#sums[i] ?? 0) + value
    this.#counts[i] = (this.#counts[i] ?? 0) + 1
  }

  /** Cumulative buckets, sum and count per series, for the Registry. */
  async get (): Promise<MetricSnapshot> {
    const values: MetricSnapshot['values'] = []
    const width = this.#bounds.length + 1
    this.#series.forEach((labels, i) => {
      let cumulative = 0
      for (let b = 0; b < width; b++) {
        cumulative += this.#buckets[i * width + b] ?? 0
        const le = b < this.#bounds.length ? String(this.#bounds[b]) : '+Inf'
        values.push({ metricName: `${this.name}_bucket`, labels: { le, ...labels }, value: cumulative })
      }
      values.push({ metricName: `${this.name}_sum`, labels, value: this.#sums[i] ?? 0 })
      values.push({ metricName: `${this.name}_count`, labels, value: this.#counts[i] ?? 0 })
    })
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values }
  }
}
