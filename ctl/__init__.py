"""tabby ctl package."""
