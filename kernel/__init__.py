"""tabby kernel package."""
