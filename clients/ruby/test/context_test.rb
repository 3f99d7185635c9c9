# frozen_string_literal: true

require_relative "test_helper"

# TenantProxy.with_tenant / with_descriptor / global with a recording switcher: what is in effect
# where, nesting, and when a connection goes back to its pool.
class ContextTest < Minitest::Test
  Lease = Struct.new(:shard)
  D = ->(tenant, epoch = 1) { Struct.new(:tenant, :epoch).new(tenant, epoch) }

  class Switcher
    attr_reader :log

    def initialize
      @log = []
    end

    def checkout(d)
      Lease.new(:"shard_#{d.tenant}")
    end

    def activate(lease)
      @log << [:activate, lease.shard]
      yield
    end

    def checkin(lease, release:)
      @log << [:checkin, lease.shard, release]
    end

    def deactivate
      @log << [:deactivate]
      yield
    end
  end

  class Resolver
    attr_reader :asked

    def initialize
      @asked = []
    end

    def descriptor_for(slug)
      @asked << slug
      D.call(slug)
    end
  end

  def setup
    @switcher = Switcher.new
    @resolver = Resolver.new
    TenantProxy.switcher = @switcher
    TenantProxy.settings = TenantProxy::Settings.new({ resolver: @resolver }, env: {})
  end

  def teardown
    TenantProxy.switcher = nil
    TenantProxy.settings = nil
  end

  def test_with_tenant_resolves_and_switches
    assert_nil TenantProxy.current_tenant
    inside = TenantProxy.with_tenant("acme") { TenantProxy.current_tenant }
    assert_equal "acme", inside
    assert_nil TenantProxy.current_tenant
    assert_equal [[:activate, :shard_acme], [:checkin, :shard_acme, true]], @switcher.log
  end

  def test_the_same_tenant_inside_is_not_switched_again
    TenantProxy.with_tenant("acme") { TenantProxy.with_tenant("acme") { nil } }
    assert_equal ["acme"], @resolver.asked
    assert_equal 2, @switcher.log.length
  end

  def test_a_pool_used_by_an_enclosing_block_keeps_its_connection
    TenantProxy.with_tenant("acme") do
      TenantProxy.with_tenant("globex") do
        TenantProxy.with_tenant("acme") { assert_equal "acme", TenantProxy.current_tenant }
        assert_equal "globex", TenantProxy.current_tenant
      end
    end
    checkins = @switcher.log.select { |e| e[0] == :checkin }
    # The inner acme block must not give back the connection the outer one may hold a
    # transaction on; globex's and the outer acme's go back.
    assert_equal [[:checkin, :shard_acme, false], [:checkin, :shard_globex, true], [:checkin, :shard_acme, true]], checkins
  end

  def test_global_is_explicitly_no_tenant
    TenantProxy.with_tenant("acme") do
      TenantProxy.global do
        assert_nil TenantProxy.current_tenant
        assert TenantProxy.global?
      end
      refute TenantProxy.global?
    end
    assert_includes @switcher.log, [:deactivate]
  end

  def test_current_tenant_bang_raises_without_one
    assert_raises(TenantProxy::NoTenant) { TenantProxy.current_tenant! }
  end

  def test_the_tenant_is_per_thread
    TenantProxy.with_tenant("acme") do
      assert_nil Thread.new { TenantProxy.current_tenant }.value, "a new thread does not inherit the tenant"
    end
  end

  def test_a_copied_execution_state_does_not_share_the_tenant
    TenantProxy.with_tenant("acme") do
      store = TenantProxy::Context.state
      copied = store[TenantProxy::Context::KEY] # what Rails copies into a thread it starts
      seen = Thread.new do
        store[TenantProxy::Context::KEY] = copied
        TenantProxy.with_tenant("globex") { nil }
        TenantProxy.current_tenant
      end.value
      assert_nil seen, "the other thread starts with no tenant"
      assert_equal "acme", TenantProxy.current_tenant, "and cannot unwind this thread's frames"
    end
  end

  def test_an_error_unwinds
    assert_raises(RuntimeError) { TenantProxy.with_tenant("acme") { raise "boom" } }
    assert_nil TenantProxy.current_tenant
    assert_equal [:checkin, :shard_acme, true], @switcher.log.last
  end
end
