# frozen_string_literal: true

require_relative "test_helper"

# ActiveRecordAdapter against stand-ins of Active Record's interfaces as they are in Rails 6.1,
# 7.1 and 8.0 (read from Rails' source: ConnectionHandler#establish_connection, connected_to_many,
# MigrationContext.new, the writing role). CI runs the real Rails 6.1 (test/rails-example.test.ts);
# these check that each version gets the calls its interface takes. They cannot show that the real
# 7.1/8 behave as their source reads: that is unverified here.
class ActiveRecordAdapterTest < Minitest::Test
  Adapter = TenantProxy::ActiveRecordAdapter

  # Records every call the adapter makes.
  class Handler
    attr_reader :calls

    def initialize(pool)
      @calls = []
      @pool = pool
    end

    def establish_connection(config, owner_name:, role:, shard:)
      @calls << [:establish, config, owner_name, role, shard]
    end

    def remove_connection_pool(owner, role:, shard:)
      @calls << [:remove, owner, role, shard]
    end

    def retrieve_connection_pool(owner, role:, shard:)
      @calls << [:retrieve, owner, role, shard]
      @pool
    end
  end

  Pool = Struct.new(:released, :schema_migration, :internal_metadata) do
    def release_connection
      self.released += 1
    end
  end

  # A stand-in `ActiveRecord` namespace for one Rails version.
  def fake_active_record(version, legacy: nil)
    pool = Pool.new(0, :pool_schema_migration, :pool_internal_metadata)
    handler = Handler.new(pool)
    stack = []
    ar = Module.new
    ar.const_set(:VERSION_STRING, version)
    ar.define_singleton_method(:gem_version) { Gem::Version.new(version) }
    ar.define_singleton_method(:writing_role) { :writing_71 } if Gem::Version.new(version) >= Gem::Version.new("7.0")
    base = Class.new do
      define_singleton_method(:connection_handler) { handler }
      define_singleton_method(:default_shard) { :default }
      define_singleton_method(:name) { "ActiveRecord::Base" }
      define_singleton_method(:stack) { stack }
      define_singleton_method(:connection_pool) { pool }
      define_singleton_method(:connection) { Struct.new(:schema_migration, :internal_metadata).new(:conn_schema_migration, :conn_internal_metadata) }
      define_singleton_method(:connected_to_many) do |classes, role:, shard:, &block|
        stack << [classes, role, shard]
        block.call
      ensure
        stack.pop
      end
      define_singleton_method(:connected_to) do |role:, shard:, &block|
        stack << [[self], role, shard]
        block.call
      ensure
        stack.pop
      end
      define_singleton_method(:current_preventing_writes) { false }
      unless Gem::Version.new(version) >= Gem::Version.new("7.0")
        define_singleton_method(:writing_role) { :writing_61 }
      end
      define_singleton_method(:legacy_connection_handling) { legacy } unless legacy.nil?
      configs = [Struct.new(:configuration_hash).new({ adapter: "postgresql", username: "app", url: "postgres://x", database: "app_own", pool: 7 })]
      define_singleton_method(:configurations) do
        Object.new.tap { |o| o.define_singleton_method(:configs_for) { |env_name:| configs } }
      end
    end
    ar.const_set(:Base, base)
    hash_config = Struct.new(:env_name, :name, :configuration_hash)
    ar.const_set(:DatabaseConfigurations, Module.new.tap { |m| m.const_set(:HashConfig, hash_config) })
    ar.const_set(:MigrationContext, Struct.new(:paths, :schema_migration, :internal_metadata))
    ar.const_set(:SchemaMigration, :schema_migration_class)
    [ar, handler, pool]
  end

  def with_ar(version, **options)
    ar, handler, pool = fake_active_record(version, **options)
    Adapter.ar = ar
    yield ar, handler, pool
  ensure
    Adapter.ar = nil
  end

  # A stand-in abstract model class with the class methods tenant_class! touches.
  def fake_model(name, ar)
    shard_of = ->(klass) { ar::Base.stack.reverse_each { |classes, _, shard| return shard if classes.include?(klass) }; :default }
    Class.new do
      define_singleton_method(:name) { name }
      define_singleton_method(:abstract_class?) { true }
      define_singleton_method(:current_shard) { shard_of.call(self) }
      singleton_class.attr_accessor :connection_class, :connection_specification_name
      define_singleton_method(:connection_pool) { :the_pool }
      define_singleton_method(:retrieve_connection) { :the_connection }
    end
  end

  def test_rails_8_0
    with_ar("8.0.5") do |ar, handler, pool|
      Adapter.establish(:tenant_proxy_x, { database: "acme" })
      _, config, owner, role, shard = handler.calls.last
      assert_equal ["tenant_proxy", :writing_71, :tenant_proxy_x], [owner, role, shard], "7.1+ take the connection name as a String"
      assert_equal ["tenant_proxy_tenant_proxy_x", { database: "acme" }], [config.name, config.configuration_hash]
      Adapter.release(:tenant_proxy_x)
      assert_equal 1, pool.released
      context = Adapter.migration_context(["db/tenant_migrate"])
      assert_equal [:pool_schema_migration, :pool_internal_metadata], [context.schema_migration, context.internal_metadata], "7.2+: the pool's"
      assert Adapter.check!
    end
  end

  def test_rails_7_1
    with_ar("7.1.6") do |_ar, handler|
      Adapter.establish(:s, {})
      assert_equal "tenant_proxy", handler.calls.last[2]
      context = Adapter.migration_context(["db/tenant_migrate"])
      assert_equal [:conn_schema_migration, :conn_internal_metadata], [context.schema_migration, context.internal_metadata], "7.1: the connection's"
    end
  end

  def test_rails_6_1
    with_ar("6.1.7", legacy: false) do |_ar, handler|
      Adapter.establish(:s, {})
      _, _, owner, role = handler.calls.last
      assert_same Adapter::OWNER_OBJECT, owner, "6.1 asks its owner current_preventing_writes: not a String"
      assert_equal ["tenant_proxy", false, false], [owner.name, owner.primary_class?, owner.current_preventing_writes]
      assert_equal :writing_61, role
      assert_equal :schema_migration_class, Adapter.migration_context(["p"]).schema_migration
      assert Adapter.check!
    end
  end

  def test_rails_6_1_legacy_connection_handling_is_refused_by_name
    with_ar("6.1.7", legacy: true) do
      error = assert_raises(TenantProxy::ConfigurationError) { Adapter.check! }
      assert_match(/legacy_connection_handling = false/, error.message)
    end
  end

  def test_tenant_classes_fail_closed_and_are_looked_up_by_name
    with_ar("8.0.5") do |ar|
      model = fake_model("FakeTenantRecord", ar)
      Adapter.tenant_class!(model)
      assert_equal [true, "tenant_proxy"], [model.connection_class, model.connection_specification_name]
      error = assert_raises(TenantProxy::NoTenant) { model.connection_pool }
      assert_match(/FakeTenantRecord was used with no tenant/, error.message)
      assert_raises(TenantProxy::NoTenant) { model.retrieve_connection }

      Object.const_set(:FakeTenantRecord, model)
      seen = Adapter.connected_to(["FakeTenantRecord"], :tenant_proxy_x) { [model.current_shard, model.connection_pool] }
      assert_equal [:tenant_proxy_x, :the_pool], seen

      # A code reload replaces the class object under the same name: the new one is switched.
      reloaded = Adapter.tenant_class!(fake_model("FakeTenantRecord", ar))
      Object.send(:remove_const, :FakeTenantRecord)
      Object.const_set(:FakeTenantRecord, reloaded)
      assert_equal :tenant_proxy_x, Adapter.connected_to(["FakeTenantRecord"], :tenant_proxy_x) { reloaded.current_shard }
      assert_equal :default, Adapter.connected_to(["FakeTenantRecord"], :tenant_proxy_x) { model.current_shard }, "the stale class is not"
    ensure
      Object.send(:remove_const, :FakeTenantRecord) if Object.const_defined?(:FakeTenantRecord)
    end
  end

  def test_a_class_that_is_no_tenant_class_is_refused
    with_ar("8.0.5") do |ar|
      Object.const_set(:FakePlainRecord, fake_model("FakePlainRecord", ar))
      assert_raises(TenantProxy::ConfigurationError) { Adapter.connected_to(["FakePlainRecord"], :s) { nil } }
      assert_raises(TenantProxy::ConfigurationError) { Adapter.connected_to(["NoSuchRecord"], :s) { nil } }
    ensure
      Object.send(:remove_const, :FakePlainRecord)
    end
  end

  def test_tenant_connection_settings_come_from_the_app_and_the_descriptor
    with_ar("8.0.5") do
      settings = TenantProxy::Settings.new({ database: { "username" => "tenants" } }, env: {})
      switcher = TenantProxy::ActiveRecordSwitcher.new(settings: settings)
      d = Struct.new(:db).new(TenantProxy::Descriptor::Database.new(name: "acme_prod", host: "db2", port: 6432))
      assert_equal({ adapter: "postgresql", username: "tenants", pool: 7, host: "db2", port: 6432, database: "acme_prod" }, switcher.config_for(d),
                   "the app's adapter and pool, its url and database dropped, username overridden")
    end
  end
end
