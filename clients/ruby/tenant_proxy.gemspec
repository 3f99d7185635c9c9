# frozen_string_literal: true

require_relative "lib/tenant_proxy/version"

# Named tenant_proxy (it was tenant_proxy-descriptor): the gem is now the whole app side of
# tenant-proxy (verifier, Rack middleware, Railtie, generators, tasks, test helpers), and Bundler
# requires a gem by its name, so `tenant_proxy` loads lib/tenant_proxy.rb and with it the Railtie.
# `require "tenant_proxy/descriptor"` and "tenant_proxy/descriptor/rack" still load the verifier
# alone, for Rack apps without Rails.
Gem::Specification.new do |spec|
  spec.name = "tenant_proxy"
  spec.version = TenantProxy::VERSION
  spec.summary = "The app side of tenant-proxy: verified tenant descriptors, per-tenant databases in Rails"
  spec.description = "Verifies the signed tenant database descriptor tenant-proxy adds to every request (docs/descriptor.md) " \
                     "and, in Rails, runs each request, job, console block and Action Cable connection against its " \
                     "tenant's own database, cache namespace and storage keys, failing closed without one."
  spec.authors = ["tenant-proxy contributors"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 2.7"
  spec.files = Dir["lib/**/*.rb", "lib/**/*.rake", "lib/generators/**/templates/*", "README.md"]
  spec.require_paths = ["lib"]
  spec.add_dependency "jwt", ">= 2.5", "< 4"
  spec.add_development_dependency "minitest", ">= 5.0"
  spec.add_development_dependency "rack", ">= 2.2"
end
