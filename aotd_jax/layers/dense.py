"""Dense layers: `nnx.Linear` with logical-axis partitioning and the matmul precision option.

Every model's linear layers come from `dense()`, so the matmul precision ("default", "high",
"highest") and the CPU decode kernel reach all of them the same way: `matmul()` is the
`dot_general` they use (`aotd_jax/kernels/amx_matmul.py`'s `PrecisionDot`: the AMX kernel for
"high"/"highest" float32 dots on one CPU device, the small-M kernel for a decode step's few rows,
XLA's dot with the precision passed on elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from aotd_jax.kernels.amx_matmul import PRECISIONS, PrecisionDot

if TYPE_CHECKING:
  from aotd_jax.layers.compute import ComputeOptions

__all__ = ["PRECISIONS", "dense", "dense_for", "matmul", "tokens"]

# Decode steps multiply at most this many rows: the small-M CPU kernel takes those matmuls (in
# tiles of 8 rows on AVX-512, each block of weights read once for all of them). 16, not 8: a
# CoT job's coalesced LLaVA generations run 16 rows, where XLA's dot cost 2.9x the kernel's 8
# rows (100 decode steps, 258 MB of weights: 4.95 s vs 2.91 s with the kernel, 1.63 s at 8 rows).
DECODE_ROWS = 16


def matmul(precision: str = "default", *, cpu_kernel_rows: int = 0) -> PrecisionDot:
  """A `dot_general` for dense layers and hand-written projections (tied LM heads).

  Args:
    precision: "default", "high" or "highest" (`jax.lax.Precision`); anything else raises a
      ValueError naming the value.
    cpu_kernel_rows: float32 matmuls of at most this many rows run through the small-M CPU
      kernel on one CPU device (0: never). Decoders pass `DECODE_ROWS` when their
      `cpu_kernels` option is on.
  """
  return PrecisionDot(cpu_kernel_rows, precision)


def dense(
  din: int,
  dout: int,
  axes: tuple[Any, Any],
  *,
  rngs: nnx.Rngs,
  bias: bool = True,
  dtype: Any = "float32",
  param_dtype: Any = "float32",
  precision: str = "default",
  cpu_kernel_rows: int = 0,
  kernel_init: Callable[..., jax.Array] = nnx.initializers.lecun_normal(),
) -> nnx.Linear:
  """`nnx.Linear(din, dout)` whose kernel carries logical axes `axes` (its bias `axes[1]`).

  Args:
    din, dout: input and output features.
    axes: logical axis names of the (din, dout) kernel (`aotd_jax.sharding`), e.g.
      ("embed", "mlp").
    bias: whether the layer has a bias (zeros at init).
    dtype, param_dtype: compute and parameter dtypes (names or dtypes).
    precision, cpu_kernel_rows: see `matmul`.
    kernel_init: the kernel's initializer (unpartitioned; `axes` is applied here).
  """
  return nnx.Linear(
    din,
    dout,
    use_bias=bias,
    dtype=jnp.dtype(dtype),
    param_dtype=jnp.dtype(param_dtype),
    dot_general=matmul(precision, cpu_kernel_rows=cpu_kernel_rows),
    kernel_init=nnx.with_partitioning(kernel_init, axes),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
    rngs=rngs,
  )


def dense_for(
  options: ComputeOptions,
  din: int,
  dout: int,
  axes: tuple[Any, Any],
  *,
  rngs: nnx.Rngs,
  bias: bool = True,
  decode_kernel: bool = False,
  kernel_init: Callable[..., jax.Array] = nnx.initializers.lecun_normal(),
) -> nnx.Linear:
  """`dense` with the dtypes and matmul precision of `options`; `decode_kernel` (a decoder's
  layers) lets a decode step's few rows take the small-M CPU kernel when `options.cpu_kernels`."""
  return dense(
    din,
    dout,
    axes,
    rngs=rngs,
    bias=bias,
    dtype=options.dtype,
    param_dtype=options.param_dtype,
    precision=options.matmul_precision,
    cpu_kernel_rows=options.cpu_kernel_rows if decode_kernel else 0,
    kernel_init=kernel_init,
  )


def tokens(x: jax.Array) -> jax.Array:
  """(..., features) -> (tokens, features) for the dense layers.

  A 2-D matmul keeps the weight gradient a plain (tokens x in)^T (tokens x out) dot; with 3-D
  activations XLA CPU contracts over (batch, length) and materialises a transposed copy of
  every activation gradient first (~20% of a CPU train step). Reshapes are free (bitcasts).
  """
  return x.reshape(-1, x.shape[-1])
