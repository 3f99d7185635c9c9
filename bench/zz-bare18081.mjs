import httpProxy from '@fastify/http-proxy'
import Fastify from 'fastify'
const app = Fastify({ logger: false, keepAliveTimeout: 72_000 })
await app.register(httpProxy, { upstream: process.argv[2], undici: { connections: 128 } })
await app.listen({ host: '127.0.0.1', port: 18081 })
process.on('SIGTERM', () => { void app.close().then(() => process.exit(0)) })
