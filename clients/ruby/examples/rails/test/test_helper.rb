# frozen_string_literal: true

ENV["RAILS_ENV"] ||= "test"
require_relative "../config/environment"
require "rails/test_help"
require "tenant_proxy/test_helpers"

# Signed descriptors from a fixture key: request tests run without a proxy.
TenantProxy::TestHelpers.install!
TenantProxy::TestHelpers.register_tenant("acme")
TenantProxy::TestHelpers.register_tenant("globex")
