# frozen_string_literal: true

require "rails/generators/active_record/migration/migration_generator"

module TenantProxy
  module Generators
    # rails generate tenant_proxy:migration CreateNotes title:string
    #
    # Rails' own migration generator, writing into the tenant migrations directory (the first of
    # config.tenant_proxy.migrations_paths, db/tenant_migrate by default).
    class MigrationGenerator < ::ActiveRecord::Generators::MigrationGenerator
      source_root ::ActiveRecord::Generators::MigrationGenerator.source_root
      desc "A migration for every tenant database (in db/tenant_migrate)"

      def self.base_name
        "tenant_proxy"
      end

      private

      def db_migrate_path
        Array(TenantProxy.settings[:migrations_paths]).first.to_s
      end
    end
  end
end
