# frozen_string_literal: true

module TenantProxy
  VERSION = "0.2.0"
end
