"""The two loss normalisations against an independent reference: PyTorch's cross entropy with
the official release's labels (every non-pad token, `-100` on padding, shifted as transformers'
causal-LM loss does)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aotd_jax.train.losses import distill_loss

B, L, V = 3, 9, 11


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, L, V)).astype(np.float32)
  ids = rng.integers(0, V, size=(B, L)).astype(np.int32)
  lengths = np.array([9, 6, 4])
  attention = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  label = np.zeros((B, L), np.int32)
  rationale = np.zeros((B, L), np.int32)
  label[0, 7:9] = 1  # a QA sample: a two-token answer
  rationale[1, 2:6] = 1  # a CoT sample: a four-token rationale
  label[2, 3] = 1  # a QA sample, one token
  return logits, ids, attention, label, rationale


def _torch_official(logits, ids, attention, weights=None):
  labels = torch.tensor(ids, dtype=torch.long).masked_fill(torch.tensor(attention) == 0, -100)
  ce = torch.nn.functional.cross_entropy(
    torch.tensor(logits)[:, :-1].reshape(-1, V),
    labels[:, 1:].reshape(-1),
    ignore_index=-100,
    reduction="none",
  ).reshape(B, L - 1)
  valid = (labels[:, 1:] != -100).float()
  w = valid if weights is None else valid * torch.tensor(weights[:, 1:], dtype=torch.float32)
  return float((ce * w).sum() / valid.sum())


def test_sequence_with_lambda_one_is_the_official_loss():
  logits, ids, attention, label, rationale = _batch()
  out = distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.asarray(rationale),
    1.0,
    normalization="sequence",
    attention_mask=jnp.asarray(attention),
  )
  np.testing.assert_allclose(float(out.loss), _torch_official(logits, ids, attention), rtol=1e-5)


def test_sequence_weighs_rationale_tokens_by_lambda():
  logits, ids, attention, label, rationale = _batch(1)
  out = distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.asarray(rationale),
    0.5,
    normalization="sequence",
    attention_mask=jnp.asarray(attention),
  )
  weights = np.where(rationale == 1, 0.5, 1.0)
  np.testing.assert_allclose(
    float(out.loss), _torch_official(logits, ids, attention, weights), rtol=1e-5
  )


def test_per_part_is_two_means():
  logits, ids, attention, label, rationale = _batch(2)
  out = distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.asarray(rationale),
    0.5,
    normalization="per_part",
  )
  ce = (
    torch.nn.functional.cross_entropy(
      torch.tensor(logits)[:, :-1].reshape(-1, V),
      torch.tensor(ids, dtype=torch.long)[:, 1:].reshape(-1),
      reduction="none",
    )
    .reshape(B, L - 1)
    .numpy()
  )
  want_label = ce[label[:, 1:] == 1].mean()
  want_rationale = ce[rationale[:, 1:] == 1].mean()
  np.testing.assert_allclose(float(out.label_loss), want_label, rtol=1e-5)
  np.testing.assert_allclose(float(out.loss), want_label + 0.5 * want_rationale, rtol=1e-5)
  # the two normalisations differ on this batch (the prompt counts in "sequence")
  seq = distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.asarray(rationale),
    0.5,
    normalization="sequence",
    attention_mask=jnp.asarray(attention),
  )
  assert abs(float(seq.loss) - float(out.loss)) > 1e-3
  np.testing.assert_allclose(float(seq.label_loss), want_label, rtol=1e-5)


def test_bad_normalization_and_missing_mask_are_named():
  logits, ids, attention, label, rationale = _batch()
  with pytest.raises(ValueError, match="'tokens'"):
    distill_loss(
      jnp.asarray(logits),
      jnp.asarray(ids),
      jnp.asarray(label),
      jnp.asarray(rationale),
      normalization="tokens",
    )
  with pytest.raises(ValueError, match="attention_mask"):
    distill_loss(
      jnp.asarray(logits),
      jnp.asarray(ids),
      jnp.asarray(label),
      jnp.asarray(rationale),
      normalization="sequence",
    )


def test_trainer_step_uses_the_configured_normalization():
  """The train step's loss is the chosen normalisation of the student's own logits."""
  import jax

  import aotd_jax  # noqa: F401
  from aotd_jax import sharding
  from aotd_jax.train import build
  from aotd_jax.train.data import make_train_data
  from aotd_jax.train.optim import make_optimizer, trainable_filter
  from aotd_jax.train.trainer import Trainer, _model_inputs
  from configs.toyworld import distill as toy

  cfg = toy.get_config("llama")
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  batch = next(make_train_data(cfg, student))
  logits = student(**_model_inputs(student, {k: jnp.asarray(v) for k, v in batch.items()})).logits
  args = (
    logits,
    jnp.asarray(batch["input_ids"]),
    jnp.asarray(batch["label_mask"]),
    jnp.asarray(batch["rationale_mask"]),
    1.0,
  )
  want = {
    n: float(
      distill_loss(*args, normalization=n, attention_mask=jnp.asarray(batch["attention_mask"])).loss
    )
    for n in ("per_part", "sequence")
  }
  assert abs(want["per_part"] - want["sequence"]) > 1e-3
  for name, value in want.items():
    fresh = build.build_student(cfg.student, mesh=mesh, seed=0)
    trainer = Trainer(
      fresh,
      make_optimizer(cfg.optim, 2),
      mesh=mesh,
      trainable=trainable_filter(True),
      loss_normalization=name,
    )
    assert float(trainer.train_step(batch).loss) == pytest.approx(value, rel=1e-4)
  with pytest.raises(ValueError, match="loss_normalization='mean'"):
    Trainer(student, make_optimizer(cfg.optim, 2), mesh=mesh, loss_normalization="mean")
