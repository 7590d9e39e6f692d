"""Grouped-query causal attention on the CPU, forward and backward, as XLA FFI kernels.

`aotd_jax/models/causal_attention.py` cuts the queries into blocks that meet only their visible
keys; XLA runs each block as a dozen small ops, and its batched dots on these shapes reach
~60 GFLOP/s, so attention took ~20 % of a CPU train step. `causal_attention.cc` computes the same
thing with one task per (batch, kv head) that keeps the head's keys, values and scores in cache:
the forward pass saves each row's log-sum-exp, the backward pass recomputes the probabilities
from it (`benchmarks/attention_cpu.py`, `benchmarks/RESULTS.md`).

Numbers match the jnp path to float32 rounding on every query that sees a key. A query that sees
none (a padding query) averages its block's keys in both, but gets no gradient here; such rows
are arbitrary in every path, and a loss that ignores them sends them no gradient anyway.

`use_kernel` says when the model takes it: float32 operands on one CPU device (no multi-device
`jax.set_mesh`) whose build has AVX-512 (F, BW, VL) and a C++ compiler. Otherwise the jnp path
runs, with the same numbers.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from aotd_jax.kernels import build

TARGET_FWD = "aotd_causal_attention_fwd"
TARGET_BWD = "aotd_causal_attention_bwd"


@functools.cache
def available() -> bool:
  """Whether the kernels are built and registered and this build has their AVX-512 code."""
  lib = build.load_library("causal_attention")
  if lib is None or not lib.AotdCausalAttentionSupported():
    return False
  return (build.register("causal_attention", "AotdCausalAttentionFwd", TARGET_FWD)
          and build.register("causal_attention", "AotdCausalAttentionBwd", TARGET_BWD))


def use_kernel(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> bool:
  """Whether `causal_attention` can run these operands here (see the module docstring)."""
  return (q.dtype == jnp.float32 and k.dtype == jnp.float32 and v.dtype == jnp.float32
          and mask.dtype == jnp.bool_ and build.single_cpu_device() and available())


def _forward(q, k, v, mask, block_size):
  b, length, kv, groups, d = q.shape
  out = jax.ShapeDtypeStruct((b, length, kv * groups * d), jnp.float32)
  lse = jax.ShapeDtypeStruct((b, kv, groups, length), jnp.float32)
  return jax.ffi.ffi_call(TARGET_FWD, (out, lse), vmap_method="sequential")(
      q, k, v, mask, block=block_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     block_size: int) -> jax.Array:
  """Grouped-query causal attention over blocks of `block_size` queries, by the kernel.

  Args:
    q: (B, L, kv_heads, groups, head_dim) float32 queries, RoPE applied.
    k, v: (B, L, kv_heads, head_dim) float32 keys and values.
    mask: (B, L, L) bool, True where query i may attend to key j; causal (False for j > i).
    block_size: queries per block; block t meets keys [0, (t + 1) * block_size).

  Returns:
    (B, L, kv_heads * groups * head_dim) outputs, heads in transformers' order. Differentiable
    in q, k and v. Call `use_kernel` first.
  """
  return _forward(q, k, v, mask, block_size)[0]


def _fwd(q, k, v, mask, block_size):
  out, lse = _forward(q, k, v, mask, block_size)
  return out, (q, k, v, mask, out, lse)


def _bwd(block_size, res, d_out):
  q, k, v, mask, out, lse = res
  shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)]
  dq, dk, dv = jax.ffi.ffi_call(TARGET_BWD, shapes, vmap_method="sequential")(
      q, k, v, mask, out, lse, d_out.astype(jnp.float32), block=block_size)
  return dq, dk, dv, None


causal_attention.defvjp(_fwd, _bwd)
