# frozen_string_literal: true

require_relative "active_record_adapter"
require_relative "pools"
require_relative "tenant_model"

module TenantProxy
  # Connects blocks of code to a tenant's database through Active Record (installed as
  # TenantProxy.switcher by the Railtie): one pool per database and epoch (Pools), the tenant
  # model classes switched to it for the block only (ActiveRecordAdapter).
  class ActiveRecordSwitcher
    # Connection settings the descriptor decides; the app's own database keeps the rest (adapter,
    # username, password, pool size, timeouts), overridable with config.tenant_proxy.database.
    DROPPED = %i[url host port database replica migrations_paths schema_dump schema_cache_path database_tasks].freeze

    def initialize(settings:, adapter: ActiveRecordAdapter)
      @settings = settings
      @adapter = adapter
      @pools = nil
      @mutex = Mutex.new
    end

    def pools
      @pools || @mutex.synchronize do
        @pools ||= begin
          @adapter.check!
          max = Integer(@settings[:max_pools])
          Pools.new(adapter: @adapter, max_pools: max, config_for: ->(d) { config_for(d) })
        rescue ArgumentError, TypeError
          raise ConfigurationError, "tenant_proxy: config.tenant_proxy.max_pools must be an integer of at least 1"
        end
      end
    end

    def stale?(descriptor)
      pools.stale?(descriptor)
    end

    def checkout(descriptor)
      pools.checkout(descriptor)
    end

    def activate(lease, &block)
      @adapter.connected_to(model_names, lease.shard, &block)
    end

    def checkin(lease, release:)
      @adapter.release(lease.shard) if release
    ensure
      pools.checkin(lease)
    end

    # Runs the block with every tenant model switched to no database at all.
    def deactivate(&block)
      @adapter.connected_to(model_names, @adapter.default_shard, &block)
    end

    def model_names
      (Array(@settings[:models]) + TenantModel.names).uniq
    end

    def config_for(descriptor)
      overrides = (@settings[:database] || {}).to_h.transform_keys(&:to_sym)
      base = @adapter.primary_config.reject { |k, _| DROPPED.include?(k.to_sym) }.transform_keys(&:to_sym)
      raise ConfigurationError, "tenant_proxy: no database adapter: the app has no primary database; set config.tenant_proxy.database = { adapter: ... }" unless base[:adapter] || overrides[:adapter]

      base.merge(overrides).merge(host: descriptor.db.host, port: descriptor.db.port, database: descriptor.db.name)
    end
  end
end
