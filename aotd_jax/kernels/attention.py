"""Grouped-query attention with a boolean mask on the CPU, forward and backward, as XLA FFI kernels.

XLA runs attention as a dozen small ops per block of queries; its batched dots on these shapes
reach ~60 GFLOP/s on a CPU, and it materialises the (batch, heads, L, L) scores. `attention.cc`
computes the same thing with one task per (batch, kv head) that keeps the head's keys, values and
one block of scores in cache: the forward pass saves each query's log-sum-exp, the backward pass
recomputes the probabilities from it (`benchmarks/attention_cpu.py`, `benchmarks/RESULTS.md`).

Two modes, both with an arbitrary (B, L, L) mask, one (1, L, L) mask for the whole batch, or
none:
- `causal=True`: the query-block attention of `aotd_jax/layers/causal_attention.py` (Llama
  training and scoring): block t of `block_size` queries meets keys [0, (t + 1) * block_size), so
  the mask must be causal.
- `causal=False`: every query meets all keys (CLIP's towers, OWLv2's backbone).

Numbers match the jnp paths to float32 rounding on every query that sees a key. A query that
sees none (a padding query) averages the keys it meets in both, but gets no gradient here; such
rows are arbitrary in every path, and a loss that ignores them sends them no gradient anyway.

`use_kernel` says when the models take it: float32 operands on one CPU device (no multi-device
`jax.set_mesh`) whose build has AVX-512 (F, BW, VL), and a C++ compiler. Otherwise the jnp paths
run, with the same numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from aotd_jax.kernels import build

TARGET_FWD = "aotd_attention_fwd"
TARGET_BWD = "aotd_attention_bwd"


@functools.cache
def available() -> bool:
  """Whether the kernels are built and registered and this build has their AVX-512 code."""
  lib = build.load_library("attention")
  if lib is None or not lib.AotdAttentionSupported():
    return False
  return build.register("attention", "AotdAttentionFwd", TARGET_FWD) and build.register(
    "attention", "AotdAttentionBwd", TARGET_BWD
  )


def use_kernel(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> bool:
  """Whether `attention` can run these operands here (see the module docstring)."""
  return (
    q.dtype == jnp.float32
    and k.dtype == jnp.float32
    and v.dtype == jnp.float32
    and (mask is None or mask.dtype == jnp.bool_)
    and build.single_cpu_device()
    and available()
  )


def _mask_operand(mask):
  """The mask buffer and the `masked` attribute: no mask travels as a 1-element dummy."""
  return (jnp.zeros((1, 1, 1), bool), False) if mask is None else (mask, True)


def _forward(q, k, v, mask, block_size, causal):
  b, length, kv, groups, d = q.shape
  out = jax.ShapeDtypeStruct((b, length, kv * groups * d), jnp.float32)
  lse = jax.ShapeDtypeStruct((b, kv, groups, length), jnp.float32)
  mask, masked = _mask_operand(mask)
  return build.ffi_call(TARGET_FWD, (out, lse), vmap_method="sequential")(
    q, k, v, mask, block=block_size, causal=causal, masked=masked
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, block_size: int, causal: bool
) -> jax.Array:
  """Grouped-query attention over blocks of `block_size` queries, by the kernel.

  Args:
    q: (B, L, kv_heads, groups, head_dim) float32 queries (RoPE applied, not scaled); query head h
      is (h // groups, h % groups), transformers' grouping.
    k, v: (B, L, kv_heads, head_dim) float32 keys and values.
    mask: (B, L, L) bool, True where query i may attend to key j (causal when `causal`); or
      (1, L, L), shared by the batch; or None: every key.
    block_size: queries per block (>= 1).
    causal: block t meets keys [0, (t + 1) * block_size) only; False: all keys.

  Returns:
    (B, L, kv_heads * groups * head_dim) softmax(q k^T / sqrt(head_dim), masked) v, heads in
    transformers' order. Differentiable in q, k and v. Check `use_kernel` first.
  """
  return _forward(q, k, v, mask, block_size, causal)[0]


def _fwd(q, k, v, mask, block_size, causal):
  out, lse = _forward(q, k, v, mask, block_size, causal)
  return out, (q, k, v, mask, out, lse)


def _bwd(block_size, causal, res, d_out):
  q, k, v, mask, out, lse = res
  shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)]
  mask, masked = _mask_operand(mask)
  dq, dk, dv = build.ffi_call(TARGET_BWD, shapes, vmap_method="sequential")(
    q,
    k,
    v,
    mask,
    out,
    lse,
    d_out.astype(jnp.float32),
    block=block_size,
    causal=causal,
    masked=masked,
  )
  return dq, dk, dv, None


attention.defvjp(_fwd, _bwd)
