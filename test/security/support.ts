/**
 * Shared set-up of the attack suite: a running proxy with tenants in front of a real upstream
 * that records raw headers, and a verifier (@tenant-proxy/verify) trusting that proxy's keys.
 */
import type { Test } from 'tap'
import { createVerifier, isDescriptorError, type DescriptorVerifier, type TenantDescriptor } from '@tenant-proxy/verify'
import { startTestProxy, testConfig, testRegistry, type SeedTenant } from '../helpers/proxy.js'
import { startUpstream, type SeenRequest, type TestUpstream } from '../helpers/upstream.js'

export const NAME = 'x-tenant-descriptor'

/** The tenants every attack file uses. */
export const TENANTS: SeedTenant[] = [
  { slug: 'acme', domains: ['acme.example.com'] },
  { slug: 'globex', domains: ['globex.example.com'] },
  // Stored in its canonical (punycode) form, as `tenants add bücher.example` writes it.
  { slug: 'buecher', domains: ['xn--bcher-kva.example'] }
]

/** A proxy in front of a recording upstream, and a verifier for what reaches the upstream. */
export interface Rig {
  port: number
  opsPort: number
  upstream: TestUpstream
  verifier: DescriptorVerifier
  jwks: { keys: unknown[] }
}

/** Starts the rig; `env` overrides the proxy's configuration. */
export async function startRig (t: Test, env: Record<string, string> = {}): Promise<Rig> {
  const registry = await testRegistry(t, TENANTS)
  const upstream = await startUpstream(t)
  const config = testConfig(registry.url, upstream.origin, env)
  const proxy = await startTestProxy(t, config)
  const jwks = proxy.keyring.jwks()
  const verifier = createVerifier({ keys: jwks }, { issuer: config.deploymentId, audience: config.descriptor.audience })
  return { port: proxy.traffic.port, opsPort: proxy.ops.port, upstream, verifier, jwks }
}

/** Every raw header (and trailer) a framework could read as the descriptor: any case, `_` for `-`. */
export function descriptorValues (seen: SeenRequest & { rawTrailers?: string[] }): string[] {
  const out: string[] = []
  for (const list of [seen.rawHeaders, seen.rawTrailers ?? []]) {
    for (let i = 0; i < list.length; i += 2) {
      if ((list[i] ?? '').toLowerCase().replaceAll('_', '-').trim() === NAME) out.push(list[i + 1] ?? '')
    }
  }
  return out
}

/** Verifies the one descriptor a request carried for the Host the upstream saw; the reason code on refusal. */
export async function verifySeen (rig: Rig, seen: SeenRequest): Promise<TenantDescriptor | string> {
  const values = descriptorValues(seen)
  if (values.length !== 1) return `expected exactly one descriptor, got ${values.length}`
  try {
    return await rig.verifier.verify(values[0], typeof seen.headers.host === 'string' ? seen.headers.host : '')
  } catch (err) {
    if (isDescriptorError(err)) return err.reason
    throw err
  }
}
