"""Projects built on the library: each one a folder that the core (`aotd_jax.{agent, train,
eval, models, hf, data}`) never imports; only launchers, configs and tests import a project."""
