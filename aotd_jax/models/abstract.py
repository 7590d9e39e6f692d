"""A model's structure with shapes only (no memory, no random init), in time linear in its size.

`nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0)))` is quadratic in the number of weights
(Flax 0.12.8, JAX 0.10.2): each draw from an `nnx.Rngs` stream writes `count + 1` back through
`Variable.set_value`, which compares the new value's `.sharding` with the old one's; on a tracer
that raises an AttributeError whose message JAX builds by walking every equation traced so far
(`find_progenitors`). Building LLaVA-OneVision-7B (708 draws) took 7.7 s on the 2-core Xeon, 0.7 s
here. `abstract_model` keeps each stream's count on the host (a numpy counter, never traced): the
same keys (`fold_in(key, n)`), the same graph, variables, shapes and dtypes.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
from flax import nnx

M = TypeVar("M")


def host_count_rngs(seed: int) -> nnx.Rngs:
  """`nnx.Rngs(seed)` whose streams count in numpy (for building inside a trace: a draw then
  traces `fold_in` only, and the count's write-back never reaches a tracer)."""
  rngs = nnx.Rngs(seed)
  for stream in list(vars(rngs).values()):
    if isinstance(stream, nnx.RngStream):
      stream.count = nnx.RngCount(np.zeros(stream.count.shape, np.uint32), tag=stream.tag)
  return rngs


def abstract_model(build: Callable[[nnx.Rngs], M], seed: int = 0) -> M:
  """`nnx.eval_shape(lambda: build(nnx.Rngs(seed)))` without its quadratic cost (module
  docstring): `build` gets the Rngs and returns the model, whose arrays are
  `jax.ShapeDtypeStruct`s."""
  return nnx.eval_shape(lambda: build(host_count_rngs(seed)))
