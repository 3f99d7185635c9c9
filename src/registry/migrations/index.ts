/**
 * The registry's schema migrations, in order. Each is SQL text for one schema name; never edit a
 * released migration, add a new one (the runner records applied versions in schema_migrations).
 */
import { initial } from './001-initial.js'
import { live } from './002-live.js'
import { servers } from './003-servers.js'
import { pause } from './004-pause.js'
import { announce } from './005-announce.js'

/** One versioned migration; `sql` gets the quoted schema identifier and the NOTIFY channel. */
export interface Migration {
  readonly version: number
  readonly name: string
  sql (schema: string, channel: string): string
}

export const MIGRATIONS: readonly Migration[] = [initial, live, servers, pause, announce]

/** The newest version this build knows. */
export const LATEST_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0
