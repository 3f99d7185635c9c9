# frozen_string_literal: true

module TenantProxy
  module Descriptor
    VERSION = "0.1.0"
  end
end
