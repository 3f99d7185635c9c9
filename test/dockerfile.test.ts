/**
 * There is no Docker engine in CI, so the Dockerfile is proven by replaying it: its structure is
 * checked, the COPY steps are copied into a temp directory per stage, every RUN command that does
 * not need root or Debian is run there, and the resulting runtime directory is started with its
 * ENTRYPOINT/CMD against a real registry, then probed with the HEALTHCHECK command itself.
 */
import { execFile, spawn } from 'node:child_process'
import { cp, mkdir, mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { loadConfig } from '../src/config/load.js'
import { freePort } from './helpers/postgres.js'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/**
 * Commands of RUN steps that only make sense while building the image, each with why it is not
 * replayed here. Every entry must still appear in the Dockerfile, so the list cannot go stale.
 */
const IMAGE_ONLY_COMMANDS: Readonly<Record<string, string>> = {
  'apt-get update': 'Debian package index; needs root and apt',
  'apt-get install -y --no-install-recommends tini': 'installs tini from Debian; checked through ENTRYPOINT below',
  'rm -rf /var/lib/apt/lists/*': 'drops the apt index from the layer',
  'npm cache clean --force': 'shrinks the layer; here it would empty the shared npm cache',
  'install -d -o node -g node /app/data': 'chown to the image user needs root'
}

// Two npm installs and a TypeScript build on a shared 2-core machine.
t.setTimeout(600_000)

interface Instruction { keyword: string, args: string, line: number }
interface Stage { image: string, name: string, instructions: Instruction[] }

/** Splits a Dockerfile into stages of instructions (continuations joined, comments dropped). */
function parseDockerfile (text: string): Stage[] {
  const stages: Stage[] = []
  let pending = ''
  let startLine = 0
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    // Docker drops comment lines even inside a continued instruction.
    if (line.startsWith('#') || (line === '' && pending === '')) return
    if (pending === '') startLine = i + 1
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' '
      return
    }
    const full = (pending + line).trim()
    pending = ''
    if (full === '') return
    const match = /^(\S+)\s*(.*)$/s.exec(full)
    if (match === null) return
    const keyword = (match[1] ?? '').toUpperCase()
    const args = (match[2] ?? '').trim()
    if (keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      stages.push({ image: from?.[1] ?? args, name: from?.[2] ?? String(stages.length), instructions: [] })
      return
    }
    const stage = stages.at(-1)
    if (stage === undefined) throw new Error(`line ${startLine}: ${keyword} before any FROM`)
    stage.instructions.push({ keyword, args, line: startLine })
  })
  return stages
}

/** The argv of an exec-form (JSON array) instruction argument. */
function execForm (args: string): string[] {
  const parsed: unknown = JSON.parse(args)
  if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string')) throw new Error(`not an exec-form array: ${args}`)
  return parsed
}

function only (stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.keyword === keyword)
}

/** ENV instructions as a map (both `K=V …` and the legacy `K V` form). */
function envOf (stage: Stage): Record<string, string> {
  const env: Record<string, string> = {}
  for (const { args } of only(stage, 'ENV')) {
    if (!args.includes('=')) {
      const [key, ...rest] = args.split(/\s+/)
      env[key ?? ''] = rest.join(' ')
      continue
    }
    for (const m of args.matchAll(/(\w+)=("[^"]*"|\S*)/g)) env[m[1] ?? ''] = (m[2] ?? '').replace(/^"|"$/g, '')
  }
  return env
}

interface Run { code: number, output: string }

async function run (file: string, args: readonly string[], opts: { cwd?: string, env: Record<string, string>, timeoutMs: number }): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1
      resolve({ code, output: stdout + stderr })
    })
  })
}

/** PATH with this test's node (and the npm next to it) first, as in the node image. */
const PATH = [path.dirname(process.execPath), process.env.PATH ?? ''].join(path.delimiter)

/** A clean environment for replayed commands: no npm_* variables of the npm running the tests. */
function baseEnv (): Record<string, string> {
  const env: Record<string, string> = { PATH, HOME: process.env.HOME ?? os.homedir() }
  // The same cache as the developer's npm, so --prefer-offline has something to prefer.
  if (process.env.npm_config_cache !== undefined) env.npm_config_cache = process.env.npm_config_cache
  return env
}

const dockerfile = parseDockerfile(await readFile(path.join(ROOT, 'Dockerfile'), 'utf8'))
const dockerignore = (await readFile(path.join(ROOT, '.dockerignore'), 'utf8')).split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))

t.test('Dockerfile structure', async (t) => {
  t.equal(dockerfile.length, 2, 'two stages: build and runtime')
  const [build, runtime] = dockerfile as [Stage, Stage]
  for (const stage of dockerfile) t.match(stage.image, /^node:22(\.\d+)*-bookworm-slim$/, `stage ${stage.name} is based on Node 22 LTS slim`)
  t.equal(build.name, 'build')

  t.ok(only(build, 'RUN').some((r) => r.args === 'npm ci --no-audit --no-fund'), 'the build stage installs every dependency')
  t.ok(only(build, 'RUN').some((r) => r.args === 'npm run build'), 'the build stage compiles')
  t.ok(only(runtime, 'RUN').some((r) => r.args.split(' && ').includes('npm ci --omit=dev --no-audit --no-fund')), 'the runtime stage installs production dependencies only')
  t.ok(only(runtime, 'COPY').some((c) => c.args.startsWith('--from=build ') && c.args.includes('/dist')), 'the runtime stage takes only dist/ from the build stage')
  t.notOk(only(runtime, 'COPY').some((c) => /(^|\s)src(\s|$)/.test(c.args)), 'no TypeScript sources in the runtime image')

  const users = only(runtime, 'USER')
  t.equal(users.length, 1, 'one USER')
  const user = users[0]?.args ?? ''
  t.notOk(['root', '0', '0:0', 'root:root'].includes(user), `runs as a non-root user (${user})`)
  const lastRun = Math.max(...only(runtime, 'RUN').map((r) => r.line))
  t.ok((users[0]?.line ?? 0) > lastRun, 'USER comes after every RUN (nothing later runs as root)')

  const entrypoint = execForm(only(runtime, 'ENTRYPOINT')[0]?.args ?? '[]')
  const cmd = execForm(only(runtime, 'CMD')[0]?.args ?? '[]')
  t.same(entrypoint.slice(0, 2), ['/usr/bin/tini', '--'], 'tini is PID 1 and forwards signals')
  t.ok(only(runtime, 'RUN').some((r) => /apt-get install\b.*\btini\b/.test(r.args)), 'tini comes from Debian in the image')
  t.same([...entrypoint.slice(2), ...cmd], ['node', '/app/dist/src/main.js', 'serve'], 'the default command is tenant-proxy serve')

  t.same(only(runtime, 'EXPOSE').flatMap((e) => e.args.split(/\s+/)).sort(), ['8080', '9394'], 'exposes the traffic and ops ports')
  // The listeners' addresses and ports come from the config defaults plus the image's ENV.
  const config = loadConfig({ env: envOf(runtime) })
  t.equal(config.traffic.host, '0.0.0.0', 'traffic listener binds every interface in the container')
  t.equal(config.ops.host, '0.0.0.0', 'ops listener binds every interface in the container')
  t.equal(config.traffic.port, 8080)
  t.equal(config.ops.port, 9394)

  const healthchecks = only(runtime, 'HEALTHCHECK')
  t.equal(healthchecks.length, 1, 'one HEALTHCHECK')
  const hc = /^((?:--\S+\s+)*)CMD\s+(\[.*\])$/s.exec(healthchecks[0]?.args ?? '')
  t.ok(hc, 'HEALTHCHECK uses the exec form')
  t.equal(execForm(hc?.[2] ?? '[]')[0], 'node', 'the health check runs node itself (no curl in slim)')
  t.match(hc?.[1] ?? '', /--timeout=\d+s/, 'the health check has a timeout')

  for (const copy of only(build, 'COPY')) {
    const sources = copy.args.split(/\s+/).filter((a) => !a.startsWith('--')).slice(0, -1)
    for (const source of sources) t.notOk(dockerignore.includes(source.split('/')[0] ?? ''), `${source} is in the build context`)
  }
  for (const ignored of ['node_modules', 'dist', '.git', 'data', '*.pem']) t.ok(dockerignore.includes(ignored), `.dockerignore keeps ${ignored} out of the context`)

  const allCommands = dockerfile.flatMap((s) => only(s, 'RUN')).flatMap((r) => r.args.split(' && ').map((c) => c.trim()))
  for (const command of Object.keys(IMAGE_ONLY_COMMANDS)) t.ok(allCommands.includes(command), `image-only command still in the Dockerfile: ${command}`)
})

t.test('the image steps replayed outside Docker build a proxy that serves /up and passes its HEALTHCHECK', async (t) => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'tp-dockerfile-'))
  t.teardown(async () => await rm(tmp, { recursive: true, force: true }))
  /** A container path of `stage` inside the temp directory. */
  const inStage = (stage: Stage, p: string): string => path.join(tmp, stage.name, p)

  for (const stage of dockerfile) {
    let workdir = '/'
    const env: Record<string, string> = {}
    for (const ins of stage.instructions) {
      if (ins.keyword === 'WORKDIR') {
        workdir = path.posix.resolve(workdir, ins.args)
        await mkdir(inStage(stage, workdir), { recursive: true })
      } else if (ins.keyword === 'ENV') {
        Object.assign(env, envOf({ ...stage, instructions: [ins] }))
      } else if (ins.keyword === 'COPY') {
        const words = ins.args.split(/\s+/)
        const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length)
        const paths = words.filter((w) => !w.startsWith('--'))
        const dest = paths.pop() ?? ''
        const destPath = inStage(stage, path.posix.resolve(workdir, dest))
        const source = from === undefined ? undefined : dockerfile.find((s) => s.name === from)
        if (from !== undefined && source === undefined) throw new Error(`COPY --from=${from}: no such stage`)
        for (const p of paths) {
          const src = source === undefined ? path.join(ROOT, p) : inStage(source, p)
          // Docker copies a directory's contents, and a file into a destination ending in '/'.
          const into = dest.endsWith('/') || paths.length > 1 ? path.join(destPath, path.basename(p)) : destPath
          await cp(src, into, { recursive: true })
        }
      } else if (ins.keyword === 'RUN') {
        for (const command of ins.args.split(' && ').map((c) => c.trim())) {
          if (command in IMAGE_ONLY_COMMANDS) continue
          // --prefer-offline: the registry is reachable, but the local cache makes this fast.
          const replayed = command.startsWith('npm ci') ? `${command} --prefer-offline` : command
          const result = await run('sh', ['-c', replayed], { cwd: inStage(stage, workdir), env: { ...baseEnv(), ...env }, timeoutMs: 300_000 })
          t.equal(result.code, 0, `stage ${stage.name}, line ${ins.line}: ${replayed}`, { output: result.code === 0 ? undefined : result.output.slice(-4000) })
          if (result.code !== 0) return
        }
      }
    }
  }

  const runtime = dockerfile.at(-1) as Stage
  const appDir = inStage(runtime, '/app')
  const modules = await readdir(path.join(appDir, 'node_modules'))
  t.ok(modules.includes('fastify'), 'production dependencies are installed')
  for (const dev of ['typescript', 'tap', 'eslint']) t.notOk(modules.includes(dev), `no dev dependency ${dev} in the runtime stage`)
  await t.rejects(stat(path.join(appDir, 'src')), 'no sources in the runtime stage')

  const entrypoint = execForm(only(runtime, 'ENTRYPOINT')[0]?.args ?? '[]')
  const cmd = execForm(only(runtime, 'CMD')[0]?.args ?? '[]')
  const [node, main, ...args] = [...entrypoint.slice(2), ...cmd]
  t.equal(node, 'node')
  const hcMatch = /CMD\s+(\[.*\])$/s.exec(only(runtime, 'HEALTHCHECK')[0]?.args ?? '')
  const [hcFile, ...hcArgs] = execForm(hcMatch?.[1] ?? '[]')
  const trafficPort = await freePort()
  const opsPort = await freePort()
  const healthcheck = async (): Promise<Run> => await run(hcFile ?? 'node', hcArgs, { env: { PATH, TENANT_PROXY_TRAFFIC_PORT: String(trafficPort) }, timeoutMs: 10_000 })

  t.not((await healthcheck()).code, 0, 'the health check fails while nothing listens')

  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const child = spawn(process.execPath, [inStage(runtime, main ?? ''), ...args], {
    cwd: appDir,
    // The image's ENV and default listen addresses; only ports, registry, key and upstream set here.
    env: {
      PATH,
      ...envOf(runtime),
      REGISTRY_DATABASE_URL: registry.url,
      TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
      TENANT_PROXY_UPSTREAM_URLS: upstream.origin,
      TENANT_PROXY_TRAFFIC_PORT: String(trafficPort),
      TENANT_PROXY_OPS_PORT: String(opsPort)
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL')
    await exited
  })
  await new Promise<void>((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`no 'tenant-proxy listening' within 30 s: ${output}`)), 30_000)
    const onData = (c: Buffer): void => {
      output += c.toString()
      if (output.includes('"msg":"tenant-proxy listening"')) {
        clearTimeout(deadline)
        resolve()
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    void exited.then((code) => { clearTimeout(deadline); reject(new Error(`exited with ${String(code)} before listening: ${output}`)) })
  })
  t.match(output, /"traffic":"0\.0\.0\.0:\d+"/, 'the traffic listener bound 0.0.0.0 with the image defaults')

  const get = async (p: string, host: string): Promise<{ status: number, body: string, headers: Record<string, unknown> }> => {
    const res = await request(`http://127.0.0.1:${trafficPort}${p}`, { headers: { host }, headersTimeout: 10_000, bodyTimeout: 10_000 })
    return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
  }
  t.equal((await get('/up', 'anything')).status, 200, '/up answers 200')
  t.equal((await healthcheck()).code, 0, 'the HEALTHCHECK command exits 0 against the running proxy')
  const routed = await get('/orders', 'acme.example.com')
  t.equal(routed.status, 200, 'a tenant request reaches the upstream')
  t.match(upstream.seen.at(-1)?.headers['x-tenant-descriptor'], /^[\w-]+\.[\w-]+\.[\w-]+$/, 'with a signed descriptor')

  // docker stop sends SIGTERM (through tini): the health check must fail while the proxy drains.
  child.kill('SIGTERM')
  const deadline = Date.now() + 4_000
  while ((await get('/up', 'anything')).status !== 503) {
    if (Date.now() > deadline) throw new Error('/up did not turn 503 after SIGTERM')
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  t.equal((await healthcheck()).code, 1, 'the HEALTHCHECK command fails while draining')
  t.equal((await get('/up', 'anything')).status, 503, 'still draining when the health check ran (not a refused connection)')
  t.equal(await exited, 0, 'serve exits 0 after the drain')
})
