# frozen_string_literal: true

require_relative "boot"

require "rails"
require "active_record/railtie"
require "active_storage/engine"
require "action_controller/railtie"
require "action_view/railtie"
require "active_job/railtie"
require "action_cable/engine"
require "sprockets/railtie"

# Requires the gems of the Gemfile, tenant_proxy among them (which loads its Railtie).
Bundler.require(*Rails.groups)

module Notes
  # A small app whose notes live in each tenant's own database (app/models/note.rb), behind
  # tenant-proxy. Its own database (config/database.yml) holds nothing of any tenant.
  class Application < Rails::Application
    config.load_defaults 6.1
    config.active_job.queue_adapter = :async
    config.active_storage.service = :local
    # Active Storage's tables live in each tenant's database too (db/tenant_migrate), so blobs
    # are switched with the notes; their keys start with the tenant's slug either way.
    config.tenant_proxy.models = %w[TenantRecord ActiveStorage::Record]
    # Open tenant connection pools per process (the least recently used idle one closes beyond).
    config.tenant_proxy.max_pools = Integer(ENV.fetch("NOTES_MAX_POOLS", "20"))
  end
end
