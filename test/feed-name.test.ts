/**
 * The change feed's application_name carries the proxy's applied version: it must survive
 * PostgreSQL's 63-byte limit intact (the host is what gets shortened) and read back as written.
 */
import pg from 'pg'
import t from 'tap'
import { loadConfig } from '../src/config/load.js'
import { APPLICATION_NAME_MAX_BYTES, feedApplicationName, parseFeedApplicationName } from '../src/registry/feed-name.js'
import { throwawayDatabase } from './helpers/postgres.js'

const LONG_HOST = 'tenant-proxy-7f9c8d6b5a-x2kq9.web.production.eu-west-1.compute.internal'
const LONGEST_APP = 'a'.repeat(32)

t.test('the version stays whole and the name fits in 63 bytes; the host is shortened', async (t) => {
  const name = feedApplicationName('tenant-proxy', 1234567, LONG_HOST, 4194304)
  t.ok(name.length <= APPLICATION_NAME_MAX_BYTES, name)
  t.match(name, /^tenant-proxy feed v=1234567 tenant-proxy-7f9c.*\/4194304$/)
  t.same(parseFeedApplicationName('tenant-proxy', name), { proxy: name.slice('tenant-proxy feed v=1234567 '.length), version: 1234567 })
  const longest = feedApplicationName(LONGEST_APP, 2 ** 40, LONG_HOST, 123)
  t.ok(longest.length <= APPLICATION_NAME_MAX_BYTES)
  t.equal(parseFeedApplicationName(LONGEST_APP, longest)?.version, 2 ** 40, 'the longest application name still leaves room for a 13-digit version')
  t.same(parseFeedApplicationName('tenant-proxy', feedApplicationName('tenant-proxy', null, 'web-1', 7)), { proxy: 'web-1/7', version: null }, 'no version before the first load')
  t.equal(parseFeedApplicationName('tenant-proxy', 'other-app feed v=9 web-1/7'), null, 'another application name is not a feed of this one')
  t.equal(parseFeedApplicationName('tenant-proxy', feedApplicationName('tenant-proxy', 5, 'h\u00e9te', 7))?.proxy, 'h?te/7', 'non-ASCII host bytes become ? as PostgreSQL would make them')
})

t.test('PostgreSQL keeps the name byte for byte, set at connect and with set_config', async (t) => {
  const url = await throwawayDatabase(t)
  const atConnect = feedApplicationName(LONGEST_APP, null, LONG_HOST, 99)
  const client = new pg.Client({ connectionString: url, application_name: atConnect })
  await client.connect()
  t.teardown(async () => await client.end())
  const read = async (): Promise<string> => (await client.query<{ n: string }>('SELECT application_name AS n FROM pg_stat_activity WHERE pid = pg_backend_pid()')).rows[0]?.n ?? ''
  t.equal(await read(), atConnect)
  const reported = feedApplicationName(LONGEST_APP, 9_007_199_254_740_991, LONG_HOST, 99)
  await client.query("SELECT set_config('application_name', $1, false)", [reported])
  t.equal(await read(), reported)
  t.equal(parseFeedApplicationName(LONGEST_APP, await read())?.version, 9_007_199_254_740_991)
})

t.test('registry.applicationName is limited to what leaves room for the version', async (t) => {
  t.equal(loadConfig({ env: { TENANT_PROXY_REGISTRY_APPLICATION_NAME: LONGEST_APP } }).registry.applicationName, LONGEST_APP)
  t.throws(() => loadConfig({ env: { TENANT_PROXY_REGISTRY_APPLICATION_NAME: `${LONGEST_APP}b` } }), { code: 'TENANT_PROXY_ERR_CONFIG_INVALID', message: /registry\.applicationName: must be 1-32 printable ASCII characters/ })
})
