# frozen_string_literal: true

module TenantProxy
  # Base of the errors this gem raises (besides the verifier's TenantProxy::Descriptor::Error).
  class Error < StandardError; end

  # Tenant data was reached with no tenant in effect: no verified descriptor for this request,
  # no TenantProxy.with_tenant block around this code. Never falls back to a default database.
  class NoTenant < Error; end

  # A setting the operation needs is missing or invalid; the message names both ways to set it.
  class ConfigurationError < Error; end

  # A descriptor older than one already seen for its tenant (its epoch is lower): the tenant's
  # database moved, and the old one must not be reopened.
  class StaleDescriptor < Error; end

  # The proxy's ops descriptor API (docs/rails.md, "Outside a request") could not be used.
  class OpsApiError < Error; end

  # The ops API did not answer (refused, timed out, 5xx, or not ready yet).
  class OpsApiUnavailable < OpsApiError; end

  # The ops API refused the token (401), or is not enabled on the proxy (404 OPS_API_DISABLED).
  class OpsApiRefused < OpsApiError; end

  # The proxy's registry has no tenant with this slug.
  class UnknownTenant < OpsApiError; end

  # The ops API answered something that is not what it must answer (bad JSON, or a descriptor
  # that fails verification or names another tenant).
  class OpsApiInvalidAnswer < OpsApiError; end
end
