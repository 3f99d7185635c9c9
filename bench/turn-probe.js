// Preloaded into each proxy by bench/fleet.js (node --import): a 1 ms interval timer whose
// lateness is the length of the event-loop turn that held it up. Every turn over THRESHOLD_MS is
// appended to TURN_PROBE_FILE as "<epoch ms at its start> <ms>"; the benchmark reads the turns of
// its full-load window. Unlike prom-client's nodejs_eventloop_lag_max_seconds it is read per turn
// with a timestamp, so it can be matched to a phase; like it, it also counts time the process
// waited for a core. The file gets a line per long turn only, so the probe costs the proxy one
// timer callback a millisecond.
import { appendFileSync } from 'node:fs'
import { setInterval } from 'node:timers'

const file = process.env.TURN_PROBE_FILE
const THRESHOLD_MS = 5
if (file !== undefined && file !== '') {
  let last = performance.now()
  setInterval(() => {
    const now = performance.now()
    const late = now - last - 1
    if (late > THRESHOLD_MS) appendFileSync(file, `${Math.round(performance.timeOrigin + last)} ${late.toFixed(1)}\n`)
    last = now
  }, 1).unref()
}
