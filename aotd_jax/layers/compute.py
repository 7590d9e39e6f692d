"""`ComputeOptions`: how a model computes, as opposed to what it is (its HF config).

A model's config holds transformers' fields (what `config.json` stores); how to run it
(dtypes, recomputation, attention implementation, matmul precision, CPU kernels, a frozen
vision tower) is one `ComputeOptions`, passed once to the top-level model's constructor and
handed down unchanged to every sub-module. Each layer reads the fields that apply to it: the
causal LM's attention reads `attention_impl` and `attention_block_size`, a vision tower's
bidirectional attention only `cpu_kernels`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from aotd_jax.layers import attention as attention_lib
from aotd_jax.layers.dense import DECODE_ROWS, PRECISIONS

# Remat policies by name: "none" (keep every activation), "full" (recompute each layer's
# activations in the backward pass) or the name of a `jax.checkpoint_policies` policy that
# takes no argument (which intermediates of a layer to keep).
_JAX_POLICIES = (
  "dots_saveable",
  "dots_with_no_batch_dims_saveable",
  "nothing_saveable",
  "everything_saveable",
  "checkpoint_dots",
  "checkpoint_dots_with_no_batch_dims",
)
REMAT_POLICIES = ("none", "full") + _JAX_POLICIES
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
  """How a model computes; none of it is in (or written to) `config.json`.

  Attributes:
    dtype: compute (activation) dtype: "float32", "bfloat16" or "float16".
    param_dtype: dtype of the parameters a model builds.
    remat: remat policy by name (`REMAT_POLICIES`): "none", "full" or a
      `jax.checkpoint_policies` name; applied per transformer layer.
    attention_impl: the causal LM's attention without a KV cache (`attention.IMPLEMENTATIONS`:
      "xla", "dot_product_attention", "causal", "cudnn", "pallas", "auto"); generation always
      uses the cache path. Bidirectional encoders keep XLA's / the CPU kernel's path.
    attention_block_size: "xla" causal attention cuts the queries into blocks of this many
      rows that skip the keys the causal mask hides (`causal_attention.py`); 0: one block.
    matmul_precision: precision of the dense layers' and LM heads' matmuls: "default", "high"
      or "highest" (`jax.lax.Precision`; `aotd_jax/kernels/README.md` for the CPU side).
    cpu_kernels: on a single CPU device, float32 decode-step matmuls and attention run through
      aotd_jax's C++ XLA FFI kernels (`aotd_jax/kernels/`); False: XLA's ops only.
    freeze_vision_tower: a Video-LLM's vision features are a constant for the backward pass
      (`stop_gradient` at the tower's output), and training leaves the tower's weights alone.
  """

  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "xla"
  attention_block_size: int = 64
  matmul_precision: str = "default"
  cpu_kernels: bool = True
  freeze_vision_tower: bool = False

  def __post_init__(self):
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if value not in DTYPES:
        raise ValueError(f"ComputeOptions: {name}={value!r} is not one of {DTYPES}")
    if not isinstance(self.remat, str) or self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"ComputeOptions: remat={self.remat!r} is not a remat policy name; use one "
        f"of {REMAT_POLICIES}"
      )
    attention_lib.check_implementation(self.attention_impl, "ComputeOptions")
    if self.matmul_precision not in PRECISIONS:
      raise ValueError(
        f"ComputeOptions: matmul_precision={self.matmul_precision!r} is not one of {PRECISIONS}"
      )
    if not isinstance(self.attention_block_size, int) or self.attention_block_size < 0:
      raise ValueError(
        f"ComputeOptions: attention_block_size={self.attention_block_size!r} must be an int >= 0"
      )
    for name in ("cpu_kernels", "freeze_vision_tower"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"ComputeOptions: {name}={getattr(self, name)!r} must be True or False")

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "compute") -> ComputeOptions:
    """`ComputeOptions(**values)` from a config section (a dict or ConfigDict), with an error
    naming `where` and the key for a key that is not an option."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"{where}: unknown compute option(s) {unknown}; known {sorted(known)}")
    try:
      return cls(**values)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e

  @property
  def remat_enabled(self) -> bool:
    return self.remat != "none"

  @property
  def cpu_kernel_rows(self) -> int:
    """Rows up to which a float32 matmul takes the small-M CPU kernel (0: never)."""
    return DECODE_ROWS if self.cpu_kernels else 0

  def checkpoint_policy(self) -> Callable[..., Any] | None:
    """The `jax.checkpoint` policy of `remat` (None for "full": save nothing)."""
    if self.remat in ("none", "full"):
      return None
    return getattr(jax.checkpoint_policies, self.remat)
