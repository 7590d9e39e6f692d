"""aotd_jax.eval."""
