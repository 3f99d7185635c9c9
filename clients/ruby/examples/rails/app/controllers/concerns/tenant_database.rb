# frozen_string_literal: true

# Include in ApplicationController: every action (and its view rendering) runs with TenantRecord
# connected to the database named by the request's verified tenant descriptor.
#
#   class ApplicationController < ActionController::Base
#     include TenantDatabase
#   end
module TenantDatabase
  extend ActiveSupport::Concern

  included do
    around_action :use_tenant_database
    helper_method :current_tenant if respond_to?(:helper_method)
  end

  private

  # The verified descriptor; TenantProxy::Descriptor::Middleware refused the request without one.
  def tenant_descriptor
    request.env.fetch(TenantProxy::Descriptor::Middleware::ENV_KEY)
  end

  def current_tenant
    tenant_descriptor.tenant
  end

  def use_tenant_database(&block)
    Rails.application.config.tenant_pools.with(tenant_descriptor, &block)
  end
end
