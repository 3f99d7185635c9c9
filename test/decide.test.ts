/**
 * decide(): every routing rule as one table, on a real index built from rows, without a server.
 * Guards src/proxy/decide.ts (and the resolver and host canonicalization it calls).
 */
import t from 'tap'
import { decide, type DecideOptions, type Decision, type RegistryView } from '../src/proxy/decide.js'
import type { RequestFacts } from '../src/proxy/request-target.js'
import { buildIndex } from '../src/registry/index.js'
import type { TenantRow } from '../src/registry/store.js'
import { Resolver } from '../src/routing/resolve.js'

const row = (id: number, slug: string, extra: Partial<TenantRow> = {}): TenantRow =>
  ({ id, slug, databaseName: `${slug}_db`, databaseHost: null, databasePort: null, state: 'active', upstream: null, epoch: 1, primaryHost: null, ...extra })

const index = buildIndex({
  version: 7,
  registryId: 'r',
  tenants: [
    row(1, 'acme'),
    row(2, 'sleepy', { state: 'suspended' }),
    row(3, 'fixing', { state: 'maintenance' }),
    row(4, 'heavy', { upstream: 'reports' }),
    row(5, 'lost', { upstream: 'nowhere' }),
    row(6, 'wild'),
    row(7, 'moving', { holdMs: 30_000 }),
    row(8, 'frozen', { state: 'suspended', holdMs: 30_000 }),
    row(9, 'shut', { state: 'maintenance', holdMs: 5_000 })
  ],
  domains: [
    { hostname: 'acme.example.com', tenantId: 1 },
    { hostname: 'sleepy.example.com', tenantId: 2 },
    { hostname: 'fixing.example.com', tenantId: 3 },
    { hostname: 'heavy.example.com', tenantId: 4 },
    { hostname: 'lost.example.com', tenantId: 5 },
    { hostname: 'moving.example.com', tenantId: 7 },
    { hostname: 'frozen.example.com', tenantId: 8 },
    { hostname: 'shut.example.com', tenantId: 9 }
  ]
}, { defaultHost: 'db.internal', defaultPort: 5432 })

type Pool = 'default-pool' | 'reports-pool'
const options = (pools: Record<string, Pool> = { '': 'default-pool', reports: 'reports-pool' }): DecideOptions<Pool> => ({
  resolver: new Resolver({ wwwFallback: true, wildcardDomains: ['apps.example.net'], reservedLabels: ['www', 'admin'], passthroughHosts: ['signup.example.com'] }),
  pool: (name) => pools[name ?? ''],
  maintenanceRetryAfterS: 30,
  unavailableRetryAfterS: 5
})
const facts = (host: string | undefined, extra: Partial<RequestFacts> = {}): RequestFacts => ({ host, duplicateHost: false, targetProblem: null, ...extra })
const SYNCED: RegistryView = { index, synced: true }

/** What a decision is expected to be, in short. */
type Expect =
  | { refuse: string, outcome: string, status?: number, retryAfterS?: number, host?: string, tenant?: string | null, detail?: RegExp }
  | { forward: Pool, outcome: 'routed' | 'passthrough', host: string, tenant: string | null }
  | { hold: number, host: string, tenant: string }

const CASES: Array<[string, RequestFacts, RegistryView, Expect, DecideOptions<Pool>?]> = [
  ['a tenant domain', facts('acme.example.com'), SYNCED, { forward: 'default-pool', outcome: 'routed', host: 'acme.example.com', tenant: 'acme' }],
  ['case, trailing dot and port are canonicalized', facts('ACME.Example.COM.:8443'), SYNCED, { forward: 'default-pool', outcome: 'routed', host: 'acme.example.com', tenant: 'acme' }],
  ['www. of a tenant domain', facts('www.acme.example.com'), SYNCED, { forward: 'default-pool', outcome: 'routed', host: 'www.acme.example.com', tenant: 'acme' }],
  ['wildcard: first label is the slug', facts('wild.apps.example.net'), SYNCED, { forward: 'default-pool', outcome: 'routed', host: 'wild.apps.example.net', tenant: 'wild' }],
  ['wildcard: a reserved label never resolves', facts('admin.apps.example.net'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UNKNOWN_HOST', outcome: 'unknown_host', host: 'admin.apps.example.net' }],
  ['wildcard: two labels deep is not a slug', facts('x.wild.apps.example.net'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UNKNOWN_HOST', outcome: 'unknown_host' }],
  ['wildcard: an unknown slug', facts('nobody.apps.example.net'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UNKNOWN_HOST', outcome: 'unknown_host' }],
  ['pass-through host: the default pool, no tenant', facts('signup.example.com'), SYNCED, { forward: 'default-pool', outcome: 'passthrough', host: 'signup.example.com', tenant: null }],
  ['pass-through host without a default pool', facts('signup.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN', outcome: 'passthrough' }, options({})],
  ['a tenant with a named pool', facts('heavy.example.com'), SYNCED, { forward: 'reports-pool', outcome: 'routed', host: 'heavy.example.com', tenant: 'heavy' }],
  ['a tenant naming a pool this proxy lacks', facts('lost.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN', outcome: 'routed', tenant: 'lost' }],
  ['suspended', facts('sleepy.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_TENANT_SUSPENDED', outcome: 'suspended', tenant: 'sleepy' }],
  ['maintenance: 503 with Retry-After', facts('fixing.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_TENANT_MAINTENANCE', outcome: 'maintenance', retryAfterS: 30, tenant: 'fixing' }],
  ['paused: held (not refused) for the pause\'s timeout', facts('moving.example.com'), SYNCED, { hold: 30_000, host: 'moving.example.com', tenant: 'moving' }],
  ['paused through www. and a wildcard name too', facts('www.moving.example.com'), SYNCED, { hold: 30_000, host: 'www.moving.example.com', tenant: 'moving' }],
  ['paused while out of sync: still held (the release comes with the resync)', facts('moving.apps.example.net'), { index, synced: false }, { hold: 30_000, host: 'moving.apps.example.net', tenant: 'moving' }],
  ['paused and suspended: suspended, no wait', facts('frozen.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_TENANT_SUSPENDED', outcome: 'suspended', tenant: 'frozen' }],
  ['paused and in maintenance: maintenance, no wait', facts('shut.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_TENANT_MAINTENANCE', outcome: 'maintenance', retryAfterS: 30, tenant: 'shut' }],
  ['unknown host while synced: 404', facts('nobody.example.com'), SYNCED, { refuse: 'TENANT_PROXY_ERR_UNKNOWN_HOST', outcome: 'unknown_host', host: 'nobody.example.com', tenant: null }],
  ['unknown host while out of sync: 503, it may have been added since', facts('nobody.example.com'), { index, synced: false }, { refuse: 'TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE', outcome: 'registry_unavailable', retryAfterS: 5 }],
  ['a known host while out of sync still routes', facts('acme.example.com'), { index, synced: false }, { forward: 'default-pool', outcome: 'routed', host: 'acme.example.com', tenant: 'acme' }],
  ['no index loaded yet', facts('acme.example.com'), { index: null, synced: false }, { refuse: 'TENANT_PROXY_ERR_REGISTRY_NOT_LOADED', outcome: 'registry_unavailable', retryAfterS: 5 }],
  ['missing Host', facts(undefined), SYNCED, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request', detail: /missing Host/ }],
  ['empty Host', facts(''), SYNCED, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request', detail: /missing Host/ }],
  ['two Host fields', facts('acme.example.com', { duplicateHost: true }), SYNCED, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request', detail: /more than one Host/ }],
  ['an IP literal', facts('127.0.0.1'), SYNCED, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request', detail: /invalid Host/, host: '127.0.0.1' }],
  ['a target the proxy does not forward', facts('acme.example.com', { targetProblem: 'a request target must not contain .. segments' }), SYNCED, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request', detail: /\.\. segments/, host: 'acme.example.com', tenant: null }],
  ['a bad Host is refused before the index is even looked at', facts('a..b'), { index: null, synced: false }, { refuse: 'TENANT_PROXY_ERR_BAD_REQUEST', outcome: 'bad_request' }]
]

t.test('decide(): every rule', async (t) => {
  for (const [name, f, view, expect, opts] of CASES) {
    const d: Decision<Pool> = decide(f, view, opts ?? options())
    if ('refuse' in expect) {
      t.equal(d.kind, 'refuse', `${name}: refused`)
      if (d.kind !== 'refuse') continue
      t.equal(d.code, expect.refuse, `${name}: ${expect.refuse}`)
      t.equal(d.outcome, expect.outcome, `${name}: outcome ${expect.outcome}`)
      t.equal(d.retryAfterS, expect.retryAfterS, `${name}: Retry-After`)
      if (expect.host !== undefined) t.equal(d.host, expect.host, `${name}: host`)
      if (expect.tenant !== undefined) t.equal(d.tenant, expect.tenant, `${name}: tenant`)
      if (expect.detail !== undefined) t.match(d.detail, expect.detail, `${name}: detail`)
    } else if ('hold' in expect) {
      t.equal(d.kind, 'hold', `${name}: held`)
      if (d.kind !== 'hold') continue
      t.equal(d.outcome, 'paused', `${name}: outcome paused`)
      t.equal(d.holdMs, expect.hold, `${name}: hold time`)
      t.equal(d.host, expect.host, `${name}: host`)
      t.equal(d.route.slug, expect.tenant, `${name}: tenant`)
    } else {
      t.equal(d.kind, 'forward', `${name}: forwarded`)
      if (d.kind !== 'forward') continue
      t.equal(d.pool, expect.forward, `${name}: pool`)
      t.equal(d.outcome, expect.outcome, `${name}: outcome`)
      t.equal(d.host, expect.host, `${name}: host`)
      t.equal(d.route?.slug ?? null, expect.tenant, `${name}: tenant`)
    }
  }
})
