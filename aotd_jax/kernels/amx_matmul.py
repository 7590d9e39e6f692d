"""float32 matmuls at `Precision.HIGH` (bf16x3) on Intel AMX: the train step's GEMMs on a CPU.

XLA's CPU backend runs float32 dots at full IEEE precision whatever `precision` says. On CPUs
with AMX-BF16 (Intel Sapphire Rapids and later) `amx_matmul.cc` computes them the way TPUs run
`jax.lax.Precision.HIGH`: each operand is split into two bfloat16 parts and three bfloat16
products are summed in float32. The relative error is ~5e-6 (a float32 GEMM's ~1e-6; one
bfloat16 pass ~2e-3), and the train step's matmuls run ~2x faster than XLA's float32 dots
(`benchmarks/matmul_cpu.py`, `benchmarks/RESULTS.md`).

`PrecisionDot` is a drop-in `dot_general` for `nnx.Linear` that takes the kernel for a float32
x (..., K) @ w (or @ w.T) when asked for `Precision.HIGH` on a single CPU device with AMX, and XLA's
`dot_general` otherwise (with the precision passed on, so GPUs and TPUs apply their own meaning
of it). Its gradients are the same kernel on the transposed operands, read in place.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from aotd_jax.kernels import build
from aotd_jax.kernels.small_m_matmul import SmallMDot

TARGET = "aotd_amx_matmul"
PRECISIONS = ("default", "high", "highest")


@functools.cache
def available() -> bool:
  """Whether the kernel is built and registered, this CPU has AMX-BF16 and the OS grants it."""
  lib = build.load_library("amx_matmul")
  if lib is None or not lib.AotdAmxSupported():
    return False
  return build.register("amx_matmul", "AotdAmxMatmul", TARGET)


def kernel_matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False,
                  transpose_b: bool = False) -> jax.Array:
  """op(a) @ op(b) by the kernel (op: transpose or not), float32 in and out, read in place; no
  gradient rule (see `amx_matmul`). Call `available()` first."""
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  out = jax.ShapeDtypeStruct((m, n), jnp.float32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
      a, b, transpose_a=transpose_a, transpose_b=transpose_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def amx_matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
  """x (M, K) @ w (K, N), or @ w.T for w (N, K) when `transpose_w`, float32 in and out, in bf16x3
  on AMX (call `available()` first). Gradients run the same kernel."""
  return kernel_matmul(x, w, transpose_b=transpose_w)


def _fwd(x, w, transpose_w):
  return kernel_matmul(x, w, transpose_b=transpose_w), (x, w)


def _bwd(transpose_w, res, g):
  x, w = res
  if transpose_w:  # y = x w^T: dx = g w, dw = g^T x
    return kernel_matmul(g, w), kernel_matmul(g, x, transpose_a=True)
  return kernel_matmul(g, w, transpose_b=True), kernel_matmul(x, g, transpose_a=True)


amx_matmul.defvjp(_fwd, _bwd)


def _wants_high(precision) -> bool:
  if isinstance(precision, tuple):
    return all(_wants_high(p) for p in precision)
  return precision in (jax.lax.Precision.HIGH, "high", "bfloat16_3x")


@dataclasses.dataclass(frozen=True)
class PrecisionDot(SmallMDot):
  """`dot_general` for dense layers: the small-M decode kernel, the AMX bf16x3 kernel for
  `Precision.HIGH`, else XLA's dot with the precision passed on.

  Attributes:
    max_rows: float32 matmuls of at most this many rows go to the small-M kernel (0: never).
    precision: "default", "high" or "highest", applied to every call (`nnx.Linear`'s own
      `precision` argument, when given, wins). With "default", `jax.default_matmul_precision`
      ("high" / "bfloat16_3x") applies as it does for XLA's dots.
  """
  precision: str = "default"

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(f"matmul precision {self.precision!r} is not one of {PRECISIONS}")

  def use_amx(self, lhs, rhs, dimension_numbers, precision, preferred_element_type=None,
              out_sharding=None) -> bool:
    """Whether this call takes the AMX kernel: Precision.HIGH, float32, lhs (..., K) contracted
    on its last dim with rhs (K, N) or (N, K), no batch dims, one CPU device with AMX."""
    (lc, rc), batch = dimension_numbers
    return (_wants_high(precision) and lhs.ndim >= 1 and rhs.ndim == 2
            and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) in ((0,), (1,)) and not any(batch)
            and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
            and preferred_element_type in (None, jnp.float32) and out_sharding is None
            and build.single_cpu_device() and available())

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
               out_sharding=None):
    if precision is None and self.precision != "default":
      precision = jax.lax.Precision(self.precision)
    if precision is None and _wants_high(jax.config.jax_default_matmul_precision):
      precision = jax.lax.Precision.HIGH  # `with jax.default_matmul_precision("high"):`
    if self.use_kernel(lhs, rhs, dimension_numbers, preferred_element_type, out_sharding):
      return super().__call__(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                              out_sharding)
    if self.use_amx(lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding):
      transpose_w = tuple(dimension_numbers[0][1]) == (1,)
      out = amx_matmul(lhs.reshape(-1, lhs.shape[-1]), rhs, transpose_w)
      return out.reshape(*lhs.shape[:-1], out.shape[-1])
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type,
                               out_sharding=out_sharding)
