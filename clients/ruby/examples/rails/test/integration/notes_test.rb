# frozen_string_literal: true

require "test_helper"

class NotesTest < ActionDispatch::IntegrationTest
  include TenantProxy::TestHelpers

  setup do
    %w[acme globex].each { |slug| TenantProxy.with_tenant(slug) { Note.delete_all } }
  end

  test "each tenant sees its own notes" do
    post "/notes", params: { title: "acme's" }, headers: tenant_proxy_headers("acme")
    assert_response :created
    get "/notes", headers: tenant_proxy_headers("globex")
    assert_equal [], response.parsed_body["notes"]
    get "/notes", headers: tenant_proxy_headers("acme")
    assert_equal ["acme's"], response.parsed_body["notes"]
  end

  test "a request without a descriptor is refused" do
    get "/notes", headers: { "Host" => "acme.example.test" }
    assert_response :bad_request
    assert_equal "missing", response.parsed_body["reason"]
  end

  test "an expired descriptor is refused" do
    get "/notes", headers: tenant_proxy_headers("acme", exp: Time.now.to_i - 60)
    assert_response :unauthorized
    assert_equal "expired", response.parsed_body["reason"]
  end

  test "with_tenant reaches a tenant's database outside a request" do
    TenantProxy.with_tenant("globex") { Note.create!(title: "from a test") }
    assert_equal ["from a test"], TenantProxy.with_tenant("globex") { Note.pluck(:title) }
    assert_raises(TenantProxy::NoTenant) { Note.count }
  end
end
