/**
 * The Fastify plugin with `request.tenantDescriptor` typed: import from here in a Fastify app.
 * The augmentation is type-only (Fastify is not a dependency of this package), which is why it
 * lives apart from the main entry: an Express app never sees a reference to 'fastify'.
 */
import type {} from 'fastify'
import type { TenantDescriptor } from './index.js'

export { fastifyTenantDescriptor } from './index.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The verified descriptor (null on skipped paths). */
    tenantDescriptor: TenantDescriptor | null
  }
}
