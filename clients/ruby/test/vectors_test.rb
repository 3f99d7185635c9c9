# frozen_string_literal: true

require_relative "test_helper"

# Every case of the shared test vectors, through Verifier.
class VectorsTest < Minitest::Test
  Descriptor = TenantProxy::Descriptor

  def test_every_case
    verifier = Vectors.verifier
    assert_operator Vectors["cases"].length, :>, 40
    Vectors["cases"].each do |c|
      if c["expect"] == "valid"
        d = verifier.verify(c["token"], request_host: c["request_host"])
        claims = c["claims"]
        assert_equal [claims["sub"], claims["host"], claims["epoch"], claims["iat"], claims["exp"]],
                     [d.tenant, d.host, d.epoch, d.issued_at, d.expires_at], c["name"]
        assert_equal claims["db"].values_at("name", "host", "port"), [d.db.name, d.db.host, d.db.port], c["name"]
      else
        error = assert_raises(Descriptor::InvalidDescriptor, c["name"]) { verifier.verify(c["token"], request_host: c["request_host"]) }
        assert_equal c["reason"], error.reason, "#{c['name']}: #{error.message}"
      end
    end
  end

  def test_result_is_frozen
    d = Vectors.verifier.verify(Vectors.case_named("valid ES256")["token"], request_host: Vectors["host"])
    assert d.frozen? && d.db.frozen? && d.tenant.frozen?
    assert_raises(FrozenError) { d.tenant = "globex" }
    assert_equal "db2.internal:5432/acme_prod", d.connection_key
  end

  def test_clock_is_injected
    later = Vectors.verifier(clock: -> { Vectors["now"] + 3600 })
    error = assert_raises(Descriptor::InvalidDescriptor) { later.verify(Vectors.case_named("valid ES256")["token"], request_host: Vectors["host"]) }
    assert_equal "expired", error.reason
  end

  def test_keys_decide_the_algorithm
    hs_only = Descriptor::Verifier.new(secrets: Vectors["keys"]["hs256"]["secret"], issuer: Vectors["issuer"], audience: Vectors["audience"], clock: -> { Vectors["now"] })
    error = assert_raises(Descriptor::InvalidDescriptor) { hs_only.verify(Vectors.case_named("valid ES256")["token"], request_host: Vectors["host"]) }
    assert_equal "unknown_kid", error.reason
    es_only = Descriptor::Verifier.new(jwks: Vectors["jwks"], issuer: Vectors["issuer"], audience: Vectors["audience"], clock: -> { Vectors["now"] })
    error = assert_raises(Descriptor::InvalidDescriptor) { es_only.verify(Vectors.case_named("valid HS256")["token"], request_host: Vectors["host"]) }
    assert_equal "unknown_kid", error.reason
  end

  def test_hs256_kid_is_the_proxy_thumbprint
    assert_equal Vectors["keys"]["hs256"]["kid"], Descriptor.hs256_kid(Vectors["keys"]["hs256"]["secret"])
  end

  def test_options_are_checked
    assert_raises(ArgumentError) { Vectors.verifier(leeway: 6) }
    assert_raises(ArgumentError) { Vectors.verifier(secrets: "too short") }
    assert_raises(ArgumentError) { Descriptor::Verifier.new(issuer: "i", audience: "a") }
  end

  def test_missing_token
    error = assert_raises(Descriptor::InvalidDescriptor) { Vectors.verifier.verify(nil, request_host: Vectors["host"]) }
    assert_equal ["missing", 400], [error.reason, error.status]
  end

  def test_canonical_host
    {
      "ACME.Example.COM.:8443" => "acme.example.com", "acme.example.com" => "acme.example.com",
      "acme.example.com:" => "acme.example.com", "BÜCHER.example:443" => "xn--bcher-kva.example",
      "straße.example" => "xn--strae-oqa.example", "ẞ.de" => "ss.de", "ｅｘａｍｐｌｅ．ｃｏｍ" => "example.com",
      "例え。テスト" => "xn--r8jz45g.xn--zckzah", "☃.net" => "xn--n3h.net", "a\u00ADb.example" => "ab.example",
      # Nothing that is not a host name matches any claim.
      "[::1]:8080" => nil, "127.0.0.1" => nil, "acme.123" => nil, "" => nil, "acme.example.com:65536" => nil,
      "user@acme.example.com" => nil, "a_b.example" => nil, "-a.example" => nil, "a..b" => nil,
      "xn--zz.example" => nil, "a\u200Cb.example" => nil, "a b.example" => nil, "acme.example.com, globex.example.com" => nil,
      "#{'a' * 64}.example" => nil, "#{'a.' * 127}a" => nil
    }.each do |input, expected|
      actual = Descriptor.canonical_host(input)
      expected.nil? ? assert_nil(actual, input.inspect) : assert_equal(expected, actual, input.inspect)
    end
  end

  def test_punycode_round_trips
    %w[bücher straße 例え ☃ münchen ελληνικά].each do |label|
      encoded = Descriptor::Punycode.encode(label)
      assert_equal label, Descriptor::Punycode.decode(encoded), label
    end
    assert_equal "bcher-kva", Descriptor::Punycode.encode("bücher") # RFC 3492 example style
  end
end
