# frozen_string_literal: true

Rails.application.configure do
  config.cache_classes = true
  config.eager_load = false
  config.cache_store = :memory_store
  config.action_controller.perform_caching = true
  config.consider_all_requests_local = true
  config.action_controller.allow_forgery_protection = false
  config.active_job.queue_adapter = :test
  # The app's own database has no migrations to check; tenant databases are prepared per test.
  config.active_record.maintain_test_schema = false
  config.hosts.clear
end
