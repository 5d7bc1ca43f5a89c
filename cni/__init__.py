"""tabby cni package."""
