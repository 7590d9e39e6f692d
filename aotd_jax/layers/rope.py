"""Rotary position embeddings (RoPE) with the `rope_scaling` variants of Llama-family checkpoints.

The inverse frequencies follow transformers' `modeling_rope_utils` (`default`, `linear`,
`dynamic`, `llama3`), computed in float32 as there so that logits agree to ~1e-6. `dynamic`
(NTK) depends on the longest position in the call, so it is computed inside the jitted graph.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def rope_type(rope_scaling: Mapping[str, Any] | None) -> str:
  """The variant named by a `rope_scaling` dict (`rope_type`, or the legacy `type` key)."""
  if not rope_scaling:
    return "default"
  return rope_scaling.get("rope_type", rope_scaling.get("type", "default"))


def validate(rope_scaling: Mapping[str, Any] | None) -> None:
  """Raises a ValueError naming the variant or key when `rope_scaling` is not supported."""
  kind = rope_type(rope_scaling)
  if kind not in SUPPORTED_ROPE_TYPES:
    raise ValueError(
      f"rope_scaling: unsupported rope_type {kind!r}; supported: {SUPPORTED_ROPE_TYPES}"
    )
  needed = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
  }.get(kind, ())
  missing = [k for k in needed if k not in rope_scaling]
  if missing:
    raise ValueError(f"rope_scaling ({kind}): missing key(s) {missing}")


def _base_inv_freq(theta, dim: int):
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  return 1.0 / (theta**exponents)


def inv_frequencies(
  head_dim: int,
  rope_theta: float,
  rope_scaling: Mapping[str, Any] | None,
  max_position_embeddings: int,
  seq_len: jax.Array | None = None,
) -> jax.Array:
  """Float32 inverse frequencies (head_dim // 2,) for the configured variant.

  Args:
    seq_len: longest position + 1 of the current call; only `dynamic` uses it (traced is fine).
  """
  kind = rope_type(rope_scaling)
  if kind == "dynamic":
    factor = float(rope_scaling["factor"])
    max_pos = float(max_position_embeddings)
    n = jnp.maximum(jnp.asarray(max_pos if seq_len is None else seq_len, jnp.float32), max_pos)
    base = rope_theta * ((factor * n / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (base**exponents)
  inv = _base_inv_freq(np.float32(rope_theta), head_dim).astype(np.float32)
  if kind == "linear":
    inv = inv / np.float32(rope_scaling["factor"])
  elif kind == "llama3":
    factor = float(rope_scaling["factor"])
    low, high = float(rope_scaling["low_freq_factor"]), float(rope_scaling["high_freq_factor"])
    old_len = float(rope_scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    inv = np.where(medium, smoothed, scaled)
  return jnp.asarray(inv, jnp.float32)


def cos_sin(position_ids: jax.Array, inv_freq: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables (B, L, head_dim) for integer positions (B, L), in `dtype`."""
  freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x (B, L, heads, head_dim) with the half-split layout transformers uses."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
