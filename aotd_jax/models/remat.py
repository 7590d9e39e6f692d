"""Rematerialisation of one layer call without writing state back into the module.

`nnx.remat(f)(module, ...)` traces `f` and, on the way out, writes the module's variables back
from the inner trace. Under `jax.value_and_grad` over the trainable parameters only, a frozen
part (the vision tower) holds variables of the outer `jit` trace, and that write-back fails
with `TraceContextError: Cannot mutate Param from a different trace level`. A forward pass
of a layer mutates nothing, so `remat_call` splits the layer into its graph and state, runs
`jax.checkpoint` over a pure function of the state, and never writes back: the same
recomputation in the backward pass, for trainable and frozen layers alike.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def remat_call(fn: Callable[..., Any], module: nnx.Module, *args: Any) -> Any:
  """`fn(module, *args)` with the activations inside recomputed in the backward pass.

  `fn` must not mutate `module` (a forward pass without caches or batch statistics); the
  arguments may be arrays or pytrees of arrays (None leaves are fine).
  """
  graphdef, state = nnx.split(module)

  def pure(state, *args):
    return fn(nnx.merge(graphdef, state), *args)

  return jax.checkpoint(pure)(state, *args)
