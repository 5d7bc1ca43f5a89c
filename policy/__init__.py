"""tabby policy package."""
