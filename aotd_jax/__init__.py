"""aotd_jax: Agent-of-Thoughts Distillation in JAX/Flax NNX.

Importing the package turns off Flax's eager variable sharding: the models annotate their
weights with *logical* axis names only, and `aotd_jax.sharding` maps those names to mesh
axes in one place (MaxText style). Without this, Flax would demand a mesh at construction.
"""

import os
import sys

if "flax" in sys.modules:
  import flax

  if hasattr(flax.config, "flax_always_shard_variable"):  # Flax >= 0.12 has eager sharding
    flax.config.update("flax_always_shard_variable", False)
else:
  # Flax reads the flag from the environment when it is imported. Setting it there instead of
  # importing Flax (and JAX) here keeps a process that needs only the data readers light: the
  # annotation parser's child process (aotd_jax/data/record_cache.py) starts in ~0.2 s, not ~2.
  os.environ["FLAX_ALWAYS_SHARD_VARIABLE"] = "false"

__version__ = "0.1.0"
