/**
 * `doctor`'s domain checks, pure: registry domains that name one site in more than one form, or
 * that routing can never reach as registered. The proxy matches a request's canonical host
 * exactly (src/routing/resolve.ts: pass-through hosts, then the exact domain, then `www.` of a
 * domain, then a wildcard slug), so every one of these is a host some client reaches a tenant
 * (or no tenant) by that the operator probably did not mean.
 */
import { domainToASCII, domainToUnicode } from 'node:url'
import { canonicalHost } from '../routing/host.js'
import type { ResolveOptions } from '../routing/resolve.js'

/** One finding: a failure (a domain that never routes as registered) or a warning. */
export interface DomainFinding { readonly status: 'fail' | 'warn', readonly domain: string, readonly detail: string }

/** Checks every (hostname, slug) pair of the registry against each other and the routing options. */
export function domainFindings (domains: ReadonlyArray<{ hostname: string, slug: string }>, routing: ResolveOptions): DomainFinding[] {
  const found: DomainFinding[] = []
  const owner = new Map(domains.map((d) => [d.hostname, d.slug]))
  const slugs = new Set(domains.map((d) => d.slug))
  const passthrough = new Set(routing.passthroughHosts)
  for (const { hostname, slug } of domains) {
    // Written by SQL outside the CLI: a form the proxy never produces from a request is never matched.
    const canonical = canonicalHost(hostname)
    if (!canonical.ok || canonical.host !== hostname) {
      found.push({ status: 'fail', domain: hostname, detail: `tenant ${slug}: not in canonical form (${canonical.ok ? `requests arrive as ${canonical.host}` : canonical.reason}); it never matches a request` })
      continue
    }
    // An A-label that does not round-trip is a second spelling of some other name.
    if (hostname.includes('xn--')) {
      const unicode = domainToUnicode(hostname)
      const again = domainToASCII(unicode)
      if (again !== hostname) found.push({ status: 'fail', domain: hostname, detail: `tenant ${slug}: punycode that is not the canonical form of ${unicode} (that is ${again === '' ? 'invalid' : again}); browsers send the other form` })
    }
    if (passthrough.has(hostname)) found.push({ status: 'warn', domain: hostname, detail: `tenant ${slug}: also in routing.passthroughHosts, which wins: requests never reach the tenant` })
    if (hostname.startsWith('www.')) {
      const bare = hostname.slice(4)
      const other = owner.get(bare)
      if (other !== undefined && other !== slug) found.push({ status: 'warn', domain: hostname, detail: `tenant ${slug}, while ${bare} is tenant ${other}: the two forms of one site go to different tenants` })
    }
    for (const base of routing.wildcardDomains) {
      const suffix = `.${base}`
      if (!hostname.endsWith(suffix)) continue
      const label = hostname.slice(0, -suffix.length)
      if (label.includes('.')) continue
      if (slugs.has(label) && label !== slug) found.push({ status: 'warn', domain: hostname, detail: `tenant ${slug}, while the wildcard rule for ${base} names tenant ${label}: the registered domain wins, tenant ${label} is not reachable there` })
    }
  }
  return found
}
