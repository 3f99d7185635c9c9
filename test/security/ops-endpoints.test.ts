/**
 * The ops endpoints (/metrics, /ready, /up of the ops app, the JWKS) are never served on the
 * traffic port, whatever the Host, target form or path spelling: the answer is the tenant app's
 * (the upstream echoes the path) or a proxy refusal, never ops content.
 *
 * Guards: src/server.ts / src/ops/app.ts serving ops on their own listener, and src/proxy/app.ts
 * registering only the health path and the proxy route on the traffic app. Mount the ops routes
 * on the traffic app and the metrics/JWKS bodies show up here.
 */
import t from 'tap'
import { rawRequest } from '../helpers/raw-http.js'
import { startRig } from './support.js'

const PATHS = ['/metrics', '/ready', '/.well-known/tenant-proxy/jwks.json', '//metrics', '/%2e/metrics', '/./metrics', '/x/../metrics', '/metrics/', '/METRICS', '/metrics?x=1', '/metrics#', '/%6detrics', '/.well-known/tenant-proxy/../tenant-proxy/jwks.json', '/.well-known%2ftenant-proxy%2fjwks.json', '/up/../metrics']

t.test('ops endpoints are unreachable through the traffic port', async (t) => {
  const rig = await startRig(t)
  const kid = String((rig.jwks.keys[0] as { kid: string }).kid)
  const hosts = ['acme.example.com', '127.0.0.1', `127.0.0.1:${rig.opsPort}`, 'localhost', 'unknown.example.com']
  for (const path of PATHS) {
    const targets = [path, `http://127.0.0.1:${rig.opsPort}${path}`, `http://acme.example.com${path}`]
    for (const target of targets) {
      for (const host of hosts) {
        const res = await rawRequest(rig.port, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)
        const what = `GET ${target} Host: ${host} → ${res.status}`
        // Ops content: Prometheus text, the readiness document, the proxy's key set.
        const leaked = /# HELP|# TYPE|tenant_proxy_|"upstreams"|"registry"|"draining"/.test(res.body) || res.body.includes(kid)
        t.notOk(leaked, `${what}: no ops content`)
        if (leaked) t.comment(res.body.slice(0, 300))
      }
    }
  }
})
