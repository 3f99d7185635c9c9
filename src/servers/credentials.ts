/**
 * A database server's admin credentials, resolved by the CLI process that needs them: the
 * registry holds only a reference (an environment variable's name or a file's path, migration
 * 003), so a registry dump, `servers list` or a proxy never carries a password. Every message
 * built here names the reference, never the URL.
 */
import { readFile, stat } from 'node:fs/promises'
import { tpError } from '../errors.js'
import type { ServerRecord } from '../registry/store.js'

/** Where a server's admin URL comes from, as `servers list` prints it. */
export function credentialsLabel (server: Pick<ServerRecord, 'admin_url_env' | 'admin_url_file'>): string {
  if (server.admin_url_env !== null) return `$${server.admin_url_env}`
  if (server.admin_url_file !== null) return `file ${server.admin_url_file}`
  return '(none)'
}

/** A resolved admin URL and a warning about how it is kept (a file others can read), if any. */
export interface AdminUrl {
  readonly url: string
  readonly warning: string | null
}

/**
 * Reads the admin URL a server refers to from `env` (the CLI's environment) or the file; throws
 * TENANT_PROXY_ERR_SERVER_CREDENTIALS saying what is missing. A file holds the URL on its first
 * line that is neither empty nor a `#` comment.
 */
export async function resolveAdminUrl (server: Pick<ServerRecord, 'name' | 'admin_url_env' | 'admin_url_file'>, env: Readonly<Record<string, string | undefined>>): Promise<AdminUrl> {
  const fail = (why: string, cause?: unknown): never => { throw tpError('TENANT_PROXY_ERR_SERVER_CREDENTIALS', [server.name, why], cause) }
  let text: string
  let warning: string | null = null
  if (server.admin_url_env !== null) {
    const value = env[server.admin_url_env]
    if (value === undefined || value.trim() === '') fail(`environment variable ${server.admin_url_env} is not set in this process`)
    text = value ?? ''
  } else if (server.admin_url_file !== null) {
    const path = server.admin_url_file
    try {
      text = await readFile(path, 'utf8')
      const mode = (await stat(path)).mode
      if ((mode & 0o077) !== 0) warning = `${path} can be read by other users (mode ${(mode & 0o777).toString(8)}); chmod 600 it`
    } catch (err) {
      return fail(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, err)
    }
    text = text.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#')) ?? ''
    if (text === '') fail(`${path} holds no URL`)
  } else {
    return fail(`the server has no admin credentials reference; give it one with: tenant-proxy servers update ${server.name} --admin-url-env VAR (or --admin-url-file PATH)`)
  }
  const url = text.trim()
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch (err) {
    // The text itself is never echoed: it may be a password pasted in the wrong place.
    return fail(`${credentialsLabel(server)} does not hold a URL`, err)
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') fail(`${credentialsLabel(server)} does not hold a postgres:// URL`)
  return { url, warning }
}

/** `url` naming `database` instead of its own. */
export function urlForDatabase (url: string, database: string): string {
  const u = new URL(url)
  u.pathname = `/${encodeURIComponent(database)}`
  return u.toString()
}
