# frozen_string_literal: true

Rails.application.configure do
  config.cache_classes = true
  config.eager_load = true
  config.consider_all_requests_local = false
  config.cache_store = :memory_store
  config.action_controller.perform_caching = true
  config.log_level = :info
  config.log_tags = [:request_id]
  config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))
  config.assets.compile = false
  config.action_cable.disable_request_forgery_protection = true
end
