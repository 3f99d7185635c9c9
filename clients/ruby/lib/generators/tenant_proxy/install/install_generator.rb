# frozen_string_literal: true

require "rails/generators"

module TenantProxy
  module Generators
    # rails generate tenant_proxy:install
    #
    # Writes config/initializers/tenant_proxy.rb (every setting commented: they are read on first
    # use, from config.tenant_proxy.* or TENANT_DESCRIPTOR_*), app/models/tenant_record.rb (the
    # abstract base class of the models in each tenant's database) and db/tenant_migrate/, then
    # prints a short note on what to do next.
    class InstallGenerator < ::Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)
      desc "Set up tenant-proxy: initializer, TenantRecord, db/tenant_migrate"

      def create_initializer
        template "initializer.rb", "config/initializers/tenant_proxy.rb"
      end

      def create_tenant_record
        template "tenant_record.rb", "app/models/tenant_record.rb"
      end

      def create_migrations_directory
        create_file "db/tenant_migrate/.keep", ""
      end

      def show_note
        readme "NOTE" if behavior == :invoke
      end
    end
  end
end
