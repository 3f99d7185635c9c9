/**
 * The command table of the CLI: each command's name and where its implementation lives. Loading
 * is deferred to the one command that runs, so `serve` starts without the CLI's tables, the
 * transfer format, the key tools and the descriptor verifier (measured in docs/design.md, "Start-up
 * time"). A command module is imported only when its command runs or its help is printed.
 *
 * Adding a command: export its `Command` from its module as before and add one line here; a test
 * (test/cli-registry.test.ts) checks that every name here is the name its module declares.
 */
import type { Command } from './command.js'

/** A command as the dispatcher knows it before loading it. */
export interface CommandEntry {
  /** Must equal the loaded command's `name` (a test checks). */
  readonly name: string
  load (): Promise<Command>
}

export const COMMANDS: readonly CommandEntry[] = [
  { name: 'serve', load: async () => (await import('./serve.js')).serveCommand },
  { name: 'demo', load: async () => (await import('./demo.js')).demoCommand },
  { name: 'migrate', load: async () => (await import('./migrate.js')).migrateCommand },
  { name: 'tenants add', load: async () => (await import('./tenants.js')).tenantsAdd },
  { name: 'tenants list', load: async () => (await import('./tenants.js')).tenantsList },
  { name: 'tenants show', load: async () => (await import('./tenants.js')).tenantsShow },
  { name: 'tenants update', load: async () => (await import('./tenants.js')).tenantsUpdate },
  { name: 'tenants state', load: async () => (await import('./tenants.js')).tenantsState },
  { name: 'tenants remove', load: async () => (await import('./tenants.js')).tenantsRemove },
  { name: 'tenants create', load: async () => (await import('./provision.js')).tenantsCreate },
  { name: 'tenants drop', load: async () => (await import('./provision.js')).tenantsDrop },
  { name: 'tenants pause', load: async () => (await import('./pause.js')).tenantsPause },
  { name: 'tenants resume', load: async () => (await import('./pause.js')).tenantsResume },
  { name: 'tenants move', load: async () => (await import('./move.js')).tenantsMove },
  { name: 'tenants exec', load: async () => (await import('./exec.js')).tenantsExec },
  { name: 'domains add', load: async () => (await import('./tenants.js')).domainsAdd },
  { name: 'domains remove', load: async () => (await import('./tenants.js')).domainsRemove },
  { name: 'servers add', load: async () => (await import('./servers.js')).serversAdd },
  { name: 'servers list', load: async () => (await import('./servers.js')).serversList },
  { name: 'servers update', load: async () => (await import('./servers.js')).serversUpdate },
  { name: 'servers remove', load: async () => (await import('./servers.js')).serversRemove },
  { name: 'registry status', load: async () => (await import('./registry.js')).registryStatus },
  { name: 'registry export', load: async () => (await import('./transfer.js')).registryExport },
  { name: 'registry import', load: async () => (await import('./transfer.js')).registryImport },
  { name: 'registry prune', load: async () => (await import('./prune.js')).registryPrune },
  { name: 'registry adopt', load: async () => (await import('./adopt.js')).registryAdopt },
  { name: 'doctor', load: async () => (await import('./doctor.js')).doctorCommand },
  { name: 'keys generate', load: async () => (await import('./keys.js')).keysGenerate },
  { name: 'keys rotate', load: async () => (await import('./keys.js')).keysRotate },
  { name: 'descriptor decode', load: async () => (await import('./descriptor.js')).descriptorDecode }
]
