# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module TenantProxy
  # Client of the proxy's ops descriptor API (on the ops listener; enabled on the proxy by
  # ops.descriptorApi.tokens):
  #
  #   GET /v1/tenants/{slug}/descriptor  -> {"tenant","state","host","descriptor","expiresAt"}
  #   GET /v1/tenants?state=&after=&limit= -> {"tenants":[{"slug","state","host"}],"next"}
  #
  # Every request carries "Authorization: Bearer <token>". Redirects are not followed (the token
  # must only ever go to the configured URL). Errors are OpsApiError subclasses whose messages say
  # what to check, never the token.
  class OpsClient
    SLUG = /\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\z/.freeze

    # url, token: values or callables (read when first needed). timeout: seconds per step.
    def initialize(url:, token:, timeout: 5)
      @url = url
      @token = token
      @timeout = timeout
    end

    # The API's answer for one tenant (a Hash with "tenant", "state", "host", "descriptor").
    def descriptor(slug)
      raise ArgumentError, "invalid tenant slug #{slug.inspect}" unless SLUG.match?(slug.to_s)

      body = get("/v1/tenants/#{slug}/descriptor", slug: slug)
      unless body.is_a?(Hash) && %w[tenant state host descriptor].all? { |k| body[k].is_a?(String) }
        raise OpsApiInvalidAnswer, "tenant_proxy: the ops API's descriptor answer for #{slug} lacks tenant, state, host or descriptor"
      end

      body
    end

    # Yields every tenant ({"slug","state","host"}) in slug order, page by page; an Enumerator
    # without a block. state: "active", "suspended" or "maintenance" to list only those.
    def each_tenant(state: nil, limit: 500, &block)
      return enum_for(:each_tenant, state: state, limit: limit) unless block

      after = nil
      loop do
        query = { "state" => state, "after" => after, "limit" => limit }.compact
        page = get("/v1/tenants?#{URI.encode_www_form(query)}")
        list = page.is_a?(Hash) ? page["tenants"] : nil
        raise OpsApiInvalidAnswer, "tenant_proxy: the ops API's tenant list has no \"tenants\" array" unless list.is_a?(Array)

        list.each(&block)
        # A page may hold fewer tenants than the limit, even none, with more to come: only a
        # null "next" ends the list.
        break if page["next"].nil?
        raise OpsApiInvalidAnswer, "tenant_proxy: the ops API's tenant list does not advance (next #{page['next'].inspect})" if page["next"] == after

        after = page["next"]
      end
    end

    private

    def value(setting)
      setting.respond_to?(:call) ? setting.call : setting
    end

    def get(path, slug: nil)
      base = value(@url).to_s.chomp("/")
      headers = { "authorization" => "Bearer #{value(@token)}" }
      request(base, path, headers, slug)
    end

    def request(base, path, headers, slug)
      url = "#{base}#{path}"
      Descriptor.http_get(url, timeout: @timeout, headers: headers) do |response, body|
        return parse(body, url) if response.code == "200"

        raise error_for(response, body, base, slug)
      end
    rescue OpsApiError
      raise
    rescue StandardError => e
      raise OpsApiUnavailable, "tenant_proxy: the proxy's ops API at #{base} did not answer (#{e.class}: #{e.message}); " \
                               "check TENANT_DESCRIPTOR_API_URL and that the proxy's ops port is reachable from here"
    end

    def parse(body, url)
      JSON.parse(body)
    rescue JSON::ParserError
      raise OpsApiInvalidAnswer, "tenant_proxy: #{url} did not answer JSON"
    end

    def error_for(response, body, base, slug)
      code = begin
        JSON.parse(body).dig("error", "code")
      rescue StandardError
        nil
      end
      case response.code
      when "401"
        OpsApiRefused.new("tenant_proxy: the proxy's ops API at #{base} refused the token (#{code || 'HTTP 401'}); " \
                          "TENANT_DESCRIPTOR_API_TOKEN must be one of the proxy's ops.descriptorApi.tokens")
      when "404"
        if code == "TENANT_PROXY_ERR_TENANT_NOT_FOUND"
          UnknownTenant.new("tenant_proxy: the proxy's registry has no tenant #{slug.inspect}")
        elsif code == "TENANT_PROXY_ERR_OPS_API_DISABLED"
          OpsApiRefused.new("tenant_proxy: the ops descriptor API is not enabled on the proxy at #{base} " \
                            "(set TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS on the proxy)")
        else
          OpsApiRefused.new("tenant_proxy: #{base} has no ops descriptor API (HTTP 404); is TENANT_DESCRIPTOR_API_URL the proxy's ops listener?")
        end
      when "429"
        OpsApiRefused.new("tenant_proxy: the proxy's ops API at #{base} refuses this address for now after refused tokens (HTTP 429); " \
                          "check TENANT_DESCRIPTOR_API_TOKEN")
      else
        if response.is_a?(Net::HTTPRedirection)
          OpsApiRefused.new("tenant_proxy: the ops API at #{base} answered a redirect, which is not followed")
        else
          OpsApiUnavailable.new("tenant_proxy: the proxy's ops API at #{base} answered HTTP #{response.code}#{code ? " (#{code})" : ''}")
        end
      end
    end
  end
end
