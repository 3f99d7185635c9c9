# frozen_string_literal: true

# Verifies tenant-proxy's X-Tenant-Descriptor on every request and sets up the per-tenant pools.
# Gemfile: gem "tenant_proxy-descriptor", path: "vendor/tenant_proxy-descriptor" (or from git).
require "tenant_proxy/descriptor/rack"
require Rails.root.join("lib/tenant_pools").to_s

Rails.application.configure do
  verifier = TenantProxy::Descriptor::Verifier.new(
    # The proxy's ops listener; never reachable through a tenant host.
    jwks_url: ENV.fetch("TENANT_PROXY_JWKS_URL", "http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json"),
    issuer: ENV.fetch("TENANT_PROXY_ISSUER"),       # the proxy's deploymentId
    audience: ENV.fetch("TENANT_PROXY_AUDIENCE"),   # this app's descriptor.audience
    leeway: 5
  )

  # Missing descriptor: 400; invalid: 401; health checks pass without one.
  config.middleware.use TenantProxy::Descriptor::Middleware,
                        verifier: verifier, skip_paths: ["/up"], logger: Rails.logger

  config.tenant_pools = TenantPools.new(
    record_class_name: "TenantRecord",
    base_config_name: "tenant",
    max_pools: Integer(ENV.fetch("TENANT_DB_MAX_POOLS", "20"))
  )
end
