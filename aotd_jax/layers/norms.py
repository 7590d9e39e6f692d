"""Normalisation layers: RMSNorm (Llama family) and LayerNorm (CLIP, SigLIP, Qwen2-VL's vision
tower, UniVTG), with their parameters on the "norm" logical axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32, cast back, then scaled (transformers' `LlamaRMSNorm` order)."""

  def __init__(self, size: int, eps: float, param_dtype: Any = "float32"):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((size,), jnp.dtype(param_dtype)), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * h.astype(x.dtype)


def layer_norm(
  dim: int, eps: float, *, rngs: nnx.Rngs, dtype: Any = "float32", param_dtype: Any = "float32"
) -> nnx.LayerNorm:
  """`nnx.LayerNorm(dim)` (scale ones, bias zeros) with both parameters on the "norm" axis."""
  return nnx.LayerNorm(
    dim,
    epsilon=eps,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
    rngs=rngs,
  )
