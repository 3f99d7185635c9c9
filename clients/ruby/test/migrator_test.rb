# frozen_string_literal: true

require_relative "test_helper"
require "stringio"

# The tenant migration runner with stand-ins for the ops API and Active Record (the real tasks run
# against real databases in test/rails-example.test.ts): bounded concurrency, a line per tenant, a
# summary, and failure reported by the result.
class MigratorTest < Minitest::Test
  Desc = Struct.new(:tenant, :db, :epoch)

  class Resolver
    def initialize(slugs, broken: [])
      @slugs = slugs
      @broken = broken
    end

    def each_tenant(state: nil, &block)
      @slugs.each { |s| block.call({ "slug" => s, "state" => "active" }) }
    end

    def descriptor_for(slug)
      raise TenantProxy::UnknownTenant, "no tenant #{slug}" if @broken.include?(slug)

      Desc.new(slug, TenantProxy::Descriptor::Database.new(name: "#{slug}_db", host: "h", port: 5432), 1)
    end
  end

  # Counts how many tenants migrate at once. Each waits (bounded) until `overlap` ran together
  # once, so the test sees the concurrency limit reached, not just allowed.
  class Adapter
    attr_reader :max_running, :databases

    def initialize(fail_for: nil, overlap: 1)
      @running = 0
      @max_running = 0
      @databases = []
      @lock = Mutex.new
      @changed = ConditionVariable.new
      @fail_for = fail_for
      @overlap = overlap
    end

    def with_base_connection(_shard, config)
      @lock.synchronize do
        @running += 1
        @max_running = [@max_running, @running].max
        @databases << config[:database]
        @changed.broadcast
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
        while @max_running < @overlap && (left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)).positive?
          @changed.wait(@lock, left)
        end
      end
      raise ActiveRecord_StatementInvalid, "relation already exists" if config[:database] == @fail_for

      yield
    ensure
      @lock.synchronize { @running -= 1 }
    end

    def migration_context(_paths)
      Struct.new(:current_version) do
        def migrate(_version = nil)
          self.current_version = 20_240_101_000_001
        end

        def rollback(step)
          self.current_version = 20_240_101_000_001 - step
        end

        def migrations_status
          [["up", "1", "x"], ["down", "2", "y"]]
        end
      end.new(0)
    end
  end

  ActiveRecord_StatementInvalid = Class.new(StandardError)

  def migrator(resolver, adapter, concurrency: 3)
    @out = StringIO.new
    TenantProxy::Migrator.new(resolver: resolver, config_for: ->(d) { { database: d.db.name } }, paths: ["db/tenant_migrate"],
                              concurrency: concurrency, out: @out, adapter: adapter)
  end

  def test_every_tenant_a_few_at_a_time
    adapter = Adapter.new(overlap: 3)
    slugs = Array.new(12) { |i| "t#{i}" }
    assert migrator(Resolver.new(slugs), adapter).run(:migrate)
    assert_equal 3, adapter.max_running, "three at a time, never more"
    assert_equal slugs.map { |s| "#{s}_db" }.sort, adapter.databases.sort
    lines = @out.string.lines
    slugs.each { |s| assert(lines.any? { |l| l =~ /^  #{s} +ok +0 -> 20240101000001/ }, "a line for #{s}") }
    assert_match(/tenant_proxy:migrate: 12 tenants, 12 ok, 0 failed/, lines.last)
  end

  def test_a_failed_tenant_fails_the_run_and_the_others_still_migrate
    adapter = Adapter.new(fail_for: "b_db")
    refute migrator(Resolver.new(%w[a b c]), adapter).run(:migrate)
    assert_match(/^  b +FAILED +MigratorTest::ActiveRecord_StatementInvalid: relation already exists/, @out.string)
    assert_match(/3 tenants, 2 ok, 1 failed/, @out.string)
  end

  def test_named_tenants_only
    adapter = Adapter.new
    assert migrator(Resolver.new(%w[a b c]), adapter).run(:migrate, tenants: %w[c])
    assert_equal ["c_db"], adapter.databases
    assert_match(/tenant_proxy:migrate: 1 tenant, 3 at a time/, @out.string)
  end

  def test_an_unknown_named_tenant_fails
    refute migrator(Resolver.new([], broken: %w[ghost]), Adapter.new).run(:migrate, tenants: %w[ghost])
    assert_match(/ghost +FAILED +TenantProxy::UnknownTenant/, @out.string)
  end

  def test_rollback
    assert migrator(Resolver.new(%w[a]), Adapter.new).run(:rollback, step: 1)
    assert_match(/^  a +ok +0 -> 20240101000000/, @out.string)
    assert_match(/tenant_proxy:rollback: 1 tenant, 1 ok, 0 failed/, @out.string)
  end

  def test_status
    assert migrator(Resolver.new(%w[a]), Adapter.new).run(:status)
    assert_match(/^  a +ok +at 0, 1 pending/, @out.string)
  end

  def test_an_unreachable_tenant_list_fails
    resolver = Resolver.new([])
    def resolver.each_tenant(**)
      raise TenantProxy::OpsApiUnavailable, "the proxy's ops API did not answer"
    end
    refute migrator(resolver, Adapter.new).run(:migrate)
    assert_match(/could not list the tenants: the proxy's ops API did not answer/, @out.string)
  end
end
