/**
 * `tenant-proxy registry export|import`: the whole registry as JSON lines, for backups, moving
 * between environments and bulk onboarding (the format is in src/registry/transfer.ts).
 */
import { readFile, writeFile } from 'node:fs/promises'
import { tpError } from '../errors.js'
import { exportLine, parseImport } from '../registry/transfer.js'
import { flag, str, type Command } from './command.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitTimeoutMs } from './wait.js'

export const registryExport: Command = {
  name: 'registry export',
  summary: 'Write every tenant with its domains as JSON lines (stdout or --output).',
  usage: 'tenant-proxy registry export [--output FILE]',
  options: { output: { type: 'string', short: 'o' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const registry = await ctx.registry()
    const tenants = await registry.store.listTenants()
    const text = tenants.map(exportLine).join('')
    const output = str(args, 'output')
    if (output === undefined) {
      ctx.io.out(text)
    } else {
      await writeFile(output, text, { mode: 0o600 })
      ctx.io.err(`exported ${tenants.length} tenants to ${output}\n`)
    }
    return 0
  }
}

export const registryImport: Command = {
  name: 'registry import',
  summary: 'Create (or with --replace, update) tenants from JSON lines, in one transaction.',
  usage: `tenant-proxy registry import FILE|- [--replace] [--dry-run] ${WAIT_USAGE}`,
  help: [
    'Every line is validated first, against the format and against the registry (an existing slug',
    'without --replace, a domain or database of another tenant); every problem is listed with its',
    'line number, nothing is written and the exit code is 2. With --replace a listed tenant is',
    'updated and its domains replaced by the listed ones. epoch, created_at and',
    'updated_at in the input are ignored (the registry assigns them). --dry-run checks everything',
    'against the registry and rolls back (and --wait has nothing to wait for).',
    '',
    WAIT_HELP
  ].join('\n'),
  options: { replace: { type: 'boolean' }, 'dry-run': { type: 'boolean' }, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const source = args.positionals[0] ?? '-'
    const wait = waitTimeoutMs(args)
    let text: string
    try {
      text = source === '-' ? await readStdin() : await readFile(source, 'utf8')
    } catch (err) {
      throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`cannot read ${source}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`], err)
    }
    // Problems in the input and conflicts with the registry are reported together, by line.
    const { entries, problems } = parseImport(text)
    const registry = await ctx.registry()
    const dryRun = flag(args, 'dry-run')
    const { result, version } = await registry.store.importTenants(entries, { replace: flag(args, 'replace'), dryRun, problems })
    ctx.io.out(`${dryRun ? 'dry run, nothing written: would have ' : ''}created ${result.created}, updated ${result.updated} tenants\n`)
    if (!dryRun) settleWait(ctx, await waitAfterWrite(ctx, wait, version))
    return 0
  }
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}
