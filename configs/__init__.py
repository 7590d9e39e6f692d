"""ml_collections configs, each exposing get_config(arg)."""
