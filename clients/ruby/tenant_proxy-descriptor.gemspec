# frozen_string_literal: true

require_relative "lib/tenant_proxy/descriptor/version"

Gem::Specification.new do |spec|
  spec.name = "tenant_proxy-descriptor"
  spec.version = TenantProxy::Descriptor::VERSION
  spec.summary = "Verify tenant-proxy's signed tenant database descriptor (X-Tenant-Descriptor), with a Rack middleware"
  spec.description = "Verifies the compact JWS tenant-proxy adds to every request (docs/descriptor.md): pinned algorithm, " \
                     "iss, aud, typ, exp/nbf with at most 5 s leeway, host binding, JWKS URL with refetch cooldown."
  spec.authors = ["tenant-proxy contributors"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 2.7"
  spec.files = Dir["lib/**/*.rb", "README.md"]
  spec.require_paths = ["lib"]
  spec.add_dependency "jwt", ">= 2.5", "< 4"
  spec.add_development_dependency "minitest", ">= 5.0"
  spec.add_development_dependency "rack", ">= 2.2"
end
