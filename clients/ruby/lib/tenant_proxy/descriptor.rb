# frozen_string_literal: true

require "base64"
require "json"
require "openssl"
require "jwt"
require_relative "version"
require_relative "descriptor/host"
require_relative "descriptor/key_set"

module TenantProxy
  # Verification of tenant-proxy's descriptor (docs/descriptor.md, version 1) on top of ruby-jwt.
  #
  #   verifier = TenantProxy::Descriptor::Verifier.new(
  #     jwks_url: "http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json",
  #     issuer: "shop-production", audience: "shop")
  #   d = verifier.verify(token, request_host: request.headers["X-Forwarded-Host"] || request.headers["Host"])
  #   d.tenant   # => "acme"
  #   d.db.name  # => "acme_prod"
  #
  # The checks run in the order of the specification; the first that fails raises InvalidDescriptor
  # with a stable #reason (the codes of test/fixtures/descriptor-vectors.json).
  module Descriptor
    TYP = "tenant-db+jwt"
    # Largest accepted token, in bytes; the proxy's tokens are well under 1 KiB.
    MAX_TOKEN_BYTES = 8192
    # The specification allows at most this much clock skew, in seconds.
    MAX_LEEWAY = 5
    # Largest time a claim may carry: 2^53 - 1, the largest integer every JSON parser keeps exactly.
    MAX_TIME = (2**53) - 1
    # JOSE header parameters that would let a token name its own key, or demand extensions.
    FORBIDDEN_HEADERS = %w[crit jwk jku x5u x5c].freeze
    # Reasons answered with 400 (the request is malformed); every other refusal is a 401.
    BAD_REQUEST_REASONS = %w[missing malformed comma too_large].freeze
    B64URL = /\A[A-Za-z0-9_-]+\z/.freeze

    # Base error: #reason is a stable code, #status the HTTP status a middleware answers.
    class Error < StandardError
      attr_reader :reason

      def initialize(reason, detail = nil)
        @reason = reason
        super(detail ? "#{reason}: #{detail}" : reason)
      end

      def status
        return 503 if reason == "jwks_unavailable"

        BAD_REQUEST_REASONS.include?(reason) ? 400 : 401
      end
    end

    # The descriptor is missing, malformed, forged, expired, or for another app or host.
    class InvalidDescriptor < Error; end

    # The key set could not be fetched and none is held (reason "jwks_unavailable").
    class KeySetUnavailable < Error; end

    # The tenant's database server and name.
    Database = Struct.new(:name, :host, :port, keyword_init: true)

    # A verified descriptor (frozen).
    Result = Struct.new(:tenant, :host, :db, :epoch, :issuer, :audience, :issued_at, :expires_at, keyword_init: true) do
      # "host:port/name": the tenant's database, whatever its epoch.
      def connection_key
        "#{db.host}:#{db.port}/#{db.name}"
      end
    end

    # A verification key pinned to one algorithm.
    Key = Struct.new(:alg, :key)

    module_function

    # The request host as the proxy writes the host claim (see Host), or nil when it is invalid.
    def canonical_host(value)
      Host.canonical(value)
    end

    # RFC 7638 thumbprint of the secret's oct JWK: the kid tenant-proxy gives an HS256 key.
    def hs256_kid(secret)
      k = Base64.urlsafe_encode64(secret.b, padding: false)
      Base64.urlsafe_encode64(OpenSSL::Digest::SHA256.digest(JSON.generate({ "k" => k, "kty" => "oct" })), padding: false)
    end

    # RFC 7638 thumbprint of an EC public JWK: the kid tenant-proxy gives an ES256 key by default.
    def ec_kid(jwk)
      members = { "crv" => jwk["crv"], "kty" => "EC", "x" => jwk["x"], "y" => jwk["y"] }
      Base64.urlsafe_encode64(OpenSSL::Digest::SHA256.digest(JSON.generate(members)), padding: false)
    end

    # The public JWK (crv, kty, x, y) of a P-256 key (public or private).
    def ec_public_jwk(pkey)
      raise ArgumentError, "only P-256 EC keys are accepted" unless pkey.is_a?(OpenSSL::PKey::EC) && pkey.group.curve_name == "prime256v1"

      point = pkey.public_key.to_octet_string(:uncompressed)
      b64 = ->(bytes) { Base64.urlsafe_encode64(bytes, padding: false) }
      { "kty" => "EC", "crv" => "P-256", "x" => b64.call(point[1, 32]), "y" => b64.call(point[33, 32]) }
    end

    # ES256 verification keys by kid from a JWKS (a Hash or JSON text); other keys are skipped.
    def keys_from_jwks(jwks)
      data = jwks.is_a?(String) ? JSON.parse(jwks) : jwks
      list = data.is_a?(Hash) ? (data["keys"] || data[:keys]) : nil
      raise ArgumentError, 'JWKS has no "keys" list' unless list.is_a?(Array)

      list.each_with_object({}) do |jwk, out|
        jwk = jwk.transform_keys(&:to_s) if jwk.is_a?(Hash)
        next unless jwk.is_a?(Hash) && jwk["kty"] == "EC" && jwk["crv"] == "P-256" && jwk["kid"].is_a?(String)
        next unless jwk.fetch("use", "sig") == "sig" && jwk.fetch("alg", "ES256") == "ES256"
        raise ArgumentError, "JWKS has a duplicate kid #{jwk['kid'].inspect}" if out.key?(jwk["kid"])

        imported = JWT::JWK.import(jwk.slice("kty", "crv", "x", "y"))
        out[jwk["kid"]] = Key.new("ES256", imported.respond_to?(:verify_key) ? imported.verify_key : imported.keypair)
      end
    end

    # ES256 keys by kid (the RFC 7638 thumbprint, as the proxy names them) from PEM text: public
    # keys, or private keys of which only the public half is kept. A proxy key given an explicit
    # kid in descriptor.keys is not found this way: give the app the key set (JWKS) instead.
    def keys_from_pem(text)
      blocks = text.to_enum(:scan, /-----BEGIN ([A-Z ]+)-----.+?-----END \1-----/m).map { Regexp.last_match(0) }
      blocks.reject! { |b| b.start_with?("-----BEGIN EC PARAMETERS-----") }
      raise ArgumentError, "no PEM key found" if blocks.empty?

      blocks.each_with_object({}) do |pem, out|
        jwk = ec_public_jwk(OpenSSL::PKey.read(pem))
        public_key = JWT::JWK.import(jwk)
        out[ec_kid(jwk)] = Key.new("ES256", public_key.respond_to?(:verify_key) ? public_key.verify_key : public_key.keypair)
      end
    rescue OpenSSL::PKey::PKeyError => e
      raise ArgumentError, "unreadable PEM key (#{e.class})"
    end

    # Keys from a file: a JWKS (JSON), PEM keys, or one HS256 secret written "hs256:<secret>" (the
    # forms tenant-proxy itself reads; "#" comment lines are skipped before a secret).
    def keys_from_file(path)
      text = File.read(path)
      stripped = text.strip
      return keys_from_jwks(stripped) if stripped.start_with?("{")
      return keys_from_pem(text) if text.include?("-----BEGIN ")

      secret = stripped.lines.map(&:strip).reject { |l| l.empty? || l.start_with?("#") }
      raise ArgumentError, "#{path}: neither a JWKS, PEM keys nor an hs256:<secret> line" unless secret.length == 1 && secret[0].start_with?("hs256:")

      keys_from_secrets(secret[0].delete_prefix("hs256:"))
    end

    # HS256 keys by kid: a secret, a list of secrets (kid = thumbprint), or { kid => secret }.
    def keys_from_secrets(secrets)
      pairs = secrets.is_a?(Hash) ? secrets.to_a : Array(secrets).map { |s| [hs256_kid(s), s] }
      pairs.each_with_object({}) do |(kid, secret), out|
        raise ArgumentError, "HS256 secrets must be at least 32 bytes" if secret.to_s.bytesize < 32

        # The UTF-8 bytes of the string are the HMAC key, as tenant-proxy uses them.
        out[kid.to_s] = Key.new("HS256", secret.to_s)
      end
    end

    def b64decode(part, what)
      # RFC 7515 section 2: unpadded base64url, and only its canonical spelling.
      raise InvalidDescriptor.new("malformed", "#{what} is not unpadded base64url") unless B64URL.match?(part)

      bytes = Base64.urlsafe_decode64(part)
      raise InvalidDescriptor.new("malformed", "#{what} is not canonical base64url") unless Base64.urlsafe_encode64(bytes, padding: false) == part

      bytes
    rescue ArgumentError
      raise InvalidDescriptor.new("malformed", "#{what} is not base64url")
    end

    def json_part(part, what)
      text = b64decode(part, what).force_encoding(Encoding::UTF_8)
      # Invalid UTF-8 is malformed in every verifier (never repaired); NaN and Infinity are not
      # JSON (RFC 8259 section 6), which Ruby's parser refuses by default.
      raise InvalidDescriptor.new("malformed", "#{what} is not UTF-8") unless text.valid_encoding?

      value = JSON.parse(text)
      raise InvalidDescriptor.new("malformed", "#{what} is not a JSON object") unless value.is_a?(Hash)

      value
    rescue JSON::ParserError, EncodingError
      raise InvalidDescriptor.new("malformed", "#{what} is not JSON")
    end

    # A numeric claim as the specification allows it: a JSON number with an integer value from min
    # to max (exp, nbf, iat, epoch: 0 to 2^53 - 1; db.port: 1 to 65535). 1e400 parses to Infinity,
    # which must neither raise (a 500) nor mean "never expires"; a fraction, a negative number, a
    # string or true is refused the same way. 1.8e9 is an integer value, as in every JSON parser.
    def integer_claim?(value, min = 0, max = MAX_TIME)
      return value.between?(min, max) if value.is_a?(Integer)

      value.is_a?(Float) && value.finite? && value == value.floor && value.between?(min, max)
    end

    # HTTP GET for key sets (see Descriptor.http_get): no redirects, bounded in time and size.
    HTTP_GET = ->(url) { Descriptor.http_get(url) }

    # Verifies descriptors for one app.
    #
    # jwks:      a JWKS (Hash or JSON text) with the proxy's ES256 public keys
    # jwks_url:  the proxy's key set, e.g. http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json
    # keys_file: a file with a JWKS, PEM keys or "hs256:<secret>"
    # secrets:   HS256 secret(s), for proxies configured with HS256
    # issuer:    the proxy's deploymentId; audience: this app's descriptor.audience
    # leeway:    clock skew allowed on exp and nbf, 0 to 5 seconds
    # clock:     returns the current time in seconds (tests inject a fixed one)
    # jwks_timeout: bound of one key-set fetch, seconds (see RemoteKeySet)
    class Verifier
      attr_reader :issuer, :audience, :leeway, :remote

      def initialize(issuer:, audience:, jwks: nil, jwks_url: nil, keys_file: nil, secrets: nil, leeway: 5, clock: -> { Time.now.to_f },
                     jwks_max_age: 60, jwks_cooldown: 30, jwks_timeout: 2, fetch: nil)
        raise ArgumentError, "issuer and audience are required" if issuer.to_s.empty? || audience.to_s.empty?
        raise ArgumentError, "leeway must be between 0 and #{MAX_LEEWAY} seconds" unless leeway.between?(0, MAX_LEEWAY)
        raise ArgumentError, "give jwks:, jwks_url:, keys_file: or secrets:" if [jwks, jwks_url, keys_file, secrets].all?(&:nil?)

        @issuer = issuer
        @audience = audience
        @leeway = leeway
        @clock = clock
        @static = {}
        @static.merge!(Descriptor.keys_from_jwks(jwks)) if jwks
        @static.merge!(Descriptor.keys_from_file(keys_file)) if keys_file
        @static.merge!(Descriptor.keys_from_secrets(secrets)) if secrets
        fetch ||= ->(url) { Descriptor.http_get(url, timeout: jwks_timeout) }
        @remote = jwks_url && RemoteKeySet.new(jwks_url, fetch: fetch, clock: clock, max_age: jwks_max_age,
                                                         cooldown: jwks_cooldown, timeout: jwks_timeout)
      end

      # How many times the key set URL was fetched.
      def jwks_fetches
        @remote ? @remote.fetches : 0
      end

      # Verifies token for a request to request_host (the Host the proxy forwarded for, port
      # allowed); returns a frozen Result.
      def verify(token, request_host:)
        raise InvalidDescriptor.new("missing", "no descriptor") if token.nil?
        raise InvalidDescriptor.new("malformed", "empty value") unless token.is_a?(String) && !token.empty?
        # Intermediaries join a duplicated header with ", ": never pick one of the parts.
        raise InvalidDescriptor.new("comma", "value contains a comma (duplicated header)") if token.include?(",")
        raise InvalidDescriptor.new("too_large", "token over #{MAX_TOKEN_BYTES} bytes") if token.bytesize > MAX_TOKEN_BYTES

        parts = token.split(".", -1)
        raise InvalidDescriptor.new("malformed", "not a compact JWS (three parts)") unless parts.length == 3

        header = Descriptor.json_part(parts[0], "header")
        Descriptor.json_part(parts[1], "payload")
        # An empty signature (alg "none") is refused by its alg below.
        Descriptor.b64decode(parts[2], "signature") unless parts[2].empty?

        raise InvalidDescriptor.new("typ", "typ must be #{TYP}") unless header["typ"] == TYP

        forbidden = FORBIDDEN_HEADERS.find { |name| header.key?(name) }
        raise InvalidDescriptor.new("forbidden_header", "header parameter #{forbidden} is not accepted") if forbidden

        kid = header["kid"]
        key = kid.is_a?(String) ? key_for(kid) : nil
        raise InvalidDescriptor.new("unknown_kid", kid.is_a?(String) ? "unknown kid #{kid.inspect}" : "missing kid") unless key
        # The key decides the algorithm, never the token (RFC 8725 section 3.1). ruby-jwt compares
        # algorithms case-insensitively, so compare exactly here first.
        raise InvalidDescriptor.new("alg", "alg #{header['alg'].inspect} does not match the key's #{key.alg}") unless header["alg"] == key.alg

        check_claims(decode(token, key), request_host)
      end

      private

      def key_for(kid)
        @static[kid] || @remote&.[](kid)
      end

      def decode(token, key)
        # Times are checked in check_claims, with the injectable clock and the specification's rule.
        claims, = JWT.decode(token, key.key, true, algorithm: key.alg,
                                                    iss: issuer, verify_iss: true, aud: audience, verify_aud: true,
                                                    verify_expiration: false, verify_not_before: false, verify_iat: false)
        claims
      rescue JWT::VerificationError
        raise InvalidDescriptor.new("bad_signature", "bad signature")
      rescue JWT::InvalidIssuerError
        raise InvalidDescriptor.new("issuer", "wrong issuer")
      rescue JWT::InvalidAudError
        raise InvalidDescriptor.new("audience", "wrong audience")
      rescue JWT::DecodeError => e
        raise InvalidDescriptor.new("malformed", e.message)
      end

      def check_claims(c, request_host)
        raise InvalidDescriptor.new("version", "unsupported version #{c['v'].inspect}") unless c["v"].is_a?(Numeric) && c["v"] == 1
        raise InvalidDescriptor.new("issuer", "wrong issuer") unless c["iss"] == issuer
        # aud is one string in descriptor v1: an array is refused rather than searched.
        raise InvalidDescriptor.new("audience", "wrong audience") unless c["aud"].is_a?(String) && c["aud"] == audience

        bad = %w[exp nbf iat].find { |name| !Descriptor.integer_claim?(c[name]) }
        raise InvalidDescriptor.new("claims", "#{bad} must be an integer from 0 to 2^53-1") if bad
        unless c["sub"].is_a?(String) && c["host"].is_a?(String) && Descriptor.integer_claim?(c["epoch"])
          raise InvalidDescriptor.new("claims", "sub and host must be strings, epoch an integer from 0 to 2^53-1")
        end

        db = c["db"]
        unless db.is_a?(Hash) && db["name"].is_a?(String) && db["host"].is_a?(String) && Descriptor.integer_claim?(db["port"], 1, 65_535)
          raise InvalidDescriptor.new("claims", "malformed db claim")
        end

        now = @clock.call
        # RFC 7519 sections 4.1.4 and 4.1.5, with the leeway.
        raise InvalidDescriptor.new("expired", "expired (exp #{c['exp']})") if now >= c["exp"] + leeway
        raise InvalidDescriptor.new("not_yet_valid", "not yet valid (nbf #{c['nbf']})") if now < c["nbf"] - leeway
        unless c["host"] == Descriptor.canonical_host(request_host)
          raise InvalidDescriptor.new("host_mismatch", "host claim does not match the request host")
        end

        Result.new(
          tenant: c["sub"].freeze, host: c["host"].freeze,
          db: Database.new(name: db["name"].freeze, host: db["host"].freeze, port: db["port"].to_i).freeze,
          epoch: c["epoch"].to_i, issuer: c["iss"].freeze, audience: c["aud"].freeze,
          issued_at: c["iat"].to_i, expires_at: c["exp"].to_i
        ).freeze
      end
    end
  end
end
