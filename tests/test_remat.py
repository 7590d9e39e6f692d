"""remat=True with a frozen vision tower (lnv7b's settings): the train step runs, recomputes
each layer (a `checkpoint` per layer in the jaxpr) and gives remat=False's loss and update."""

import jax
import numpy as np
import pytest

import aotd_jax  # noqa: F401
from aotd_jax import sharding
from aotd_jax.train import build
from aotd_jax.train.data import make_train_data
from aotd_jax.train.optim import make_optimizer, trainable_filter
from aotd_jax.train.trainer import Trainer
from configs.toyworld import distill as toy


def _step(arch: str, remat: bool):
  cfg = toy.get_config(arch)
  cfg.student.compute.remat = "full" if remat else "none"
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  batch = next(make_train_data(cfg, student))
  trainer = Trainer(
    student, make_optimizer(cfg.optim, 3), mesh=mesh, trainable=trainable_filter(True)
  )  # the vision tower frozen
  losses = [float(trainer.train_step(batch).loss) for _ in range(2)]
  leaves = jax.tree.leaves(trainer.params)
  return student, batch, losses, leaves


@pytest.mark.parametrize("arch", [pytest.param("llava", marks=pytest.mark.slow), "llama"])
def test_remat_with_frozen_tower_matches_no_remat(arch):
  _, _, want, want_leaves = _step(arch, False)
  student, batch, got, got_leaves = _step(arch, True)
  np.testing.assert_allclose(got, want, rtol=2e-5)
  # Recomputing a layer reorders float32 sums; Adam's m / sqrt(v) turns that rounding into up to
  # ~2.4e-6 on a weight whose gradient is near zero (seen on an AMX Xeon). 1e-5 is still 1 % of
  # an update (learning rate 3e-3 here): a wrong recomputation moves weights by far more.
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  # the recomputation is really there: one checkpoint per decoder layer (and per tower layer)
  text = str(
    jax.make_jaxpr(
      lambda ids: (
        student(input_ids=ids).logits
        if arch == "llama"
        else student(input_ids=ids, pixel_values_videos=batch["pixel_values_videos"]).logits
      )
    )(batch["input_ids"])
  )
  layers = (
    student.config.num_hidden_layers
    if arch == "llama"
    else (student.config.text_config.num_hidden_layers)
  )
  assert text.count("checkpoint[") + text.count("remat") >= layers


def test_remat_call_advances_dropout_rng_and_keeps_gradients():
  """UniVTG's encoder layer in train mode: under remat the dropout RNG advances as without it
  (a dropped write-back would reuse one mask forever), with the same loss and gradients."""
  import jax.numpy as jnp
  from flax import nnx
  from aotd_jax.layers.compute import ComputeOptions
  from aotd_jax.models import univtg
  from aotd_jax.models.remat import remat_call

  cfg = univtg.UniVTGConfig(hidden_dim=16, nheads=2, dim_feedforward=32, enc_layers=1)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  mask = jnp.ones((2, 5), bool)

  def loss(m, remat):
    call = lambda mod, s, k, p: mod(s, k, p)
    out = remat_call(call, m, x, mask, x) if remat else call(m, x, mask, x)
    return jnp.sum(out * w)  # not sum(out**2): a post-norm output's norm is ~constant

  values, grads = {}, {}
  for remat in (False, True):
    m = univtg.TransformerEncoderLayer(cfg, ComputeOptions(), rngs=nnx.Rngs(0, dropout=1))
    m.train()
    before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.RngCount))]
    values[remat], grads[remat] = nnx.value_and_grad(lambda m: loss(m, remat))(m)
    after = [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.RngCount))]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "RNG did not advance"
  assert float(values[True]) == pytest.approx(float(values[False]), rel=1e-6)  # same mask
  for a, b in zip(
    jax.tree.leaves(nnx.state(grads[False], nnx.Param)),
    jax.tree.leaves(nnx.state(grads[True], nnx.Param)),
  ):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()) + 1e-12)
