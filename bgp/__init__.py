"""tabby bgp package."""
