# frozen_string_literal: true

require_relative "active_record_adapter"
require_relative "active_record_switcher"

module TenantProxy
  # Runs the app's tenant migrations (config.tenant_proxy.migrations_paths, db/tenant_migrate by
  # default) against every tenant database, or the tenants named, a few at a time; the tasks
  # `rails tenant_proxy:migrate`, `:rollback` and `:status` call it.
  #
  # Tenants and their databases come from the proxy's ops API (every state: a tenant in
  # maintenance is exactly the one a migration is for). Each tenant gets one progress line as it
  # finishes; a summary line follows; #run returns false when any tenant failed (the task then
  # exits 1). A new tenant's empty database gets every migration, hence the current schema.
  class Migrator
    ACTIONS = %i[migrate rollback status].freeze

    # The rake tasks: settings from config.tenant_proxy, choices from TENANTS, CONCURRENCY,
    # VERSION and STEP. Returns true when no tenant failed.
    def self.run_task(action, env: ENV, out: $stdout)
      settings = TenantProxy.settings
      switcher = TenantProxy.switcher || ActiveRecordSwitcher.new(settings: settings)
      tenants = env["TENANTS"]&.split(",")&.map(&:strip)&.reject(&:empty?)
      concurrency = Integer(env["CONCURRENCY"] || settings[:migrate_concurrency])
      paths = Array(settings[:migrations_paths]).map { |p| ::Rails.root.join(p).to_s }
      app = ::Rails.application
      migrator = new(resolver: settings.resolver, config_for: ->(d) { switcher.config_for(d) }, paths: paths,
                     concurrency: concurrency, out: out, wrap: ->(&b) { app.executor.wrap(&b) })
      migrator.run(action, tenants: tenants, version: env["VERSION"]&.then { |v| Integer(v) }, step: Integer(env["STEP"] || 1))
    end

    def initialize(resolver:, config_for:, paths:, concurrency: 4, out: $stdout, adapter: ActiveRecordAdapter, wrap: ->(&b) { b.call })
      raise ArgumentError, "concurrency must be at least 1" unless concurrency.is_a?(Integer) && concurrency >= 1

      @resolver = resolver
      @config_for = config_for
      @paths = Array(paths)
      @concurrency = concurrency
      @out = out
      @adapter = adapter
      @wrap = wrap
      @lock = Mutex.new
    end

    # action: :migrate (to version, or the latest), :rollback (step migrations) or :status.
    # tenants: slugs, or nil for every tenant the proxy knows. Returns true when none failed.
    def run(action, tenants: nil, version: nil, step: 1)
      raise ArgumentError, "unknown action #{action.inspect}" unless ACTIONS.include?(action)

      started = monotonic
      counts = Hash.new(0)
      say "tenant_proxy:#{action}: #{tenants ? "#{tenants.length} tenant#{tenants.length == 1 ? "" : "s"}" : "every tenant"}, " \
          "#{@concurrency} at a time, migrations from #{@paths.join(', ')}"
      listing_error = quietly do
        each_concurrently(tenants ? tenants.each : tenant_slugs) do |slug|
          ok = one(action, slug, version, step)
          @lock.synchronize { counts[ok ? :ok : :failed] += 1 }
        end
      end
      total = counts[:ok] + counts[:failed]
      say "tenant_proxy:#{action}: #{total} tenant#{total == 1 ? '' : 's'}, #{counts[:ok]} ok, #{counts[:failed]} failed " \
          "(#{format('%.2f', monotonic - started)} s)"
      if listing_error
        say "tenant_proxy:#{action}: could not list the tenants: #{listing_error.message}"
        return false
      end
      counts[:failed].zero?
    end

    private

    def tenant_slugs
      Enumerator.new { |y| @resolver.each_tenant { |t| y << t.fetch("slug") } }
    end

    # Feeds slugs to @concurrency threads; returns the error that stopped the listing, if any.
    def each_concurrently(slugs, &block)
      queue = SizedQueue.new(@concurrency * 2)
      workers = Array.new(@concurrency) do
        Thread.new do
          while (slug = queue.pop)
            block.call(slug)
          end
        end
      end
      error = nil
      begin
        slugs.each { |slug| queue << slug }
      rescue OpsApiError, ConfigurationError => e
        error = e
      ensure
        workers.size.times { queue << nil }
        workers.each(&:join)
      end
      error
    end

    def one(action, slug, version, step)
      started = monotonic
      detail = @wrap.call do
        descriptor = @resolver.descriptor_for(slug)
        shard = :"tenant_proxy_migrate_#{slug.tr('-', '_')}"
        @adapter.with_base_connection(shard, @config_for.call(descriptor)) { act(action, version, step) }
      end
      report(slug, "ok", "#{detail} (#{format('%.2f', monotonic - started)} s)")
      true
    rescue StandardError, ScriptError => e
      report(slug, "FAILED", "#{e.class}: #{e.message.lines.first.to_s.strip}")
      false
    end

    def act(action, version, step)
      context = @adapter.migration_context(@paths)
      before = context.current_version
      case action
      when :migrate
        context.migrate(version)
      when :rollback
        context.rollback(step)
      when :status
        pending = context.migrations_status.count { |status, _version, _name| status == "down" }
        return "at #{before}, #{pending} pending"
      end
      after = context.current_version
      before == after ? "up to date at #{after}" : "#{before} -> #{after}"
    end

    # Rails' per-migration output would interleave between threads: the lines here replace it.
    def quietly
      migration = defined?(::ActiveRecord::Migration) ? ::ActiveRecord::Migration : nil
      return yield unless migration

      verbose = migration.verbose
      migration.verbose = false
      begin
        yield
      ensure
        migration.verbose = verbose
      end
    end

    def report(slug, status, detail)
      say "  #{slug.ljust(24)} #{status.ljust(6)} #{detail}"
    end

    def say(line)
      @lock.synchronize do
        @out.puts(line)
        @out.flush if @out.respond_to?(:flush)
      end
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
