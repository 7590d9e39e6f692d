"""Causal attention over query blocks, with a hand-written backward pass (CPU training path).

The einsum path (`scores -> where -> softmax -> probs @ v`) computes and differentiates the full
L x L score matrix, half of which the causal mask throws away, and XLA CPU's autodiff of it
copies the score-sized tensors into transposed layouts for the key/value gradients. Here the
queries are cut into blocks of `block_size` rows: block i only meets the keys 0..(i+1)*block-1
(with 4 blocks, 62.5 % of the score matrix), every dot reads its operands in place, and the
backward pass uses the softmax identity dS = P * (dP - rowsum(dO * O)), which reads the
probabilities once. Numerics match the einsum path to float32 rounding on every query row
that sees at least one key; a fully masked row (a padding query) averages the values of its
block's keys instead of all keys: such rows are arbitrary in both paths.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from aotd_jax.kernels import attention as attention_kernel

# Dimension numbers on (batch, kv_head, rows, features) operands.
_QK = (((3,), (3,)), ((0, 1), (0, 1)))  # (b,k,r,d) x (b,k,s,d) -> (b,k,r,s)
_PV = (((3,), (2,)), ((0, 1), (0, 1)))  # (b,k,r,s) x (b,k,s,d) -> (b,k,r,d)
_TN = (((2,), (2,)), ((0, 1), (0, 1)))  # (b,k,r,s) x (b,k,r,d) -> (b,k,s,d)


def _key_end(i: int, block: int, length: int) -> int:
  return min((i + 1) * block, length)


def _block_mask(mask: jax.Array, i: int, block: int, end: int) -> jax.Array:
  return mask[:, None, None, i * block : (i + 1) * block, :end]  # (B, 1, 1, block, end)


def _probs(q_i, k, mask, i, groups):
  """Softmax probabilities (B, kv, groups*block, end) of query block i, in float32."""
  block = q_i.shape[2] // groups
  end = _key_end(i, block, k.shape[2])
  s = lax.dot_general(q_i, k[:, :, :end], _QK, preferred_element_type=jnp.float32)
  b, kv = s.shape[:2]
  s = s.reshape(b, kv, groups, block, end) * q_i.shape[-1] ** -0.5
  s = jnp.where(_block_mask(mask, i, block, end), s, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(s, axis=-1).reshape(b, kv, groups * block, end)


def _forward(qb, k, v, mask, groups):
  outs, probs = [], []
  for i in range(qb.shape[0]):
    p = _probs(qb[i], k, mask, i, groups).astype(qb.dtype)
    outs.append(lax.dot_general(p, v[:, :, : p.shape[-1]].astype(qb.dtype), _PV))
    probs.append(p)
  return jnp.stack(outs), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(qb, k, v, mask, groups):
  return _forward(qb, k, v, mask, groups)[0]


def _blocked_fwd(qb, k, v, mask, groups):
  out, probs = _forward(qb, k, v, mask, groups)
  return out, (qb, k, v, mask, out, probs)


def _blocked_bwd(groups, residuals, d_out):
  qb, k, v, mask, out, probs = residuals
  block = qb.shape[3] // groups
  scale = qb.shape[-1] ** -0.5
  f32 = jnp.float32
  # rowsum(dO * O) = rowsum(dP * P): the softmax backward without another pass over P.
  delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1)
  dq, dk, dv = [], jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
  for i, p in enumerate(probs):
    end = p.shape[-1]
    dp = lax.dot_general(d_out[i], v[:, :, :end].astype(qb.dtype), _QK, preferred_element_type=f32)
    b, kv, rows, _ = dp.shape
    ds = (p.astype(f32) * (dp - delta[i][..., None]) * scale).reshape(b, kv, groups, block, end)
    # Masked scores get no gradient (as through `where` in the einsum path): this matters only
    # on fully masked rows, whose probabilities are uniform rather than zero.
    ds = (
      jnp.where(_block_mask(mask, i, block, end), ds, 0.0)
      .reshape(b, kv, rows, end)
      .astype(qb.dtype)
    )
    dq.append(lax.dot_general(ds, k[:, :, :end].astype(qb.dtype), _PV))
    dk = dk.at[:, :, :end].add(lax.dot_general(ds, qb[i], _TN, preferred_element_type=f32))
    dv = dv.at[:, :, :end].add(lax.dot_general(p, d_out[i], _TN, preferred_element_type=f32))
  return jnp.stack(dq), dk.astype(k.dtype), dv.astype(v.dtype), None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_causal_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  mask: jax.Array,
  block_size: int,
  *,
  cpu_kernel: bool = True,
) -> jax.Array:
  """Grouped-query causal attention computed over blocks of `block_size` queries.

  Args:
    q: (B, L, kv_heads, groups, head_dim) queries, RoPE applied; query head h is
      (h // groups, h % groups), transformers' grouping.
    k, v: (B, L, kv_heads, head_dim) keys and values of the same L positions.
    mask: (B, L, L) boolean, True where query i may attend to key j. It must be causal
      (False for j > i), e.g. causal & key padding: keys past a block's last query are skipped.
    block_size: queries per block; L need not be a multiple (the last block is padded).
    cpu_kernel: on one CPU device, float32 inputs run through aotd_jax's C++ kernel
      (`aotd_jax/kernels/attention.py`: same numbers, ~3x faster fwd + bwd); False, or
      anywhere else: the jnp blocks below.

  Returns:
    (B, L, kv_heads * groups * head_dim) attention outputs, heads in transformers' order.
  """
  b, length, kv, groups, d = q.shape
  if k.shape != (b, length, kv, d) or v.shape != k.shape:
    raise ValueError(
      f"blocked_causal_attention: keys {k.shape} / values {v.shape} do not fit queries {q.shape}"
    )
  if mask.shape != (b, length, length):
    raise ValueError(
      f"blocked_causal_attention: mask has shape {mask.shape}, expected {(b, length, length)}"
    )
  if block_size < 1:
    raise ValueError(f"blocked_causal_attention: block_size must be >= 1, got {block_size}")
  if cpu_kernel and attention_kernel.use_kernel(q, k, v, mask):
    return attention_kernel.attention(q, k, v, mask, block_size, causal=True)
  blocks = -(-length // block_size)
  padded = blocks * block_size
  if padded != length:  # padding queries see no key and are cut from the output
    q = jnp.pad(q, ((0, 0), (0, padded - length), (0, 0), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, padded - length), (0, 0)))
  qb = q.reshape(b, blocks, block_size, kv, groups, d).transpose(1, 0, 3, 4, 2, 5)
  qb = qb.reshape(blocks, b, kv, groups * block_size, d)
  out = _blocked(qb, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, groups)
  out = out.reshape(blocks, b, kv, groups, block_size, d).transpose(1, 0, 4, 2, 3, 5)
  return out.reshape(b, padded, kv * groups * d)[:, :length]
