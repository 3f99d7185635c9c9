/**
 * `tenant-proxy migrate`: creates or upgrades the registry schema (safe to run concurrently).
 */
import { migrate } from '../registry/migrate.js'
import { flag, type Command } from './command.js'

export const migrateCommand: Command = {
  name: 'migrate',
  summary: 'Create or upgrade the registry schema; safe to run from several processes at once.',
  usage: 'tenant-proxy migrate [--json]',
  options: { json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const registry = await ctx.registry({ migrated: false })
    const result = await migrate(registry.pool, registry.schema)
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify({ schema: registry.schema, ...result }) + '\n')
    } else if (result.applied.length === 0) {
      ctx.io.out(`registry schema ${registry.schema} is up to date (version ${result.to})\n`)
    } else {
      ctx.io.out(`registry schema ${registry.schema} migrated from version ${result.from} to ${result.to}: ${result.applied.map((m) => `${m.version}-${m.name}`).join(', ')}\n`)
    }
    return 0
  }
}
