"""tabby datastore package."""
