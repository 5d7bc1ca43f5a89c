"""tabby felix package."""
