/**
 * The DATABASE_URL each `tenants exec` command gets, from tenantExec.databaseUrlTemplate. The
 * user and password come from variables of the CLI's environment (tenantExec.userEnv/passwordEnv),
 * never from the registry, and the URL is only ever put in a child's environment, never printed.
 */
import { tpError } from '../errors.js'

/** What a tenant contributes to its URL. */
export interface UrlTenant { readonly slug: string, readonly database: string, readonly host: string, readonly port: number }

/** The credentials part, from the CLI's environment (null: the variable is unset or empty). */
export interface UrlCredentials { readonly user: string | null, readonly password: string | null, readonly userEnv: string, readonly passwordEnv: string }

/** Fails before any command runs when the template needs a variable that is not set. */
export function checkTemplateCredentials (template: string, creds: UrlCredentials): void {
  if (template.includes('{user}') && creds.user === null) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`the DATABASE_URL template uses {user} but ${creds.userEnv} is not set`])
  if (template.includes('{password}') && creds.password === null) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`the DATABASE_URL template uses {password} but ${creds.passwordEnv} is not set`])
}

/** Fills the template for one tenant; user, password and database are percent-encoded. */
export function databaseUrl (template: string, t: UrlTenant, creds: UrlCredentials): string {
  const user = creds.user === null ? '' : encodeURIComponent(creds.user)
  const password = creds.password === null ? '' : encodeURIComponent(creds.password)
  const userinfo = creds.user === null ? '' : creds.password === null ? `${user}@` : `${user}:${password}@`
  // An IPv6 address is bracketed in a URL's authority (RFC 3986 section 3.2.2).
  const host = t.host.includes(':') ? `[${t.host}]` : t.host
  const values: Record<string, string> = { database: encodeURIComponent(t.database), host, port: String(t.port), slug: t.slug, user, password, userinfo }
  return template.replace(/\{([a-z]+)\}/g, (whole, name: string) => values[name] ?? whole)
}

/** The URL as it may be shown (dry run): the password replaced. */
export function shownDatabaseUrl (template: string, t: UrlTenant, creds: UrlCredentials): string {
  return databaseUrl(template, t, { ...creds, password: creds.password === null ? null : '***' })
}
