"""aotd_jax: Agent-of-Thoughts Distillation in JAX/Flax NNX.

Importing the package turns off Flax's eager variable sharding: the models annotate their
weights with *logical* axis names only, and `aotd_jax.sharding` maps those names to mesh
axes in one place (MaxText style). Without this, Flax would demand a mesh at construction.
"""

import flax

if hasattr(flax.config, "flax_always_shard_variable"):  # Flax >= 0.12 has eager sharding
  flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
