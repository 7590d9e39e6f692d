"""`abstract_model` (aotd_jax/models/abstract.py): the structure `nnx.eval_shape` gives (graph,
variables, shapes, dtypes; dropout streams too), the same keys, and none of JAX's
tracer-provenance walks that made `nnx.eval_shape` quadratic in the number of weights."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from aotd_jax.hf import registry
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.models import univtg
from aotd_jax.models.abstract import abstract_model, host_count_rngs
from configs.toyworld import distill as toy


class KeepsItsRngs(nnx.Module):
  """A module that keeps the Rngs it was given (its streams' counts are model state)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.rngs = rngs


def _student(name):
  architecture, init = toy.STUDENTS[name]
  adapter = registry.adapter_for(architecture)
  config = adapter.config_from_hf(dict(init))
  return lambda rngs: adapter.model_class(config, rngs=rngs)


BUILDERS = {
  "llava": _student("llava"),
  "qwen2vl": _student("qwen2vl"),
  "univtg": lambda rngs: univtg.UniVTG(
    univtg.UniVTGConfig(hidden_dim=16, nheads=2, dim_feedforward=32, enc_layers=1),
    options=ComputeOptions(),
    rngs=rngs,
  ),
  "keeps_its_rngs": lambda rngs: KeepsItsRngs(rngs=rngs),
}


def _structure(model):
  """(path, variable type, shape, dtype) of every variable, and the graph's text with the
  addresses of its functions (activation lambdas, built afresh each time) dropped."""
  flat = [
    (path, type(var).__name__, var.get_value().shape, var.get_value().dtype)
    for path, var in nnx.to_flat_state(nnx.state(model))
  ]
  graph = " ".join(w for w in str(nnx.graphdef(model)).split() if not w.startswith("0x"))
  return flat, graph


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_same_structure_as_nnx_eval_shape(name):
  build = BUILDERS[name]
  ours = abstract_model(build, seed=3)
  theirs = nnx.eval_shape(lambda: build(nnx.Rngs(3)))
  ours_flat, ours_graph = _structure(ours)
  theirs_flat, theirs_graph = _structure(theirs)
  assert ours_flat == theirs_flat
  assert ours_graph == theirs_graph
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(nnx.state(ours)))


def test_streams_draw_the_same_keys():
  ours, theirs = host_count_rngs(5), nnx.Rngs(5)
  for _ in range(3):
    for stream in ("params", "dropout", "default"):
      a, b = getattr(ours, stream)(), getattr(theirs, stream)()
      np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_no_tracer_provenance_walks(monkeypatch):
  """Counts, not seconds: `nnx.eval_shape` walks the trace once per draw (quadratic in the
  weights), `abstract_model` never."""
  calls = []
  origin_msg = partial_eval.DynamicJaxprTracer._origin_msg

  def counted(self):
    calls.append(1)
    return origin_msg(self)

  monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", counted)
  build = BUILDERS["llava"]
  nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  assert len(calls) > 10  # the counter sees the walks this module avoids
  calls.clear()
  abstract_model(build)
  assert calls == []
