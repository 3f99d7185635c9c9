# frozen_string_literal: true

require "digest"

# One ActiveRecord connection pool per tenant database, keyed by server and database
# ("db2.internal:5432/acme_prod", from the verified descriptor), registered as a shard of an
# abstract class (TenantRecord), with at most max_pools pools: the least recently used idle pool is
# disconnected and removed when a new one would exceed the cap. A pool in use by a running request
# is never removed; if every pool is busy the cap is exceeded until requests finish.
#
# Lives in lib/ (not autoloaded) so the registry survives code reloading in development.
class TenantPools
  Entry = Struct.new(:shard, :in_use)

  attr_reader :max_pools

  # record_class_name: the abstract class whose models hold tenant data (a String, resolved lazily
  # so this can be built in an initializer). base_config_name: the database.yml entry whose
  # adapter and credentials every tenant database uses.
  def initialize(record_class_name:, base_config_name:, max_pools: 20, role: :writing)
    raise ArgumentError, "max_pools must be at least 1" unless max_pools.to_i >= 1

    @record_class_name = record_class_name
    @base_config_name = base_config_name
    @max_pools = max_pools.to_i
    @role = role
    @entries = {} # insertion order = least recently used first
    @mutex = Mutex.new
  end

  # Runs the block with record_class connected to the descriptor's database.
  def with(descriptor, &block)
    key = descriptor.connection_key
    shard = acquire(key, descriptor.db)
    begin
      record_class.connected_to(role: @role, shard: shard, &block)
    ensure
      release(key)
    end
  end

  # Number of pools currently registered.
  def size
    @mutex.synchronize { @entries.size }
  end

  private

  def record_class
    @record_class ||= Object.const_get(@record_class_name)
  end

  def handler
    ActiveRecord::Base.connection_handler
  end

  def acquire(key, db)
    @mutex.synchronize do
      entry = @entries.delete(key)
      unless entry
        # The shard name is derived from the key; the key itself (server and database) is not secret.
        shard = :"tenant_#{Digest::SHA256.hexdigest(key)[0, 16]}"
        handler.establish_connection(config_for(db), owner_name: record_class, role: @role, shard: shard)
        entry = Entry.new(shard, 0)
      end
      entry.in_use += 1
      @entries[key] = entry # now the most recently used
      evict_idle
      entry.shard
    end
  end

  def release(key)
    @mutex.synchronize do
      entry = @entries[key]
      entry.in_use -= 1 if entry
      evict_idle
    end
  end

  def evict_idle
    while @entries.size > @max_pools
      victim_key, victim = @entries.find { |_key, entry| entry.in_use.zero? }
      break unless victim

      @entries.delete(victim_key)
      # Disconnects the pool's connections and forgets the shard.
      handler.remove_connection_pool(record_class.connection_specification_name, role: @role, shard: victim.shard)
    end
  end

  def config_for(db)
    base = ActiveRecord::Base.configurations.configs_for(env_name: Rails.env, name: @base_config_name)
    raise ArgumentError, "no #{@base_config_name.inspect} entry in config/database.yml for #{Rails.env}" unless base

    # The app keeps its own credentials: the descriptor only names the server and the database.
    base.configuration_hash.merge(host: db.host, port: db.port, database: db.name)
  end
end
