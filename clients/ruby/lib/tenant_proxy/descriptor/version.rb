# frozen_string_literal: true

require_relative "../version"

module TenantProxy
  module Descriptor
    # The gem's version (kept for code that read it here before the gem was renamed tenant_proxy).
    VERSION = TenantProxy::VERSION
  end
end
