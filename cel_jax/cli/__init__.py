"""The `cel-jax` command line."""
