"""float32 matmuls at `Precision.HIGH` (bf16x3) and `HIGHEST` (bf16x6) on Intel AMX.

XLA's CPU backend runs float32 dots at full IEEE precision whatever `precision` says. On CPUs
with AMX-BF16 (Intel Sapphire Rapids and later) `amx_matmul.cc` computes them the way TPUs do,
summing bfloat16 products in float32:
- `Precision.HIGH` ("bf16_3x"): each operand is split into two bfloat16 parts and three
  products are summed. The relative error is ~5e-6 (a float32 GEMM's ~1e-6; one bfloat16 pass
  ~2e-3), and the train step's matmuls run ~2x faster than XLA's float32 dots.
- `Precision.HIGHEST` ("bf16_6x"): three parts (all 24 bits of the significand) and six
  products. The error is that of XLA's float32 dot (0.4-1.4e-6 on the train step's shapes), at
  ~1.15x its speed.
`benchmarks/matmul_cpu.py` and `benchmarks/RESULTS.md` have the figures.

`PrecisionDot` is a drop-in `dot_general` for `nnx.Linear` that takes the kernel for a float32
x (..., K) @ w (or @ w.T) when asked for `Precision.HIGH` or `HIGHEST` on a single CPU device
with AMX, and XLA's `dot_general` otherwise (with the precision passed on, so GPUs and TPUs
apply their own meaning of it). Its gradients are the same kernel on the transposed operands,
read in place.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def kernel_matmul(
  a: jax.Array, b: jax.Array, transpose_a: bool = False, transpose_b: bool = False, passes: int = 3
) -> jax.Array:
  """op(a) @ op(b) by the kernel (op: transpose or not), float32 in and out, read in place; no
  gradient rule (see `amx_matmul`). `passes`: 3 (bf16x3) or 6 (bf16x6). Call `available()`
  first."""
  if passes not in (3, 6):
    raise ValueError(f"passes must be 3 (bf16x3) or 6 (bf16x6), got {passes!r}")
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  out = jax.ShapeDtypeStruct((m, n), jnp.float32)
  return build.ffi_call(TARGET, out, vmap_method="sequential")(
    a, b, transpose_a=transpose_a, transpose_b=transpose_b, passes=np.int32(passes)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def amx_matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False, passes: int = 3) -> jax.Array:
  """x (M, K) @ w (K, N), or @ w.T for w (N, K) when `transpose_w`, float32 in and out, in bf16x3
  (`passes=3`) or bf16x6 (`passes=6`) on AMX (call `available()` first). Gradients run the same
  kernel with the same passes."""
  return kernel_matmul(x, w, transpose_b=transpose_w, passes=passes)


def _fwd(x, w, transpose_w, passes):
  return kernel_matmul(x, w, transpose_b=transpose_w, passes=passes), (x, w)


def _bwd(transpose_w, passes, res, g):
  x, w = res
  mm = functools.partial(kernel_matmul, passes=passes)
  if transpose_w:  # y = x w^T: dx = g w, dw = g^T x
    return mm(g, w), mm(g, x, transpose_a=True)
  return mm(g, w, transpose_b=True), mm(x, g, transpose_a=True)


amx_matmul.defvjp(_fwd, _bwd)


def kernel_passes(precision) -> int:
  """The kernel's bfloat16 passes for a `dot_general` precision: 3 for HIGH ("high",
  "bfloat16_3x"), 6 for HIGHEST ("highest", "float32"), 0 for anything else (XLA's dot). A pair
  of precisions takes the kernel only when both agree."""
  if isinstance(precision, tuple):
    passes = {kernel_passes(p) for p in precision}
    return passes.pop() if len(passes) == 1 else 0
  if precision in (jax.lax.Precision.HIGH, "high", "bfloat16_3x"):
    return 3
  if precision in (jax.lax.Precision.HIGHEST, "highest", "float32"):
    return 6
  return 0


@dataclasses.dataclass(frozen=True)
class PrecisionDot(SmallMDot):
  """`dot_general` for dense layers: the small-M decode kernel, the AMX kernel for
  `Precision.HIGH` (bf16x3) and `Precision.HIGHEST` (bf16x6), else XLA's dot with the precision
  passed on.

  Attributes:
    max_rows: float32 matmuls of at most this many rows go to the small-M kernel (0: never).
    precision: "default", "high" or "highest", applied to every call (`nnx.Linear`'s own
      `precision` argument, when given, wins). With "default", `jax.default_matmul_precision`
      ("high" / "bfloat16_3x", "highest" / "float32") applies as it does for XLA's dots.
  """

  precision: str = "default"

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(f"matmul precision {self.precision!r} is not one of {PRECISIONS}")

  def amx_passes(
    self, lhs, rhs, dimension_numbers, precision, preferred_element_type=None, out_sharding=None
  ) -> int:
    """The AMX kernel's passes for this call (0: not the kernel): Precision.HIGH (3) or HIGHEST
    (6), float32, lhs (..., K) contracted on its last dim with rhs (K, N) or (N, K), no batch
    dims, one CPU device with AMX."""
    (lc, rc), batch = dimension_numbers
    passes = kernel_passes(precision)
    fits = (
      passes
      and lhs.ndim >= 1
      and rhs.ndim == 2
      and tuple(lc) == (lhs.ndim - 1,)
      and tuple(rc) in ((0,), (1,))
      and not any(batch)
      and lhs.dtype == jnp.float32
      and rhs.dtype == jnp.float32
      and preferred_element_type in (None, jnp.float32)
      and out_sharding is None
      and build.single_cpu_device()
      and available()
    )
    return passes if fits else 0

  def __call__(
    self,
    lhs,
    rhs,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
  ):
    if precision is None and self.precision != "default":
      precision = jax.lax.Precision(self.precision)
    if precision is None:  # `with jax.default_matmul_precision("high"):` and the like
      precision = {3: jax.lax.Precision.HIGH, 6: jax.lax.Precision.HIGHEST}.get(
        kernel_passes(jax.config.jax_default_matmul_precision)
      )
    if self.use_kernel(lhs, rhs, dimension_numbers, preferred_element_type, out_sharding):
      return super().__call__(
        lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding
      )
    passes = self.amx_passes(
      lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding
    )
    if passes:
      transpose_w = tuple(dimension_numbers[0][1]) == (1,)
      out = amx_matmul(lhs.reshape(-1, lhs.shape[-1]), rhs, transpose_w, passes)
      return out.reshape(*lhs.shape[:-1], out.shape[-1])
    return jax.lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=out_sharding,
    )
