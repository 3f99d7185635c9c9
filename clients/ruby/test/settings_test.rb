# frozen_string_literal: true

require_relative "test_helper"

# Settings: read on first use, config first, then TENANT_DESCRIPTOR_* (never TENANT_PROXY_*),
# and a missing one names both ways to set it.
class SettingsTest < Minitest::Test
  Settings = TenantProxy::Settings

  def test_nothing_is_read_until_used
    env = Hash.new { |_h, k| raise "read #{k} at construction" }
    Settings.new({}, env: env) # no exception: nothing read
  end

  def test_config_wins_over_the_environment
    s = Settings.new({ issuer: "from-config" }, env: { "TENANT_DESCRIPTOR_ISSUER" => "from-env", "TENANT_DESCRIPTOR_AUDIENCE" => "aud" })
    assert_equal ["from-config", "aud"], [s[:issuer], s[:audience]]
  end

  def test_the_environment_namespace_is_the_apps_own
    names = Settings::ENV_NAMES.values
    assert names.all? { |n| n.start_with?("TENANT_DESCRIPTOR_") }, names.inspect
    s = Settings.new({}, env: { "TENANT_PROXY_DEPLOYMENT_ID" => "shop", "TENANT_PROXY_DESCRIPTOR_AUDIENCE" => "app" })
    assert_nil s[:issuer], "the proxy's variables are never read"
  end

  def test_a_missing_setting_names_both_ways_to_set_it
    error = assert_raises(TenantProxy::ConfigurationError) { Settings.new({}, env: {}).fetch(:audience) }
    assert_match(/config\.tenant_proxy\.audience/, error.message)
    assert_match(/TENANT_DESCRIPTOR_AUDIENCE/, error.message)
  end

  def test_the_verifier_is_built_on_first_use_and_names_a_missing_key_source
    s = Settings.new({}, env: { "TENANT_DESCRIPTOR_ISSUER" => "i", "TENANT_DESCRIPTOR_AUDIENCE" => "a" })
    error = assert_raises(TenantProxy::ConfigurationError) { s.verifier }
    assert_match(/TENANT_DESCRIPTOR_JWKS_URL/, error.message)
  end

  def test_a_keys_file_from_the_environment
    Dir.mktmpdir do |dir|
      path = File.join(dir, "jwks.json")
      File.write(path, JSON.generate(Vectors["jwks"]))
      s = Settings.new({}, env: { "TENANT_DESCRIPTOR_ISSUER" => Vectors["issuer"], "TENANT_DESCRIPTOR_AUDIENCE" => Vectors["audience"],
                                  "TENANT_DESCRIPTOR_KEYS_FILE" => path })
      c = Vectors.case_named("valid ES256")
      error = assert_raises(TenantProxy::Descriptor::InvalidDescriptor) { s.verifier.verify(c["token"], request_host: c["request_host"]) }
      # The vectors' tokens are valid at their fixed "now" only: reaching the time check means the
      # key from the file verified the signature.
      assert_includes %w[expired not_yet_valid], error.reason
    end
  end

  def test_pem_keys_get_the_proxys_thumbprint_kid
    pem = Vectors["keys"]["es256"].fetch("public_pem")
    keys = TenantProxy::Descriptor.keys_from_pem("# a comment\n#{pem}")
    assert_equal [Vectors["keys"]["es256"]["kid"]], keys.keys
  end

  def test_defaults
    s = Settings.new({}, env: {})
    assert_equal [["/up"], 20, ["TenantRecord"], "X-Tenant-Descriptor"], [s[:skip_paths], s[:max_pools], s[:models], s.header]
  end

  def test_override_wins_and_resets_what_was_built
    s = Settings.new({ issuer: "a" }, env: {})
    s.override(issuer: "b", jwks_url: nil)
    assert_equal "b", s[:issuer]
    assert_nil s[:jwks_url]
  end
end
