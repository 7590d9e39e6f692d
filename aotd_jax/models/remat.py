"""Rematerialisation of one layer call without writing state back into the module.

`nnx.remat(f)(module, ...)` traces `f` and, on the way out, writes the module's variables back
from the inner trace. Under `jax.value_and_grad` over the trainable parameters only, a frozen
part (the vision tower) holds variables of the outer `jit` trace, and that write-back fails
with `TraceContextError: Cannot mutate Param from a different trace level`. A forward pass
of a layer changes no parameter, so `remat_call` splits the layer into its graph and state,
runs `jax.checkpoint` over a pure function of the state, and never writes parameters back: the
same recomputation in the backward pass, for trainable and frozen layers alike.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def remat_call(
  fn: Callable[..., Any], module: nnx.Module, *args: Any, policy: Callable[..., Any] | None = None
) -> Any:
  """`fn(module, *args)` with the activations inside recomputed in the backward pass.

  Parameters are never written back. Other state the call changes (a dropout layer's RNG
  counter in train mode) comes back as an output and is written to `module` at the caller's
  trace level, where it lives: without that, every remat'd dropout would draw the same mask.
  The arguments may be arrays or pytrees of arrays (None leaves are fine). `policy` is a
  `jax.checkpoint_policies` policy (`ComputeOptions.checkpoint_policy()`); None saves nothing.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def pure(params, rest, *args):
    copy = nnx.merge(graphdef, params, rest)
    return fn(copy, *args), nnx.state(copy, nnx.Not(nnx.Param))

  out, new_rest = jax.checkpoint(pure, policy=policy)(params, rest, *args)
  if jax.tree.leaves(new_rest):
    nnx.update(module, new_rest)
  return out
