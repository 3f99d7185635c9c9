# frozen_string_literal: true

Rails.application.configure do
  # Code reloading: a change to app/ is picked up by the next request.
  config.cache_classes = false
  config.eager_load = false
  config.consider_all_requests_local = true
  config.cache_store = :memory_store
  config.action_controller.perform_caching = true
  config.active_record.migration_error = :page_load
  config.log_level = :debug
  config.file_watcher = ActiveSupport::FileUpdateChecker
  # Tenant hosts: *.localhost passes Rails' host check in development; add others here.
  config.hosts << ".localhost"
  config.action_cable.disable_request_forgery_protection = true
end
