/**
 * The traffic listener's health path: answered for any Host, before tenant resolution, never
 * touching a tenant database, so a deploy never depends on one tenant's state.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ProxyState } from '../state.js'
import type { UpstreamHealth } from './upstream-health.js'

/** The route handler: 200 once the registry is loaded and the process is not draining. */
export function healthHandler (state: ProxyState, upstreamHealth: UpstreamHealth | null): (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply> {
  return async (request, reply) => {
    let status = state.draining ? 'draining' : state.index === null ? 'starting' : 'ok'
    // In-image topology: the load balancer checks the proxy in place of the app, so the app's own
    // health (cached briefly, so checks do not multiply) is part of the answer.
    if (status === 'ok' && upstreamHealth !== null && !await upstreamHealth.healthy()) status = 'upstream_unhealthy'
    if (state.draining) reply.header('connection', 'close')
    return reply.code(status === 'ok' ? 200 : 503).header('cache-control', 'no-store').type('application/json; charset=utf-8')
      .send(`{"status":"${status}"}\n`)
  }
}
