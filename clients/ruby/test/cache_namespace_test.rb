# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/recording_switcher"
require "active_support"
require "active_support/cache"
require "tenant_proxy/cache_namespace"

# Rails.cache's namespace (a real ActiveSupport::Cache::MemoryStore): two tenants writing the same
# key never read each other's value, and a cache call with no tenant raises.
class CacheNamespaceTest < Minitest::Test
  include RecordingTenants

  def setup
    install_recording_tenants
    @store = ActiveSupport::Cache::MemoryStore.new
    TenantProxy::CacheNamespace.install(@store)
  end

  def teardown
    remove_recording_tenants
  end

  def test_two_tenants_writing_the_same_key
    TenantProxy.with_tenant("acme") { @store.write("plan", "acme's") }
    TenantProxy.with_tenant("globex") do
      assert_nil @store.read("plan"), "globex never reads acme's entry"
      @store.write("plan", "globex's")
    end
    assert_equal "acme's", TenantProxy.with_tenant("acme") { @store.read("plan") }
    assert_equal "globex's", TenantProxy.with_tenant("globex") { @store.fetch("plan") { "computed" } }
    assert_equal({ "plan" => "acme's" }, TenantProxy.with_tenant("acme") { @store.read_multi("plan") })
  end

  def test_no_tenant_raises_and_global_is_explicit
    error = assert_raises(TenantProxy::NoTenant) { @store.read("plan") }
    assert_match(/TenantProxy\.global/, error.message)
    assert_raises(TenantProxy::NoTenant) { @store.write("plan", 1) }
    TenantProxy.global { @store.write("plan", "shared") }
    assert_equal "shared", TenantProxy.global { @store.read("plan") }
    assert_nil TenantProxy.with_tenant("acme") { @store.read("plan") }, "global entries are not a tenant's"
  end

  def test_an_app_namespace_stays_in_front
    store = ActiveSupport::Cache::MemoryStore.new(namespace: "shop")
    TenantProxy::CacheNamespace.install(store)
    TenantProxy.with_tenant("acme") { store.write("k", 1) }
    assert_equal 1, store.read("k", namespace: "shop:tenant:acme")
    TenantProxy::CacheNamespace.install(store)
    assert_equal 1, TenantProxy.with_tenant("acme") { store.read("k") }, "installing twice changes nothing"
  end
end
