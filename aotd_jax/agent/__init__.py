"""aotd_jax.agent."""
