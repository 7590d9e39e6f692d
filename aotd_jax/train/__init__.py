"""aotd_jax.train."""
