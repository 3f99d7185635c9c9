# frozen_string_literal: true

ENV["RAILS_ENV"] ||= "test"
require_relative "../config/environment"
require "rails/test_help"
require "tenant_proxy/test_helpers"

# Signed descriptors from a fixture key: request tests run without a proxy.
TenantProxy::TestHelpers.install!
%w[acme globex].each do |slug|
  TenantProxy::TestHelpers.register_tenant(slug) # database "<the app's test database>_<slug>"
  TenantProxy::TestHelpers.prepare_tenant(slug)  # created if missing, tenant migrations run
end
