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
from configs.distill import toy


def _step(arch: str, remat: bool):
  cfg = toy.get_config(arch)
  cfg.student.remat = remat
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  batch = next(make_train_data(cfg, student))
  trainer = Trainer(student, make_optimizer(cfg.optim, 3), mesh=mesh,
                    trainable=trainable_filter(True))  # the vision tower frozen
  losses = [float(trainer.train_step(batch).loss) for _ in range(2)]
  leaves = jax.tree.leaves(trainer.params)
  return student, batch, losses, leaves


@pytest.mark.parametrize("arch", ["llava", "llama"])
def test_remat_with_frozen_tower_matches_no_remat(arch):
  _, _, want, want_leaves = _step(arch, False)
  student, batch, got, got_leaves = _step(arch, True)
  np.testing.assert_allclose(got, want, rtol=2e-5)
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # the recomputation is really there: one checkpoint per decoder layer (and per tower layer)
  text = str(jax.make_jaxpr(lambda ids: student(input_ids=ids).logits if arch == "llama" else
                            student(input_ids=ids, pixel_values_videos=batch["pixel_values_videos"]
                                    ).logits)(batch["input_ids"]))
  layers = student.config.num_hidden_layers if arch == "llama" else (
      student.config.text_config.num_hidden_layers)
  assert text.count("checkpoint[") + text.count("remat") >= layers
