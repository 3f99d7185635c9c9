/**
 * `tenants exec` (issue 13, item 3) with real processes: thirty tenants, one failing, a bounded
 * number at a time, each with its own environment and log file; then --resume runs only the one
 * that failed. SIGINT stops starting tenants and stops the running ones (the signal forwarded,
 * SIGKILL after --kill-after for one that ignores it), and --resume finishes the run.
 */
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ProgressBar, Steps } from '../src/cli/progress.js'
import { CLI, runCli } from './helpers/cli.js'
import { testRegistry } from './helpers/proxy.js'
import { until } from './helpers/wait.js'

const PASSWORD = 's3cr:et@/x'

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tp-exec-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

interface RunJson { id: string, invocations: number, tenants: Record<string, { status: string, exit_code: number | null, attempts: number, reason: string | null }> }

async function runState (dir: string): Promise<RunJson> {
  const [id] = await readdir(dir)
  return JSON.parse(await readFile(path.join(dir, id ?? '', 'run.json'), 'utf8')) as RunJson
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

t.test('tenants exec over thirty tenants with one failing, then --resume runs only that one', async (t) => {
  const slugs = Array.from({ length: 30 }, (_, i) => `t${String(i + 1).padStart(2, '0')}`)
  const registry = await testRegistry(t, slugs.map((slug) => ({ slug, domains: [`${slug}.example`], databaseHost: slug === 't05' ? 'db-2.internal' : null, databasePort: slug === 't05' ? 6432 : null })))
  const runs = await tempDir(t)
  const marks = await tempDir(t)
  // Each command records its environment, counts how many run at once (an upper bound: a count
  // is taken while this one is running), and t17 fails until the marks directory says it is fixed.
  const script = [
    'printf "%s|%s|%s|%s|%s\\n" "$TENANT_SLUG" "$TENANT_DATABASE_NAME" "$TENANT_DATABASE_HOST" "$TENANT_DATABASE_PORT" "$DATABASE_URL"',
    'mkdir "$MARKS/running.$TENANT_SLUG"',
    'ls -d "$MARKS"/running.* | wc -l >> "$MARKS/concurrency"',
    'sleep 0.02',
    'rmdir "$MARKS/running.$TENANT_SLUG"',
    'if [ "$TENANT_SLUG" = t17 ] && [ ! -e "$MARKS/fixed" ]; then echo "migration failed: relation users does not exist" >&2; exit 3; fi',
    'echo migrated'
  ].join('\n')
  const env = { REGISTRY_DATABASE_URL: registry.url, MARKS: marks, TENANT_DATABASE_USER: 'app', TENANT_DATABASE_PASSWORD: PASSWORD }

  const r = await runCli(['tenants', 'exec', '--parallel', '4', '--run-dir', runs, '--', 'sh', '-c', script], env)
  t.equal(r.code, 1, 'non-zero when a tenant failed')
  const state = await runState(runs)
  const dir = path.join(runs, state.id)
  t.match(r.stderr, `1 of 30 tenant(s) failed (run ${state.id}; logs in ${dir}); rerun the others with: tenant-proxy tenants exec --resume ${state.id} (TENANT_PROXY_ERR_EXEC_FAILED)`)
  t.match(r.stderr, `t17: FAILED (exit 3) in`)
  t.equal(r.stderr.split('\n').filter((l) => /^\[\d+\/30\] t\d\d: /.test(l)).length, 30, 'one plain progress line per tenant (no terminal)')
  const rows = r.stdout.split('\n').filter((l) => /^t\d\d /.test(l))
  t.equal(rows.length, 30, 'the summary table lists every tenant')
  t.match(rows.find((l) => l.startsWith('t17')), /^t17\s+failed\s+3\s/)
  t.match(r.stdout, `run ${state.id}: 29 succeeded, 1 failed of 30`)
  t.equal(Object.values(state.tenants).filter((x) => x.status === 'succeeded').length, 29)
  t.match(state.tenants.t17, { status: 'failed', exit_code: 3, attempts: 1 })

  const concurrency = (await readFile(path.join(marks, 'concurrency'), 'utf8')).trim().split('\n').map(Number)
  t.equal(concurrency.length, 30)
  t.ok(Math.max(...concurrency) <= 4, `never more than --parallel 4 at once (saw at most ${Math.max(...concurrency)})`)

  const log17 = await readFile(path.join(dir, 't17.log'), 'utf8')
  t.match(log17, 'migration failed: relation users does not exist', 'stderr in the tenant\'s own log')
  t.match(log17, '# failed, exit code 3')
  const log05 = await readFile(path.join(dir, 't05.log'), 'utf8')
  t.match(log05, `t05|t05|db-2.internal|6432|postgres://app:${encodeURIComponent(PASSWORD)}@db-2.internal:6432/t05\n`, 'its own database in the environment, DATABASE_URL from the template')
  t.match(await readFile(path.join(dir, 't01.log'), 'utf8'), 't01|t01|localhost|5432|postgres://app:')
  for (const text of [r.stdout, r.stderr, await readFile(path.join(dir, 'run.json'), 'utf8')]) t.notMatch(text, PASSWORD, 'the password is never printed or stored')

  // Fixed: --resume runs t17 alone, with the run's own command.
  await writeFile(path.join(marks, 'fixed'), '')
  const before01 = await readFile(path.join(dir, 't01.log'), 'utf8')
  const resumed = await runCli(['tenants', 'exec', '--resume', state.id, '--run-dir', runs], env)
  t.equal(resumed.code, 0, resumed.stderr)
  t.match(resumed.stderr, `resuming run ${state.id}`)
  t.match(resumed.stderr, 'for 1 tenant(s), 1 at a time (29 already succeeded)')
  t.match(resumed.stdout, `run ${state.id}: 30 succeeded, 0 failed of 30`)
  const after = await runState(runs)
  t.match(after.tenants.t17, { status: 'succeeded', attempts: 2 })
  t.equal(after.invocations, 2)
  t.ok(Object.entries(after.tenants).every(([slug, x]) => slug === 't17' || x.attempts === 1), 'no other tenant ran again')
  t.equal(await readFile(path.join(dir, 't01.log'), 'utf8'), before01)
  const log17b = await readFile(path.join(dir, 't17.log'), 'utf8')
  t.match(log17b, /attempt 1,[\s\S]*# failed[\s\S]*attempt 2,[\s\S]*migrated\n# succeeded/, 'the retry is a new section of the same log')

  const other = await runCli(['tenants', 'exec', '--resume', state.id, '--run-dir', runs, '--', 'true'], env)
  t.equal(other.code, 2)
  t.match(other.stderr, 'TENANT_PROXY_ERR_EXEC_RUN')
  const unknown = await runCli(['tenants', 'exec', '--resume', '../etc', '--run-dir', runs], env)
  t.equal(unknown.code, 2)
  t.match(unknown.stderr, 'not a run id')
})

t.test('tenants exec: SIGINT stops starting tenants, stops the running ones, and --resume finishes', async (t) => {
  const registry = await testRegistry(t, ['a', 'b', 'c'].map((slug) => ({ slug, domains: [`${slug}.example`] })))
  const runs = await tempDir(t)
  const marks = await tempDir(t)
  // `b` ignores SIGINT (so only --kill-after's SIGKILL ends it); each records its pid; once `fast`
  // exists they all succeed at once.
  const script = 'if [ -e "$MARKS/fast" ]; then exit 0; fi; if [ "$TENANT_SLUG" = b ]; then trap "" INT; fi; echo $$ > "$MARKS/$TENANT_SLUG.pid"; exec sleep 30'
  const env = { PATH: process.env.PATH ?? '', REGISTRY_DATABASE_URL: registry.url, MARKS: marks }
  const child = spawn(process.execPath, [CLI, 'tenants', 'exec', '--parallel', '2', '--kill-after', '1', '--run-dir', runs, '--', 'sh', '-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  let stdout = ''
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const pids = await until(async () => {
    const files = await readdir(marks)
    if (!files.includes('a.pid') || !files.includes('b.pid')) return undefined
    return await Promise.all(['a', 'b'].map(async (s) => Number((await readFile(path.join(marks, `${s}.pid`), 'utf8')).trim())))
  }, 'a and b to start')
  // The run is locked while it runs: a --resume of it now is refused.
  const [runId = ''] = await readdir(runs)
  const concurrent = await runCli(['tenants', 'exec', '--resume', runId, '--run-dir', runs], { REGISTRY_DATABASE_URL: registry.url, MARKS: marks })
  t.equal(concurrent.code, 2)
  t.match(concurrent.stderr, `it is running in process ${child.pid ?? 0}`)
  child.kill('SIGINT')
  t.equal(await exited, 130, 'exit code 130 after an interruption')
  t.match(stderr, 'SIGINT: starting no more tenants; 2 running get SIGINT')
  t.match(stderr, 'interrupted by SIGINT: 3 tenant(s) not finished')
  for (const pid of pids) t.notOk(alive(pid), `process ${pid} is gone`)
  const state = await runState(runs)
  t.match(state.tenants.a, { status: 'interrupted', reason: 'stopped by SIGINT' })
  t.match(state.tenants.b, { status: 'interrupted' })
  t.match(state.tenants.c, { status: 'pending', attempts: 0 }, 'c never started')
  t.match(stdout, /^b\s+interrupted\s+SIGKILL\s/m, 'b ignored SIGINT and was killed after --kill-after')

  await writeFile(path.join(marks, 'fast'), '')
  const resumed = await runCli(['tenants', 'exec', '--resume', state.id, '--run-dir', runs], { REGISTRY_DATABASE_URL: registry.url, MARKS: marks })
  t.equal(resumed.code, 0, resumed.stderr)
  t.match(resumed.stdout, `run ${state.id}: 3 succeeded, 0 failed of 3`)
})

t.test('tenants exec --dry-run lists tenants with the password hidden and runs nothing', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'], state: 'suspended' }, { slug: 'beta', domains: ['beta.example'] }])
  const runs = await tempDir(t)
  const env = { REGISTRY_DATABASE_URL: registry.url, TENANT_DATABASE_USER: 'app', TENANT_DATABASE_PASSWORD: PASSWORD }
  const r = await runCli(['tenants', 'exec', '--dry-run', '--state', 'active', '--run-dir', runs, '--', 'bin/rails', 'db:migrate'], env)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /beta\s+active\s+postgres:\/\/app:\*\*\*@localhost:5432\/beta/)
  t.notMatch(r.stdout, 'acme', '--state filters')
  t.notMatch(r.stdout + r.stderr, PASSWORD)
  t.same(await readdir(runs), [], 'no run directory')
  const missing = await runCli(['tenants', 'exec', '--dry-run', '--', 'true'], { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_TENANT_EXEC_DATABASE_URL_TEMPLATE: 'postgres://{user}:{password}@{host}/{database}' })
  t.equal(missing.code, 2)
  t.match(missing.stderr, 'the DATABASE_URL template uses {user} but TENANT_DATABASE_USER is not set')
  const only = await runCli(['tenants', 'exec', '--only', 'nope', '--', 'true'], env)
  t.equal(only.code, 1)
  t.match(only.stderr, 'no tenant nope')
  // --timeout stops a tenant's command that runs too long: it fails with the reason.
  const slow = await runCli(['tenants', 'exec', '--only', 'beta', '--timeout', '0.3', '--run-dir', runs, '--json', '--', 'sleep', '30'], env)
  t.equal(slow.code, 1)
  t.match(JSON.parse(slow.stdout), { failed: 1, results: [{ slug: 'beta', status: 'failed', signal: 'SIGTERM', reason: 'timed out after 300 ms' }] })
})

t.test('tenants exec on a terminal draws a progress bar in place', async (t) => {
  const registry = await testRegistry(t, ['a', 'b', 'c'].map((slug) => ({ slug, domains: [`${slug}.example`] })))
  const runs = await tempDir(t)
  // script(1) gives the CLI a pseudo-terminal, as an operator's shell would.
  const command = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} tenants exec --parallel 2 --run-dir ${JSON.stringify(runs)} -- true`
  const out = await new Promise<string>((resolve, reject) => {
    execFile('script', ['-qec', command, '/dev/null'], { env: { PATH: process.env.PATH ?? '', REGISTRY_DATABASE_URL: registry.url }, timeout: 30_000 }, (err, stdout) => {
      if (err !== null) reject(new Error(`script failed: ${err.message}`, { cause: err }))
      else resolve(stdout)
    })
  })
  // eslint-disable-next-line no-control-regex -- the terminal's erase-line sequence is what is checked
  t.match(out, /\r\x1b\[2K\[#+\.*\] \d\/3 {2}ok \d/, 'the bar is redrawn in place')
  t.match(out, /\[#{24}\] 3\/3 {2}ok 3 {2}failed 0/, 'and ends full')
  t.notMatch(out, /\[\d\/3\] a: ok/, 'no plain per-tenant lines on a terminal')
})

t.test('progress: bar text and steps, on a terminal and not', async (t) => {
  const lines: string[] = []
  const io = { out: () => {}, err: (s: string) => { lines.push(s) }, errIsTerminal: true }
  const bar = new ProgressBar(io, 10, { width: 60 })
  t.equal(bar.render({ done: 4, failed: 1, running: ['acme', 'globex'] }), '[############............] 5/10  ok 4  failed 1  running 2')
  t.equal(new ProgressBar(io, 10, { width: 100 }).render({ done: 4, failed: 1, running: ['acme', 'globex'] }), '[############............] 5/10  ok 4  failed 1  running 2  acme globex')
  const steps = new Steps(io)
  await steps.run('first', async () => {})
  await t.rejects(steps.run('second', async () => { throw new Error('boom') }), /second: boom/)
  // eslint-disable-next-line no-control-regex -- the terminal's erase-line sequence is what is checked
  t.match(lines.join(''), /… first\r\x1b\[2K {2}✓ first \(\d+ ms\)\n {2}… second\r\x1b\[2K {2}✗ second\n/)
  const plain: string[] = []
  const s2 = new Steps({ out: () => {}, err: (s: string) => { plain.push(s) } })
  await s2.run('one', async () => {})
  t.match(plain.join(''), /^ {2}→ one\n {2}✓ one \(\d+ ms\)\n$/)
})
