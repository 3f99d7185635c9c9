/**
 * `tenant-proxy registry prune`: prunes the registry change log once, for deployments whose
 * proxies run with the read-only role and so cannot (docs/operations.md, "Least privilege").
 */
import { tpError } from '../errors.js'
import { pruneWithPool } from '../registry/prune.js'
import { flag, str, type Command } from './command.js'

const UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3_600, d: 86_400 }
/** The longest retention accepted, as for registry.changeRetentionS. */
const MAX_RETENTION_S = 10 * 365 * 86_400

export const registryPrune: Command = {
  name: 'registry prune',
  summary: 'Delete registry change log rows older than the retention (one process at a time; proxies that lag further load a full snapshot).',
  usage: 'tenant-proxy registry prune [--retention <duration>] [--dry-run] [--json]',
  help: [
    '--retention takes a number with a unit, s, m, h or d (7d, 12h; a bare number is seconds);',
    'default registry.changeRetentionS. The rows of the newest version are always kept. The prune',
    'runs in one transaction under an advisory lock: when a proxy or another run is pruning, this',
    'one does nothing and says so (exit 0). --dry-run counts the rows that would go. Needs DELETE',
    'on the change log and UPDATE on registry_state: run it with the role that runs migrate.'
  ].join('\n'),
  options: { retention: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const given = str(args, 'retention')
    const retentionS = given === undefined ? ctx.config().registry.changeRetentionS : parseRetention(given)
    const dryRun = flag(args, 'dry-run')
    const registry = await ctx.registry()
    // 0 in the configuration means "keep the log"; an explicit --retention 0 is refused above.
    const result = retentionS === 0
      ? { outcome: 'disabled' as const, dryRun }
      : await pruneWithPool(registry.pool, registry.schema, retentionS, { dryRun })
    if (result.outcome === 'denied') throw tpError('TENANT_PROXY_ERR_REGISTRY_PRUNE_DENIED', [result.reason])
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ schema: registry.schema, retention_s: retentionS, ...result }) + '\n')
      return 0
    }
    const would = dryRun ? 'would delete' : 'deleted'
    ctx.io.out(result.outcome === 'pruned'
      ? `${would} ${result.deleted} change log row(s) up to version ${result.through} (older than ${retentionS} s)\n`
      : result.outcome === 'nothing'
        ? `nothing to prune: no change log row older than ${retentionS} s but the newest version's\n`
        : result.outcome === 'busy'
          ? 'another process is pruning the change log right now; nothing done\n'
          : 'registry.changeRetentionS is 0 (keep the change log); nothing done (--retention prunes anyway)\n')
    return 0
  }
}

/** "7d", "12h", "30m", "90s" or a bare number of seconds → seconds. */
export function parseRetention (text: string): number {
  const m = /^(\d{1,10})([smhd]?)$/.exec(text.trim())
  const seconds = m === null ? NaN : Number(m[1]) * (UNITS[m[2] === '' || m[2] === undefined ? 's' : m[2]] ?? NaN)
  if (!Number.isSafeInteger(seconds) || seconds < 1 || seconds > MAX_RETENTION_S) {
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`--retention must be a duration from 1s to 3650d such as 7d, 12h, 30m or 3600 (seconds), got ${JSON.stringify(text)}`])
  }
  return seconds
}
