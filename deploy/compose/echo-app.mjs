// The sample app of deploy/docker-compose.yml: tenant-proxy's demo echo app, which verifies the
// descriptor on every request as a real app would and answers with its claims. It reads the same
// TENANT_PROXY_* settings as the proxy (key file, deployment id, audience, header) through the
// proxy's own config loader, so the two cannot disagree, and listens on 127.0.0.1:$PORT: it
// shares the proxy container's network namespace, like an app behind the in-image topology.
const dist = process.env.APP_DIST ?? '/app/dist'
const { loadConfig } = await import(`${dist}/src/config/load.js`)
const { loadKeyring } = await import(`${dist}/src/descriptor/keyring.js`)
const { startEchoUpstream } = await import(`${dist}/src/demo/echo-upstream.js`)

const config = loadConfig({ env: process.env })
const echo = await startEchoUpstream({
  keyring: loadKeyring(config.descriptor.keys),
  issuer: config.deploymentId,
  audience: config.descriptor.audience,
  header: config.descriptor.header
}, Number(process.env.PORT ?? 3000))
console.log(`echo app listening on ${echo.origin}`)
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => { void echo.close().then(() => process.exit(0)) })
}
