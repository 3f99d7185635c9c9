# frozen_string_literal: true

# tenant-proxy: every request runs against the database of the tenant named by the descriptor
# the proxy signs (X-Tenant-Descriptor); without a valid one the request is refused and tenant
# models raise TenantProxy::NoTenant. Nothing below is needed at boot: settings are read on first
# use, so assets:precompile, db:migrate and the console run without them. Each can come from the
# environment instead (TENANT_DESCRIPTOR_*; never TENANT_PROXY_*, which belongs to the proxy).
Rails.application.configure do
  # The proxy's deploymentId and descriptor.audience (TENANT_DESCRIPTOR_ISSUER, _AUDIENCE):
  # config.tenant_proxy.issuer = "shop-production"
  # config.tenant_proxy.audience = "shop"

  # Where the proxy's public keys are (TENANT_DESCRIPTOR_JWKS_URL, or _KEYS_FILE for a file):
  # config.tenant_proxy.jwks_url = "http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json"

  # Console, rake tasks, jobs and long Action Cable connections get a tenant's database from the
  # proxy's ops descriptor API (TENANT_DESCRIPTOR_API_URL, _API_TOKEN):
  # config.tenant_proxy.api_url = "http://tenant-proxy:9394"

  # Tenant databases use this app's database settings (adapter, username, password, pool) with
  # the server, port and name the descriptor gives; change what differs:
  # config.tenant_proxy.database = { username: ENV["TENANT_DB_USERNAME"], password: ENV["TENANT_DB_PASSWORD"] }

  # config.tenant_proxy.max_pools = 20                 # tenant connection pools per process (LRU beyond)
  # config.tenant_proxy.skip_paths = ["/up"]           # answered without a descriptor (health checks)
  # config.tenant_proxy.migrations_paths = ["db/tenant_migrate"]
end
