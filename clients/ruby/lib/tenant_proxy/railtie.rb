# frozen_string_literal: true

require "rails/railtie"
require_relative "middleware"
require_relative "cache_namespace"
require_relative "job_tenant"
require_relative "cable_tenant"
require_relative "storage_key"
require_relative "active_record_switcher"
require_relative "migrator"

module TenantProxy
  # Wires the gem into a Rails app (loaded by `require "tenant_proxy"`, which Bundler does for the
  # gem). Nothing here reads a setting: settings are read when first used, so an app boots,
  # precompiles assets, migrates its own database and opens a console without any of them.
  #
  # config.tenant_proxy.* (each optional here; see docs/rails.md for the full list):
  #   issuer, audience, jwks_url, keys_file, api_url, api_token  (else TENANT_DESCRIPTOR_*)
  #   models, database, max_pools, migrations_paths, migrate_concurrency, skip_paths,
  #   passthrough_hosts, header, leeway, cache_namespace, log_tags, jobs, action_cable, active_storage
  class Railtie < ::Rails::Railtie
    config.tenant_proxy = ActiveSupport::OrderedOptions.new

    initializer "tenant_proxy.settings" do |app|
      TenantProxy.settings.options = app.config.tenant_proxy
    end

    initializer "tenant_proxy.middleware" do |app|
      app.config.middleware.insert_before ::Rails::Rack::Logger, TenantProxy::Middleware::Verify
      app.config.middleware.use TenantProxy::Middleware::Switch
    end

    # After config/environments/*.rb, which usually set config.log_tags themselves.
    initializer "tenant_proxy.log_tags", after: :load_environment_config do |app|
      next if app.config.tenant_proxy.log_tags == false

      tags = Array(app.config.log_tags)
      tags += [:request_id] unless tags.include?(:request_id)
      app.config.log_tags = tags + [TenantProxy::Middleware::LOG_TAG]
    end

    initializer "tenant_proxy.active_record" do
      ActiveSupport.on_load(:active_record) do
        TenantProxy.switcher ||= TenantProxy::ActiveRecordSwitcher.new(settings: TenantProxy.settings)
      end
    end

    initializer "tenant_proxy.active_job" do |app|
      ActiveSupport.on_load(:active_job) do
        prepend TenantProxy::JobTenant unless app.config.tenant_proxy.jobs == false || self <= TenantProxy::JobTenant
      end
    end

    initializer "tenant_proxy.action_cable" do |app|
      next if app.config.tenant_proxy.action_cable == false

      ActiveSupport.on_load(:action_cable) do
        # Appended, so it runs inside the executor wrap Action Cable's engine prepends.
        ActionCable::Server::Worker.set_callback :work, :around, ->(worker, inner) { TenantProxy::CableTenant.around_work(worker, inner) }
        ActionCable::Server::Base.prepend(TenantProxy::CableTenant::Server) unless ActionCable::Server::Base <= TenantProxy::CableTenant::Server
        self.log_tags = Array(log_tags) + [TenantProxy::Middleware::LOG_TAG] unless app.config.tenant_proxy.log_tags == false
      end
      ActiveSupport.on_load(:action_cable_channel) do
        prepend TenantProxy::CableTenant::Channel unless self <= TenantProxy::CableTenant::Channel
      end
      ActiveSupport.on_load(:action_cable_connection) do
        prepend TenantProxy::CableTenant::Connection unless self <= TenantProxy::CableTenant::Connection
      end
    end

    # Active Storage's tables in the tenant databases: config.tenant_proxy.models lists its base
    # class, which becomes a tenant model class when it loads (and reloads).
    initializer "tenant_proxy.active_storage_tables" do |app|
      ActiveSupport.on_load(:active_storage_record) do
        tenanted = Array(app.config.tenant_proxy.models).include?("ActiveStorage::Record")
        include TenantProxy::TenantModel if tenanted && !(self <= TenantProxy::TenantModel)
      end
    end

    initializer "tenant_proxy.active_storage" do |app|
      next if app.config.tenant_proxy.active_storage == false

      # Runs again for each reloaded ActiveStorage::Blob class.
      ActiveSupport.on_load(:active_storage_blob) do
        singleton_class.prepend(TenantProxy::StorageKey) unless singleton_class <= TenantProxy::StorageKey
      end
    end

    config.after_initialize do |app|
      TenantProxy::CacheNamespace.install(::Rails.cache) unless app.config.tenant_proxy.cache_namespace == false
    end

    rake_tasks do
      load File.expand_path("tasks.rake", __dir__)
    end
  end
end
