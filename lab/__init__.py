"""tabby lab package."""
