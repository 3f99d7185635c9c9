# frozen_string_literal: true

require "digest"

module TenantProxy
  # One connection pool per tenant database, keyed by server, port, database and epoch, with at
  # most max_pools of them:
  #
  # - a descriptor with a higher epoch for a tenant retires the pools of its lower epochs: they are
  #   removed (their connections closed, so the old database can be dropped) as soon as no code
  #   uses them, and a descriptor with a lower epoch than one already seen is refused
  #   (StaleDescriptor) instead of reopening the old database;
  # - beyond max_pools the least recently used pool nobody is using is removed and disconnected.
  #   Pools in use are never removed: if every pool is busy the cap is exceeded until one is free.
  #
  # The pools themselves belong to Active Record; `adapter` (ActiveRecordAdapter, or a fake in
  # tests) creates and removes them. `config_for` turns a descriptor into the connection settings.
  class Pools
    # A pool in use by one block of code. `shard` is the name Active Record knows the pool by.
    Lease = Struct.new(:key, :shard, :tenant, :epoch, :in_use, :retired)

    attr_reader :max_pools

    def initialize(adapter:, max_pools:, config_for:)
      raise ArgumentError, "max_pools must be an integer of at least 1" unless max_pools.is_a?(Integer) && max_pools >= 1

      @adapter = adapter
      @max_pools = max_pools
      @config_for = config_for
      @leases = {} # insertion order: least recently used first
      @epochs = {} # tenant => highest epoch seen
      @mutex = Mutex.new
      @removed = 0
    end

    # Marks the descriptor's pool as used (creating it if needed) and returns its Lease; give it
    # back with checkin.
    def checkout(descriptor)
      key = [descriptor.db.host, descriptor.db.port, descriptor.db.name, descriptor.epoch].freeze
      @mutex.synchronize do
        seen = @epochs[descriptor.tenant]
        if seen && descriptor.epoch < seen
          raise StaleDescriptor, "tenant_proxy: #{descriptor.tenant}'s descriptor has epoch #{descriptor.epoch}, " \
                                 "but epoch #{seen} was already seen (the tenant's database moved)"
        end

        @epochs[descriptor.tenant] = descriptor.epoch
        retire_older(descriptor) if seen && descriptor.epoch > seen
        lease = @leases.delete(key) || open(key, descriptor)
        lease.in_use += 1
        @leases[key] = lease # now the most recently used
        evict_idle
        lease
      end
    end

    def checkin(lease)
      @mutex.synchronize do
        lease.in_use -= 1
        remove(lease) if lease.retired && lease.in_use.zero? && @leases[lease.key].equal?(lease)
        evict_idle
      end
    end

    # True when a descriptor with a higher epoch was seen for the descriptor's tenant.
    def stale?(descriptor)
      @mutex.synchronize do
        seen = @epochs[descriptor.tenant]
        !seen.nil? && descriptor.epoch < seen
      end
    end

    # Number of pools open now.
    def size
      @mutex.synchronize { @leases.size }
    end

    # { open:, in_use:, removed:, max: } for health and debugging endpoints.
    def stats
      @mutex.synchronize do
        { open: @leases.size, in_use: @leases.each_value.count { |l| l.in_use.positive? }, removed: @removed, max: @max_pools }
      end
    end

    # Removes every idle pool (a deploy, a test's teardown); pools in use stay.
    def clear_idle
      @mutex.synchronize { @leases.values.each { |l| remove(l) if l.in_use.zero? } }
    end

    private

    def open(key, descriptor)
      # The shard name derives from the key; server and database names are not secret.
      shard = :"tenant_proxy_#{Digest::SHA256.hexdigest(key.join("\0"))[0, 20]}"
      @adapter.establish(shard, @config_for.call(descriptor))
      Lease.new(key, shard, descriptor.tenant, descriptor.epoch, 0, false)
    end

    def retire_older(descriptor)
      @leases.values.each do |lease|
        next unless lease.tenant == descriptor.tenant && lease.epoch < descriptor.epoch

        lease.retired = true
        remove(lease) if lease.in_use.zero?
      end
    end

    def evict_idle
      while @leases.size > @max_pools
        victim = @leases.each_value.find { |l| l.in_use.zero? }
        break unless victim

        remove(victim)
      end
    end

    def remove(lease)
      @leases.delete(lease.key)
      @removed += 1
      # Closes the pool's connections and forgets the shard.
      @adapter.remove(lease.shard)
    end
  end
end
