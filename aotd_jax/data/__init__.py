"""aotd_jax.data."""
