"""Flax NNX architectures. No file I/O here: loading lives in `aotd_jax.hf`."""
