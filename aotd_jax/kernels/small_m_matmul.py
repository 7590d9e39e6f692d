"""x @ w for a few rows on CPU: the decode-step matmul, as an XLA FFI kernel.

A greedy decode step multiplies batch-many rows by every weight matrix of the model. XLA's CPU
dot runs that shape (M <= 8 rows) at ~12 % of the FMA peak; `small_m_matmul.cc` streams each
weight once over the XLA thread pool and runs the decode step's matmuls ~2x faster
(`benchmarks/llama_cpu.py`, `benchmarks/RESULTS.md`).

`SmallMDot` is a drop-in `dot_general` for `nnx.Linear`: it takes the kernel for a float32
(M, K) @ (K, N) with M <= `max_rows` on a single CPU device, and XLA's `dot_general` for
everything else (other backends, dtypes and shapes; a multi-device mesh set with
`jax.set_mesh`; no C++ compiler). Both give the same numbers to float32 rounding (the kernel
sums over K in order, XLA in blocks). Gradients are XLA dots.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from aotd_jax.kernels import build

TARGET = "aotd_small_m_matmul"


def available() -> bool:
  """Whether the kernel is compiled and registered with XLA for the CPU platform."""
  return build.register("small_m_matmul", "AotdSmallMMatmul", TARGET)


def _kernel_call(x: jax.Array, w: jax.Array) -> jax.Array:
  out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32)
  return build.ffi_call(TARGET, out, vmap_method="sequential")(x, w)


@jax.custom_vjp
def small_m_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (M, K) @ w (K, N) in float32 with the CPU kernel (call `available()` first)."""
  return _kernel_call(x, w)


def _fwd(x, w):
  return _kernel_call(x, w), (x, w)


def _bwd(res, g):
  x, w = res
  return jnp.dot(g, w.T), jnp.dot(x.T, g)


small_m_matmul.defvjp(_fwd, _bwd)


@dataclasses.dataclass(frozen=True)
class SmallMDot:
  """`jax.lax.dot_general` that sends float32 matmuls of at most `max_rows` rows to the kernel.

  Frozen (hashable, compared by value), so modules built with equal settings share jit caches.
  """

  max_rows: int = 8

  def use_kernel(
    self, lhs, rhs, dimension_numbers, preferred_element_type=None, out_sharding=None
  ) -> bool:
    """Whether this call takes the kernel (see the module docstring for the conditions)."""
    return (
      0 < lhs.shape[0] <= self.max_rows
      and lhs.ndim == 2
      and rhs.ndim == 2
      and tuple(map(tuple, dimension_numbers[0])) == ((1,), (0,))
      and not any(dimension_numbers[1])
      and lhs.dtype == jnp.float32
      and rhs.dtype == jnp.float32
      and preferred_element_type in (None, jnp.float32)
      and out_sharding is None
      and build.single_cpu_device()
      and available()
    )

  def __call__(
    self,
    lhs,
    rhs,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
  ):
    if self.use_kernel(lhs, rhs, dimension_numbers, preferred_element_type, out_sharding):
      return small_m_matmul(lhs, rhs)
    return jax.lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=out_sharding,
    )
