# frozen_string_literal: true

require_relative "test_helper"
require "tenant_proxy/test_helpers"

# TenantProxy::TestHelpers: descriptors an app's own tests sign, which its verifier then trusts,
# and only in the test environment.
class TestHelpersTest < Minitest::Test
  include TenantProxy::TestHelpers

  def with_env(value)
    saved = ENV["RACK_ENV"]
    ENV["RACK_ENV"] = value
    yield
  ensure
    ENV["RACK_ENV"] = saved
  end

  def setup
    @settings = TenantProxy::Settings.new({ issuer: "production-issuer", jwks_url: "http://tenant-proxy:9394/jwks.json" }, env: {})
    TenantProxy.settings = @settings
    TenantProxy::TestHelpers.register_tenant("acme", database: "notes_test_acme", db_host: "127.0.0.1", db_port: 5432)
  end

  def teardown
    TenantProxy.settings = nil
  end

  def test_signed_descriptors_verify_after_install
    with_env("test") { TenantProxy::TestHelpers.install!(@settings) }
    headers = tenant_proxy_headers("acme")
    d = @settings.verifier.verify(headers["X-Tenant-Descriptor"], request_host: headers["X-Forwarded-Host"])
    assert_equal ["acme", "acme.example.test", "notes_test_acme", "127.0.0.1", 5432, 1], [d.tenant, d.host, d.db.name, d.db.host, d.db.port, d.epoch]
    assert_nil @settings.verifier.remote, "the configured key set URL is not used in tests"
  end

  def test_claims_can_be_overridden_to_test_refusals
    with_env("test") { TenantProxy::TestHelpers.install!(@settings) }
    token = tenant_proxy_descriptor("acme", exp: Time.now.to_i - 60)
    error = assert_raises(TenantProxy::Descriptor::InvalidDescriptor) { @settings.verifier.verify(token, request_host: "acme.example.test") }
    assert_equal "expired", error.reason
  end

  def test_with_tenant_resolves_registered_tenants_without_a_proxy
    with_env("test") { TenantProxy::TestHelpers.install!(@settings) }
    assert_equal "notes_test_acme", TenantProxy.with_tenant("acme") { TenantProxy.current_descriptor.db.name }
  end

  def test_install_refuses_outside_the_test_environment
    error = with_env("production") { assert_raises(TenantProxy::ConfigurationError) { TenantProxy::TestHelpers.install!(@settings) } }
    assert_match(/test environment only/, error.message)
    assert_equal "production-issuer", @settings[:issuer], "nothing was replaced"
  end

  def test_a_token_signed_by_the_fixture_key_is_refused_by_a_real_verifier
    token = tenant_proxy_descriptor("acme")
    error = assert_raises(TenantProxy::Descriptor::InvalidDescriptor) { Vectors.verifier.verify(token, request_host: "acme.example.test") }
    assert_equal "unknown_kid", error.reason
  end
end
