/**
 * @tenant-proxy/verify as an app installs it: `npm pack` of clients/node (built by `npm run build`),
 * installed from the tarball into an empty app directory. Installing it must bring jose and
 * nothing else (no proxy, no Fastify, no PostgreSQL), its types must compile in a strict app
 * without Fastify or Express installed, and a plain `node` script must verify a descriptor with it.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const KIT = join(ROOT, 'clients/node')

// An npm install and a tsc run on a shared 2-core machine.
t.setTimeout(300_000)

interface Run { code: number, stdout: string, stderr: string }

async function run (file: string, args: readonly string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return await new Promise((resolve) => {
    // npm_* variables of the npm running the tests would leak its settings into the app's install.
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_'))) as Record<string, string>
    if (process.env.npm_config_cache !== undefined) clean.npm_config_cache = process.env.npm_config_cache
    execFile(file, args, { cwd, env: { ...clean, ...env }, timeout: 240_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

/** Bytes on disk of a tree (files' sizes, symlinks not followed). */
async function treeSize (dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    if (entry.isDirectory()) total += await treeSize(p)
    else if (entry.isFile()) total += (await stat(p)).size
  }
  return total
}

const npm = join(process.execPath, '..', 'npm')

t.test('npm pack + install into an empty app: jose only, types compile, a token verifies', async (t) => {
  t.ok(existsSync(join(KIT, 'dist/index.js')), 'clients/node is built (npm run build)')
  const dir = await mkdtemp(join(tmpdir(), 'tp-verify-pkg-'))
  const pack = await run(existsSync(npm) ? npm : 'npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], KIT)
  t.equal(pack.code, 0, pack.stderr)
  const [packed] = JSON.parse(pack.stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  if (packed === undefined) throw new Error('npm pack wrote nothing')
  const files = packed.files.map((f) => f.path).sort()
  t.ok(files.includes('README.md') && files.includes('package.json') && files.includes('dist/index.js') && files.includes('dist/index.d.ts') && files.includes('dist/fastify.d.ts'), 'the package holds its README, manifest, code and types')
  t.same(files.filter((f) => !/^(README\.md|package\.json|dist\/[a-z-]+\.(js|d\.ts))$/.test(f)), [], 'and nothing else (no sources, no tests)')

  const app = join(dir, 'app')
  await mkdir(app)
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
  const install = await run(existsSync(npm) ? npm : 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(dir, packed.filename)], app)
  t.equal(install.code, 0, install.stderr)
  const top = (await readdir(join(app, 'node_modules'))).filter((n) => !n.startsWith('.')).sort()
  t.same(top, ['@tenant-proxy', 'jose'], 'installed: the package and jose, nothing else')
  t.same(await readdir(join(app, 'node_modules/@tenant-proxy')), ['verify'])
  const bytes = await treeSize(join(app, 'node_modules'))
  t.ok(bytes < 2 << 20, `node_modules is ${(bytes / 1024).toFixed(0)} KiB (under 2 MiB; tenant-proxy/verify brought ~85 MB)`)
  t.comment(`installed size: ${(bytes / 1024).toFixed(0)} KiB in ${top.length} top-level entries`)

  // A strict TypeScript app with neither Fastify nor Express installed.
  await writeFile(join(app, 'app.ts'), [
    "import { createVerifier, createVerifierFromEnv, tenantDescriptorMiddleware, isDescriptorError, type TenantDescriptor } from '@tenant-proxy/verify'",
    "const v = createVerifier({ jwksUrl: 'http://127.0.0.1:9394/.well-known/tenant-proxy/jwks.json' }, { issuer: 'shop-production', audience: 'shop' })",
    'const fromEnv = createVerifierFromEnv()',
    'const mw = tenantDescriptorMiddleware({ verifier: fromEnv })',
    'export async function f (token: string): Promise<string> { try { const d: TenantDescriptor = await v.verify(token, \'acme.example.com\'); return d.db.name } catch (err) { return isDescriptorError(err) ? err.reason : \'error\' } }',
    'export { mw }'
  ].join('\n'))
  await writeFile(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [join(ROOT, 'node_modules/@types')] },
    files: ['app.ts']
  }))
  const tsc = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], app)
  t.equal(tsc.code, 0, `the package's types compile without skipLibCheck: ${tsc.stdout}${tsc.stderr}`)

  // A plain node script verifies one of the shared vectors with the installed package.
  const vectors = JSON.parse(await readFile(join(ROOT, 'test/fixtures/descriptor-vectors.json'), 'utf8')) as { now: number, issuer: string, audience: string, jwks: unknown, cases: Array<{ name: string, token: string, request_host: string }> }
  const good = vectors.cases.find((c) => c.name === 'valid ES256')
  await writeFile(join(app, 'check.mjs'), [
    "import { createVerifier } from '@tenant-proxy/verify'",
    'const [jwks, token, host, now, issuer, audience] = JSON.parse(process.env.CHECK)',
    'const v = createVerifier({ keys: jwks }, { issuer, audience, now: () => now * 1000 })',
    'const d = await v.verify(token, host)',
    'console.log(`${d.tenant} ${d.db.name}`)'
  ].join('\n'))
  const check = await run(process.execPath, ['check.mjs'], app, { CHECK: JSON.stringify([vectors.jwks, good?.token, good?.request_host, vectors.now, vectors.issuer, vectors.audience]) })
  t.equal(check.stdout.trim(), 'acme acme_prod', `verified with the installed package ${check.stderr}`)
})
