/**
 * A change feed that hears no notifications (PgBouncer in transaction mode, simulated by a relay
 * that drops every NotificationResponse on the LISTEN connection, registry.listenUrl) is detected
 * by the proxy's own heartbeat and reported, in /ready, the metric and the log, instead of being
 * claimed synced; changes still arrive by the periodic check; once notifications flow again the
 * report clears. Queries keep using registry.databaseUrl, not the filtered feed URL.
 */
import t from 'tap'
import { request } from 'undici'
import { startNotificationFilter } from './helpers/notification-filter.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const CHECK_MS = 200

interface Ready { status: string, registry: { synced: boolean, feedDeaf: boolean, notSyncedReason: string | null } }

async function ready (opsUrl: string): Promise<{ code: number, body: Ready }> {
  const res = await request(`${opsUrl}/ready`)
  return { code: res.statusCode, body: await res.body.json() as Ready }
}

async function metric (opsUrl: string, name: string): Promise<number> {
  const text = await (await request(`${opsUrl}/metrics`)).body.text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return Number(line?.split(' ')[1])
}

async function status (url: string, host: string): Promise<number> {
  const res = await request(url, { headers: { host } })
  await res.body.dump()
  return res.statusCode
}

t.test('a feed whose notifications are dropped is reported deaf; changes still arrive by the periodic check', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const target = new URL(registry.url)
  const filter = await startNotificationFilter(t, { host: target.hostname, port: Number(target.port || 5432) }, { dropNotifications: true })
  const upstream = await startUpstream(t)
  const logs: string[] = []
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, {
    TENANT_PROXY_REGISTRY_LISTEN_URL: filter.url(registry.url),
    TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: String(CHECK_MS)
  }), logs)
  t.equal(await status(proxy.url, 'acme.example'), 200)

  const deaf = await until(async () => { const r = await ready(proxy.opsUrl); return r.body.registry.feedDeaf ? r : undefined }, '/ready to report the deaf feed')
  t.equal(deaf.code, 200, '/ready keeps its status code: a deaf feed is slow, not broken')
  t.match(deaf.body.registry, { synced: false, feedDeaf: true, notSyncedReason: /deaf.*registry\.listenUrl/ })
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_deaf'), 1)
  t.ok(filter.counts.dropped > 0, 'notifications were dropped on the feed connection')
  t.equal(logs.filter((l) => /registry change feed is deaf/.test(l)).length, 1, 'one warning per deaf episode')

  // Changes: their notifications are dropped too, and the periodic check applies them. A deaf feed
  // is also reconnected now and then, and a reconnect's resync would apply a change as well: a
  // change counts only when no reconnect or full load happened meanwhile (bounded tries).
  const loads = async (): Promise<number> => {
    const text = await (await request(`${proxy.opsUrl}/metrics`)).body.text()
    return Number(/^tenant_proxy_registry_loads_total\{result="ok"\} (\d+)/m.exec(text)?.[1])
  }
  let byCheck = false
  for (let i = 0; i < 6 && !byCheck; i++) {
    const before = { loads: await loads(), reconnects: await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), dropped: filter.counts.dropped }
    const host = `d${i}.acme.example`
    await registry.store.addDomain('acme', host, 'alias')
    await until(async () => await status(proxy.url, host) === 200 ? true : undefined, `${host} by the periodic check`, 10 * CHECK_MS + 5_000)
    const after = { loads: await loads(), reconnects: await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total'), dropped: filter.counts.dropped }
    if (after.loads === before.loads && after.reconnects === before.reconnects) {
      byCheck = true
      t.ok(after.dropped > before.dropped, 'its notification never reached the proxy')
    }
  }
  t.ok(byCheck, 'a change was applied by the periodic check (a delta, no reload) while notifications were dropped')
  t.ok(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_reconnects_total') >= 1, 'the deaf feed was reconnected')
  // Between its reconnects (503 meanwhile, as for any reconnect) a deaf feed routes as a synced one.
  await until(async () => await status(proxy.url, 'unknown.example') === 404 ? true : undefined, 'a 404 for an unknown host while deaf')
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_deaf'), 1, 'a deaf feed routes as before: unknown hosts are unknown')

  // Notifications flow again: the next heartbeat clears the report.
  filter.dropNotifications = false
  const heard = await until(async () => { const r = await ready(proxy.opsUrl); return r.body.registry.synced ? r : undefined }, '/ready to report the feed synced again')
  t.match(heard.body.registry, { synced: true, feedDeaf: false, notSyncedReason: null })
  t.equal(await metric(proxy.opsUrl, 'tenant_proxy_registry_feed_deaf'), 0)
  t.ok(filter.counts.forwarded > 0, 'heartbeats reached the proxy through the relay')
  t.ok(logs.some((l) => /hears notifications again/.test(l)), 'the recovery is logged')
})

t.test('a healthy feed through the relay is never deaf, and a change arrives by notification', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const target = new URL(registry.url)
  const filter = await startNotificationFilter(t, { host: target.hostname, port: Number(target.port || 5432) }, { dropNotifications: false })
  const upstream = await startUpstream(t)
  // A long check interval: the change can only arrive by its notification; heartbeats are tested above.
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, {
    TENANT_PROXY_REGISTRY_LISTEN_URL: filter.url(registry.url),
    TENANT_PROXY_REGISTRY_VERSION_CHECK_INTERVAL_MS: '3600000'
  }))
  await registry.store.addTenant({ slug: 'newco', domains: ['new.example'], databaseName: 'newco', databaseHost: null, databasePort: null, state: 'active', upstream: null, settings: {} })
  await until(async () => await status(proxy.url, 'new.example') === 200 ? true : undefined, 'the new tenant by notification')
  t.ok(filter.counts.forwarded >= 1, 'the notification went through the listenUrl relay')
  t.match((await ready(proxy.opsUrl)).body.registry, { synced: true, feedDeaf: false })
})
