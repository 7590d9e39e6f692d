"""Building blocks the models share: dense layers, attention, norms and rotary embeddings.

Models build from these and never import `aotd_jax.kernels`; the layers decide where a CPU
kernel, cuDNN or XLA's own ops run (`attention.attention`, `dense.dense`).
"""
