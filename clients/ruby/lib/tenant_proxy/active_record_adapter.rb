# frozen_string_literal: true

module TenantProxy
  # Everything this gem asks of Active Record, in one place: the calls differ between Rails 6.1
  # (what Debian ships, and CI runs) and 7.1/8, and nowhere else in the gem may they be made.
  #
  # Tenant pools are registered with Active Record's connection handler as shards of one
  # connection name, OWNER, that has no default shard: code that reaches a tenant model with no
  # tenant switched in finds no pool and raises NoTenant, never falls back to a real database.
  # Tenant model classes are looked up by name each time (never kept), so a Zeitwerk reload in
  # development, which replaces the class objects, cannot leave a stale one behind.
  #
  # What differs, and how it is handled here:
  # - Rails 6.1 can keep the legacy connection handling (one handler per role), where shards of
  #   an abstract class cannot be switched: refused with a ConfigurationError naming the setting.
  # - The writing role: ActiveRecord::Base.writing_role (6.1), ActiveRecord.writing_role (7.0+).
  # - Migrations: MigrationContext.new(paths, SchemaMigration) (6.1, 7.0) against
  #   (paths, schema_migration, internal_metadata) objects of the connection (7.1) or of the
  #   pool (7.2+).
  # - Giving back this thread's connection: ConnectionPool#release_connection in every version
  #   (7.2+ renamed the leasing side, lease_connection, not this one).
  # - 8.0's connection_pool raises ConnectionNotDefined itself when no pool exists; the check
  #   here comes first so the error is always NoTenant.
  # - The pools' owner: 7.1+ accept the connection name as a String and wrap it themselves; 6.1
  #   and 7.0 keep what they are given and ask it #current_preventing_writes on every write, so
  #   they get OWNER_OBJECT (a class object would be the reload hazard this module avoids).
  module ActiveRecordAdapter
    # The connection name every tenant pool is registered under.
    OWNER = "tenant_proxy"

    # The owner of tenant pools for Rails 6.1 and 7.0: the connection name, answering what
    # Active Record asks a connection class.
    OWNER_OBJECT = Object.new
    class << OWNER_OBJECT
      def name
        OWNER
      end
      alias_method :to_s, :name

      def primary_class?
        false
      end

      # Writes are prevented only where Active Record prevents them for every class.
      def current_preventing_writes
        ActiveRecordAdapter.base.current_preventing_writes
      end
    end

    module_function

    # The Active Record in use: ::ActiveRecord, or a stand-in with the 7.1/8 interfaces in the
    # gem's tests (CI runs Rails 6.1 only).
    def ar
      @ar || ::ActiveRecord
    end

    def ar=(namespace)
      @ar = namespace
    end

    def owner
      version >= Gem::Version.new("7.1") ? OWNER : OWNER_OBJECT
    end

    def version
      ar.gem_version
    end

    def base
      ar::Base
    end

    def handler
      base.connection_handler
    end

    def writing_role
      ar.respond_to?(:writing_role) ? ar.writing_role : base.writing_role
    end

    def default_shard
      base.default_shard
    end

    # Raises unless this Active Record can switch tenant shards.
    def check!
      if base.respond_to?(:legacy_connection_handling) && base.legacy_connection_handling
        raise ConfigurationError, "tenant_proxy needs Active Record's connection handling of Rails 6.1+: set " \
                                  "config.active_record.legacy_connection_handling = false (config/application.rb)"
      end
      true
    end

    # Makes klass (an abstract model class) a tenant connection class: its models use the tenant
    # pool switched in, and raise NoTenant when none is.
    def tenant_class!(klass)
      raise ArgumentError, "#{klass} must be an abstract class (self.abstract_class = true)" unless klass.abstract_class?

      klass.connection_class = true
      klass.connection_specification_name = OWNER
      klass.singleton_class.prepend(TenantConnection) unless klass.singleton_class.include?(TenantConnection)
      klass
    end

    # Class methods of tenant connection classes: the fail-closed check before any pool lookup.
    module TenantConnection
      def connection_pool
        ActiveRecordAdapter.require_tenant!(self)
        super
      end

      def retrieve_connection
        ActiveRecordAdapter.require_tenant!(self)
        super
      end
    end

    def require_tenant!(klass)
      return unless klass.current_shard == default_shard

      raise NoTenant, "tenant_proxy: #{klass.name} was used with no tenant in effect: no verified descriptor for this request, " \
                      "no TenantProxy.with_tenant block around this code (a new thread does not inherit the tenant)"
    end

    # Registers a pool for shard with the connection settings (a Hash); connects lazily.
    def establish(shard, config)
      db_config = ar::DatabaseConfigurations::HashConfig.new(env_name, "tenant_proxy_#{shard}", config)
      handler.establish_connection(db_config, owner_name: owner, role: writing_role, shard: shard)
    end

    # Removes shard's pool, closing its connections.
    def remove(shard)
      handler.remove_connection_pool(OWNER, role: writing_role, shard: shard)
    end

    def pool(shard)
      handler.retrieve_connection_pool(OWNER, role: writing_role, shard: shard)
    end

    # Gives this thread's connection of shard's pool back to the pool.
    def release(shard)
      pool(shard)&.release_connection
    end

    # Runs the block with the tenant classes (names, resolved now) switched to shard.
    def connected_to(class_names, shard, &block)
      classes = class_names.map { |name| constant(name) }
      base.connected_to_many(classes, role: writing_role, shard: shard, &block)
    end

    def constant(name)
      klass = Object.const_get(name)
      raise ConfigurationError, "tenant_proxy: #{name} is not a tenant model class (include TenantProxy::TenantModel in it)" unless klass.connection_specification_name == OWNER

      klass
    rescue NameError
      raise ConfigurationError, "tenant_proxy: config.tenant_proxy.models names #{name}, which is not defined"
    end

    # The connection settings of the app's own (primary) database, the base of every tenant's.
    def primary_config
      config = base.configurations.configs_for(env_name: env_name).first
      config ? config.configuration_hash : {}
    end

    def env_name
      defined?(::Rails) && ::Rails.respond_to?(:env) ? ::Rails.env.to_s : (ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "development")
    end

    # Runs the block with Active Record's own models (ActiveRecord::Base, hence migrations and
    # their bookkeeping tables) on a temporary pool for config, in this thread only; the pool is
    # removed afterwards. Used by the tenant migration tasks, one thread per tenant.
    def with_base_connection(shard, config)
      db_config = ar::DatabaseConfigurations::HashConfig.new(env_name, "tenant_proxy_#{shard}", config)
      handler.establish_connection(db_config, owner_name: base, role: writing_role, shard: shard)
      begin
        base.connected_to(role: writing_role, shard: shard) { yield }
      ensure
        handler.remove_connection_pool(base.name, role: writing_role, shard: shard)
      end
    end

    # A MigrationContext for paths on ActiveRecord::Base's current connection.
    def migration_context(paths)
      if version >= Gem::Version.new("7.2")
        pool = base.connection_pool
        ar::MigrationContext.new(paths, pool.schema_migration, pool.internal_metadata)
      elsif version >= Gem::Version.new("7.1")
        connection = base.connection
        ar::MigrationContext.new(paths, connection.schema_migration, connection.internal_metadata)
      else
        ar::MigrationContext.new(paths, ar::SchemaMigration)
      end
    end
  end
end
