# frozen_string_literal: true

Rails.application.routes.draw do
  # Health check, answered without a descriptor (config.tenant_proxy.skip_paths).
  get "/up", to: proc { [200, { "content-type" => "text/plain" }, ["ok"]] }

  get "/notes", to: "notes#index"
  post "/notes", to: "notes#create"
  post "/notes/later", to: "notes#create_later"
  get "/cache/:key", to: "notes#read_cache"
  put "/cache/:key", to: "notes#write_cache"
  post "/files", to: "notes#upload"
  get "/pools", to: "notes#pools"
  get "/no-tenant", to: "notes#without_tenant"
end
