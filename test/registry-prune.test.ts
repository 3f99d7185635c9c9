/**
 * Pruning the change log: one process at a time (a held prune lock makes another prune skip),
 * `registry prune` with --retention, --dry-run and --json, and a proxy's prune schedule, which
 * warns once when denied, retries after its own intervals and never throws.
 */
import pg from 'pg'
import t from 'tap'
import { createLogger } from '../src/log.js'
import { pruneLockKey, type PruneResult } from '../src/registry/prune.js'
import { ChangeLogPruner, type PruneCount } from '../src/registry/pruner.js'
import { runCli } from './helpers/cli.js'
import { testRegistry } from './helpers/proxy.js'

async function changeRows (pool: pg.Pool): Promise<number> {
  const r = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM tenant_proxy.changes')
  return r.rows[0]?.n ?? 0
}

t.test('registry prune: dry run, a held lock, then the prune; the newest version is kept', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'a', domains: ['a.example'] }])
  await registry.store.updateTenant('a', { state: 'suspended' })
  await registry.store.updateTenant('a', { state: 'active' })
  await registry.pool.query("UPDATE tenant_proxy.changes SET changed_at = now() - interval '2 days'")
  const env = { REGISTRY_DATABASE_URL: registry.url }
  const rows = await changeRows(registry.pool)

  const young = await runCli(['registry', 'prune', '--retention', '3d'], env)
  t.equal(young.code, 0, young.stderr)
  t.match(young.stdout, /nothing to prune/)

  const dry = await runCli(['registry', 'prune', '--retention', '1d', '--dry-run', '--json'], env)
  t.equal(dry.code, 0, dry.stderr)
  const planned = JSON.parse(dry.stdout) as { outcome: string, deleted: number, dryRun: boolean, retention_s: number }
  t.match(planned, { outcome: 'pruned', dryRun: true, retention_s: 86_400 })
  t.ok(planned.deleted > 0 && planned.deleted < rows, 'counts every row but the newest version\'s')
  t.equal(await changeRows(registry.pool), rows, 'a dry run deletes nothing')

  // Another process pruning: this one skips, changes nothing, exits 0.
  const holder = new pg.Client({ connectionString: registry.url })
  await holder.connect()
  t.teardown(async () => await holder.end())
  await holder.query('BEGIN')
  await holder.query('SELECT pg_advisory_xact_lock($1::bigint)', [pruneLockKey('tenant_proxy')])
  const busy = await runCli(['registry', 'prune', '--retention', '1d', '--json'], env)
  t.equal(busy.code, 0, busy.stderr)
  t.match(JSON.parse(busy.stdout), { outcome: 'busy' })
  const busyText = await runCli(['registry', 'prune', '--retention', '1d'], env)
  t.match(busyText.stdout, /another process is pruning/)
  t.equal(await changeRows(registry.pool), rows)
  await holder.query('COMMIT')

  const done = await runCli(['registry', 'prune', '--retention', '1d'], env)
  t.equal(done.code, 0, done.stderr)
  t.match(done.stdout, `deleted ${planned.deleted} change log row(s) up to version`)
  t.equal(await changeRows(registry.pool), rows - planned.deleted)
  const state = await registry.pool.query<{ version: string, pruned_through: string }>('SELECT version, pruned_through FROM tenant_proxy.registry_state')
  t.equal(Number(state.rows[0]?.pruned_through), Number(state.rows[0]?.version) - 1, 'pruned_through marks the hole')
})

t.test('registry prune: a bad --retention is a usage error', async (t) => {
  for (const bad of ['0', '7w', '-1d', '1.5h', '3651d']) {
    const r = await runCli(['registry', 'prune', '--retention', bad], { REGISTRY_DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x' })
    t.equal(r.code, 2, bad)
    t.match(r.stderr, /--retention[\s\S]*TENANT_PROXY_ERR_CLI_USAGE/, bad)
  }
})

t.test('a proxy\'s prune schedule: denied warns once, then retries a day later; errors retry sooner; never throws', async (t) => {
  const lines: string[] = []
  const logger = createLogger('debug', { write: (line: string) => { lines.push(line) } })
  let now = 0
  const outcomes: Array<PruneResult | Error> = []
  let calls = 0
  const counted: PruneCount[] = []
  const pruner = new ChangeLogPruner({
    retentionS: 60,
    everyMs: 1_000,
    deniedRetryMs: 10_000,
    errorRetryMs: 100,
    prune: async () => {
      calls++
      const next = outcomes.shift()
      if (next === undefined) throw new Error('no outcome queued')
      if (next instanceof Error) throw next
      return next
    },
    logger,
    count: (result) => counted.push(result),
    now: () => now
  })
  const denied: PruneResult = { outcome: 'denied', reason: 'role proxy lacks DELETE', dryRun: false }
  outcomes.push(denied, denied)
  await pruner.tick()
  for (now = 1; now < 10_000; now += 500) await pruner.tick()
  t.equal(calls, 1, 'not retried before the denied interval')
  now = 10_000
  await pruner.tick()
  t.equal(calls, 2, 'retried after it')
  const warnings = lines.filter((l) => /may not prune/.test(l))
  t.equal(warnings.length, 1, 'one warning')
  t.match(warnings[0], /"level":40/)

  outcomes.push(new Error('connection terminated'), { outcome: 'busy', dryRun: false }, { outcome: 'pruned', deleted: 3, through: 9, dryRun: false })
  now = 20_000
  await pruner.tick()
  now = 20_100
  await pruner.tick()
  t.equal(calls, 4, 'an error is retried after errorRetryMs')
  now = 20_600
  await pruner.tick()
  t.equal(calls, 4, 'busy waits the normal interval')
  now = 21_100
  await pruner.tick()
  t.equal(calls, 5)
  t.same(counted, ['denied', 'denied', 'error', 'busy', 'pruned'])
  t.ok(lines.some((l) => /may prune the registry change log again/.test(l)), 'a prune allowed again after a denial is said once')

  const off = new ChangeLogPruner({ retentionS: 0, prune: async () => { throw new Error('never called') }, logger })
  await off.tick()
  t.pass('retention 0 never prunes')
})
