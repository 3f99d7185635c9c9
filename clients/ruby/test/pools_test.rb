# frozen_string_literal: true

require_relative "test_helper"

# Pools with a recording stand-in for Active Record (the real one runs in
# test/rails-example.test.ts): keys, epochs, the LRU cap, and which pools are closed when.
class PoolsTest < Minitest::Test
  Desc = Struct.new(:tenant, :db, :epoch)
  Db = TenantProxy::Descriptor::Database

  class FakeAdapter
    attr_reader :open, :removed

    def initialize
      @open = {}
      @removed = []
    end

    def establish(shard, config)
      raise "#{shard} established twice" if @open.key?(shard)

      @open[shard] = config
    end

    def remove(shard)
      @removed << @open.delete(shard).fetch(:database)
    end
  end

  def setup
    @adapter = FakeAdapter.new
    @pools = TenantProxy::Pools.new(adapter: @adapter, max_pools: 3, config_for: ->(d) { { database: d.db.name } })
  end

  def desc(tenant, epoch: 1, name: "#{tenant}_db", host: "db1", port: 5432)
    Desc.new(tenant, Db.new(name: name, host: host, port: port), epoch)
  end

  def use(descriptor)
    lease = @pools.checkout(descriptor)
    @pools.checkin(lease)
    lease
  end

  def test_one_pool_per_server_port_database_and_epoch
    a = use(desc("acme"))
    assert_equal a.shard, use(desc("acme")).shard
    refute_equal a.shard, use(desc("globex")).shard
    refute_equal a.shard, use(desc("acme", port: 6432)).shard
    assert_equal 3, @pools.size
  end

  def test_an_epoch_bump_closes_the_old_pool_when_it_is_free
    old = @pools.checkout(desc("acme"))
    moved = use(desc("acme", epoch: 2, name: "acme_db2"))
    assert_empty @adapter.removed, "the old pool is in use: not closed under a running request"
    @pools.checkin(old)
    assert_equal ["acme_db"], @adapter.removed, "closed when its last user is done"
    assert_equal [moved.shard], @adapter.open.keys
  end

  def test_an_epoch_bump_on_the_same_database_still_retires_the_pool
    use(desc("acme"))
    use(desc("acme", epoch: 2))
    assert_equal ["acme_db"], @adapter.removed
    assert_equal 1, @pools.size
  end

  def test_an_older_epoch_is_refused_once_a_newer_one_was_seen
    use(desc("acme", epoch: 2, name: "acme_db2"))
    error = assert_raises(TenantProxy::StaleDescriptor) { @pools.checkout(desc("acme", epoch: 1)) }
    assert_match(/epoch 1.*epoch 2/, error.message)
    assert_equal ["acme_db2"], @adapter.open.values.map { |c| c[:database] }, "the old database is never reopened"
  end

  def test_the_least_recently_used_idle_pool_is_closed_beyond_the_cap
    %w[a b c].each { |t| use(desc(t)) }
    use(desc("a")) # a is now the most recently used
    use(desc("d"))
    assert_equal ["b_db"], @adapter.removed
    assert_equal 3, @pools.size
    assert_equal({ open: 3, in_use: 0, removed: 1, max: 3 }, @pools.stats)
  end

  def test_pools_in_use_are_never_closed
    leases = %w[a b c d].map { |t| @pools.checkout(desc(t)) }
    assert_equal 4, @pools.size, "every pool is busy: the cap is exceeded, nothing is closed"
    assert_empty @adapter.removed
    @pools.checkin(leases[1])
    assert_equal ["b_db"], @adapter.removed, "the first to be free goes"
    leases.values_at(0, 2, 3).each { |l| @pools.checkin(l) }
    assert_equal 3, @pools.size
  end

  def test_fifty_tenants_stay_within_the_cap
    pools = TenantProxy::Pools.new(adapter: @adapter, max_pools: 10, config_for: ->(d) { { database: d.db.name } })
    50.times { |i| pools.checkin(pools.checkout(desc("t#{i}"))) }
    assert_equal 10, pools.size
    assert_equal 10, @adapter.open.size
    assert_equal 40, @adapter.removed.size
  end

  def test_max_pools_is_checked
    assert_raises(ArgumentError) { TenantProxy::Pools.new(adapter: @adapter, max_pools: 0, config_for: ->(_) {}) }
  end

  def test_concurrent_checkouts_create_one_pool
    threads = Array.new(8) { Thread.new { 20.times { use(desc("acme")) } } }
    threads.each(&:join)
    assert_equal 1, @adapter.open.size
  end
end
