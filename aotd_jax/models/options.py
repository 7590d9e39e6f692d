"""A built model under other `ComputeOptions` (the same weights, every sub-module rebuilt)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models.abstract import abstract_model


def with_compute(model: nnx.Module, options: ComputeOptions) -> nnx.Module:
  """`model`'s weights under `options`: every sub-module is rebuilt, since each keeps the
  options it was built with (assigning `model.options` alone reaches none)."""
  if options == model.options:
    return model
  abstract = abstract_model(lambda rngs: type(model)(model.config, options=options, rngs=rngs))
  return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


def with_options(model: nnx.Module, **changes) -> nnx.Module:
  """`model` (same weights) with some compute options changed, e.g.
  `with_options(model, matmul_precision="high")`; a field that is not a `ComputeOptions` one
  raises a ValueError naming it."""
  return with_compute(
    model,
    ComputeOptions.from_mapping(
      {**dataclasses.asdict(model.options), **changes}, where="with_options"
    ),
  )
