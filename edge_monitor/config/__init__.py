"""The daemon's configuration: section models (sections) and the YAML loader (loader)."""
