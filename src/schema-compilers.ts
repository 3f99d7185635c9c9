/**
 * Fastify's JSON-schema compilers, loaded only if a route ever declares a schema. Fastify loads
 * Ajv and fast-json-stringify's compiler (about 100 modules, a sixth of the proxy's start-up) in
 * every `Fastify()` call whether or not a route uses a schema; neither listener of the proxy does,
 * so `serve` would pay for them on every start for nothing. Passing our own factories keeps
 * Fastify's behaviour for a schema route (the same compilers, from Fastify's own dependencies)
 * and moves the cost to the first one, which today never comes. (One difference would apply to
 * such a route: Fastify treats factories passed here as custom compilers and leaves a `headers`
 * schema's property names as written instead of lower-casing them.)
 */
import { createRequire } from 'node:module'
import type { FastifyServerOptions } from 'fastify'

type SchemaController = NonNullable<FastifyServerOptions['schemaController']>
type Factories = NonNullable<SchemaController['compilersFactory']>

/** Resolved from Fastify's own location: they are its dependencies, not ours. */
function fromFastify (id: string): unknown {
  const fastify = createRequire(import.meta.url).resolve('fastify')
  return createRequire(fastify)(id)
}

/** A factory that loads the real one (a module exporting `() => factory`) on its first call. */
function lazyFactory<F> (id: string): F {
  let factory: ((...args: unknown[]) => unknown) | undefined
  const lazy = (...args: unknown[]): unknown => {
    factory ??= (fromFastify(id) as () => (...args: unknown[]) => unknown)()
    return factory(...args)
  }
  return lazy as F
}

/** The `schemaController` option for every Fastify app of the proxy. */
export const lazySchemaCompilers: SchemaController = Object.freeze({
  compilersFactory: Object.freeze({
    buildValidator: lazyFactory<NonNullable<Factories['buildValidator']>>('@fastify/ajv-compiler'),
    buildSerializer: lazyFactory<NonNullable<Factories['buildSerializer']>>('@fastify/fast-json-stringify-compiler')
  })
})
