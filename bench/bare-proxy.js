// The peer: bare Fastify + @fastify/http-proxy (undici) with the same upstream options
// tenant-proxy uses, and no tenant logic. Usage: node bench/bare-proxy.js <upstream-origin>
import httpProxy from '@fastify/http-proxy'
import Fastify from 'fastify'

const app = Fastify({ logger: false, keepAliveTimeout: 72_000 })
await app.register(httpProxy, { upstream: process.argv[2], undici: { connections: 128 } })
await app.listen({ host: '127.0.0.1', port: 0 })
process.stdout.write(JSON.stringify({ port: app.server.address().port }) + '\n')
process.on('SIGTERM', () => { void app.close().then(() => process.exit(0)) })
