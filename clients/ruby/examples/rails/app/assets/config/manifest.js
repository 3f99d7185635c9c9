// Sprockets manifest: this app has no assets, but assets:precompile must run without settings.
