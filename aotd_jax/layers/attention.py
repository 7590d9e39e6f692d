"""One attention function for every model: `attention(q, k, v, mask, implementation=...)`.

Implementations (a model config's `attention_impl`):
- "xla": XLA's ops. A causal mask with `block_size` > 0 takes the query-block path
  (`causal_attention.py`); a bidirectional one a masked softmax. With `cpu_kernels`, on one CPU
  device in float32, aotd_jax's C++ kernel (`aotd_jax/kernels/attention.py`) computes the same
  numbers instead. This is the models' default.
- "dot_product_attention": `jax.nn.dot_product_attention` with the full mask (cuDNN's flash
  attention on a GPU in half precision, XLA's fused path elsewhere).
- "causal": the same, causal only, without the padding mask (flash-attention friendly; exact
  for right-padded batches).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`; a GPU only.
- "pallas": JAX's Pallas flash attention for GPUs (`jax.experimental.pallas.ops.gpu.attention`,
  a Triton kernel); a GPU only. Like "causal", it applies no padding mask: causal attention, or
  (bidirectional) every key. Checked against the XLA path in Pallas' interpret mode on a CPU
  (`tests/test_layers.py`), not yet timed on a GPU.
- "auto": the CPU kernel where it applies (`cpu_kernels`, one CPU device, float32), cuDNN on a
  GPU in half precision, "xla" otherwise (`choose`).

A cache laid out head-major (`kv_head_major`, a decode step's keys (B, kv_heads, slots, d)) is
always read by XLA's ops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax.experimental.pallas.ops.gpu import attention as pallas_attention

from aotd_jax.kernels import attention as attention_kernel
from aotd_jax.layers.causal_attention import blocked_causal_attention

IMPLEMENTATIONS = ("xla", "dot_product_attention", "causal", "cudnn", "pallas", "auto")

# Queries per task step of the CPU kernel on bidirectional attention (it only tiles the work).
_KERNEL_BLOCK = 64
_HALF = (jnp.bfloat16, jnp.float16)


def check_implementation(implementation: str, where: str) -> None:
  """Raises a ValueError naming `where` when `implementation` is not one of IMPLEMENTATIONS."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"{where}: attention_impl={implementation!r} is not one of {IMPLEMENTATIONS}")


def choose(implementation: str, *, backend: str, dtype, cpu_kernel: bool) -> str:
  """The implementation "auto" (or any other) resolves to.

  Args:
    implementation: one of IMPLEMENTATIONS.
    backend: `jax.default_backend()`.
    dtype: the queries' dtype.
    cpu_kernel: whether the CPU kernel can run these operands (`cpu_kernels` is on and
      `aotd_jax.kernels.attention.use_kernel` holds).

  Returns:
    "xla" (which takes the CPU kernel where `cpu_kernel`) or the explicit choice ("cudnn",
    "pallas", "dot_product_attention", "causal").
  """
  check_implementation(implementation, "attention")
  if implementation != "auto":
    return implementation
  if cpu_kernel:
    return "xla"
  if backend == "gpu" and jnp.dtype(dtype) in _HALF:
    return "cudnn"
  return "xla"


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  mask: jax.Array | None = None,
  *,
  implementation: str = "xla",
  causal: bool = False,
  block_size: int = 0,
  cpu_kernels: bool = True,
  blocked_jnp: bool = True,
  kv_head_major: bool = False,
) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim), masked) v with grouped-query heads.

  Args:
    q: (B, L, heads, head_dim) queries (RoPE applied); query head h uses kv head
      h // (heads // kv_heads), transformers' grouping.
    k, v: (B, S, kv_heads, head_dim) keys and values, or (B, kv_heads, S, head_dim) with
      `kv_head_major`. They are cast to q's dtype.
    mask: (B or 1, L, S) bool, True where query i may see key j (a (B or 1, 1, L or 1, S) mask,
      transformers' layout with a head axis, is accepted too); None: every key.
    implementation: one of IMPLEMENTATIONS (see the module docstring).
    causal: the mask is causal (query i sees no key j > i, S == L): the query-block path and
      the CPU kernel's causal mode may skip the hidden keys.
    block_size: queries per block of the causal query-block path (0: one L x S block).
    cpu_kernels: on one CPU device, float32 attention runs through aotd_jax's C++ kernel.
    blocked_jnp: whether the query-block path may run on XLA's ops when the kernel cannot
      (it pays off in training, where it saves the backward pass's score copies; a prefill
      takes it only on the kernel).
    kv_head_major: k and v are (B, kv_heads, S, head_dim), a KV cache's layout.

  Returns:
    (B, L, heads * head_dim) outputs in q's dtype, heads in transformers' order.
  """
  b, l, h, d = q.shape
  kv = k.shape[1] if kv_head_major else k.shape[2]
  if h % kv:
    raise ValueError(f"attention: {h} query heads are not a multiple of {kv} kv heads")
  if mask is not None and mask.ndim == 4:
    mask = jnp.broadcast_to(mask, (mask.shape[0], 1, l, mask.shape[-1]))[:, 0]
  grouped = q.reshape(b, l, kv, h // kv, d)
  kernel_ok = cpu_kernels and not kv_head_major and attention_kernel.use_kernel(grouped, k, v, mask)
  chosen = choose(
    implementation, backend=jax.default_backend(), dtype=q.dtype, cpu_kernel=kernel_ok
  )
  if chosen != "xla":
    if kv_head_major:
      raise ValueError(f"attention: implementation {chosen!r} cannot read a head-major KV cache")
    if chosen == "pallas":
      if jax.default_backend() != "gpu":
        raise ValueError(
          f"attention: implementation 'pallas' needs a GPU; this backend is "
          f"{jax.default_backend()!r} (use 'auto' or 'xla')"
        )
      return pallas_flash(q, k, v, causal=causal)
    return _fused(q, k, v, mask, chosen)
  if causal and not kv_head_major and 0 < block_size < l and (blocked_jnp or kernel_ok):
    return blocked_causal_attention(
      grouped, k.astype(q.dtype), v.astype(q.dtype), mask, block_size, cpu_kernel=cpu_kernels
    )
  if not causal and kernel_ok:
    return attention_kernel.attention(grouped, k, v, mask, _KERNEL_BLOCK, causal=False)
  if causal or kv_head_major:
    return _grouped_einsum(grouped, k, v, mask, kv_head_major)
  return _bidirectional_einsum(q, k, v, mask)


def pallas_flash(
  q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, interpret: bool = False
) -> jax.Array:
  """Flash attention by Pallas' GPU kernel: causal, or every key; no padding mask.

  Grouped kv heads are repeated to the query heads (the kernel has no grouping), and L is padded
  to a multiple of the kernel's block (padded keys come after every real query, or are cut off
  by a segment id when not causal). `interpret`: Pallas' interpreter (any backend, slow; for
  tests). Shapes as `attention`'s; returns (B, L, heads * head_dim).
  """
  b, l, h, d = q.shape
  k, v = (jnp.repeat(t.astype(q.dtype), h // t.shape[2], axis=2) for t in (k, v))
  block = 64 if l > 32 else max(16, 1 << (l - 1).bit_length())
  padded = -(-l // block) * block
  segments = None
  if padded != l:
    q, k, v = (jnp.pad(t, ((0, 0), (0, padded - l), (0, 0), (0, 0))) for t in (q, k, v))
    if not causal:
      segments = jnp.broadcast_to((jnp.arange(padded) < l).astype(jnp.int32), (b, padded))
  sizes = pallas_attention.BlockSizes(
    block_q=block,
    block_k=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  out = pallas_attention.mha(
    q, k, v, segments, sm_scale=d**-0.5, causal=causal, block_sizes=sizes, interpret=interpret
  )
  return out[:, :l].reshape(b, l, h * d)


def _fused(q, k, v, mask, chosen: str) -> jax.Array:
  """`jax.nn.dot_product_attention` for "dot_product_attention", "causal" and "cudnn"."""
  b, l, h, d = q.shape
  if chosen == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError(
        f"attention: implementation 'cudnn' needs a GPU; this backend is "
        f"{jax.default_backend()!r} (use 'auto' or 'xla')"
      )
    impl = "cudnn"
  else:
    # cuDNN's flash attention on GPUs in half precision; XLA's fused path elsewhere.
    flash = jax.default_backend() == "gpu" and q.dtype in _HALF
    impl = "cudnn" if flash else None
  only_causal = chosen == "causal"
  out = jax.nn.dot_product_attention(
    q,
    k.astype(q.dtype),
    v.astype(q.dtype),
    mask=None if only_causal or mask is None else mask[:, None],
    is_causal=only_causal,
    implementation=impl,
  )
  return out.reshape(b, l, h * d)


def _grouped_einsum(q, k, v, mask, kv_head_major: bool) -> jax.Array:
  """Masked softmax with float32 scores; grouped heads read their shared kv head in place."""
  b, l, kv, g, d = q.shape
  kv_axes = "bksd" if kv_head_major else "bskd"
  scores = jnp.einsum(
    f"blkgd,{kv_axes}->bkgls", q, k.astype(q.dtype), preferred_element_type=jnp.float32
  ) * (d**-0.5)
  if mask is not None:
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  if kv_head_major and l == 1:
    # A decode step: each kv head's g query heads as the rows of one (g, slots) @ (slots, d)
    # matmul. On jax 0.10's XLA CPU the einsum below takes 1.5-2.5x longer where g > 1 (its
    # dot keeps g and l apart), and a broadcast multiply + reduce over the slots (this path
    # until 2c1466e) 10-30x longer where g = 1 (a YNNPACK fusion with the output projection);
    # the matmul matches the faster of the two at every shape measured (8 shapes, rows 1-16,
    # g 1-4, 132-512 slots, 2026-12-05): the local Llama's decode (g = 2) regains its speed.
    out = jnp.matmul(probs[:, :, :, 0], v.astype(q.dtype))  # (b, kv, g, d): l = 1 in place
    return out.reshape(b, l, kv * g * d)
  return jnp.einsum(f"bkgls,{kv_axes}->blkgd", probs, v.astype(q.dtype)).reshape(b, l, kv * g * d)


def _bidirectional_einsum(q, k, v, mask) -> jax.Array:
  """transformers' CLIP order: queries scaled first, scores in the operands' dtype, softmax in
  float32; a fully masked row stays uniform (the most negative float32, not -inf)."""
  b, l, h, d = q.shape
  kv = k.shape[2]
  if kv != h:
    k, v = (jnp.repeat(t, h // kv, axis=2) for t in (k, v))
  scores = jnp.einsum("bqhd,bkhd->bhqk", q * (d**-0.5), k.astype(q.dtype)).astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(q.dtype)).reshape(b, l, h * d)
