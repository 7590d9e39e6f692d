"""LLaVA-OneVision as the distillation student: the toy config trains, the 7B config is lnv7b's
with only the student (and frames / sequence length) replaced and fits its sequences."""

import copy

import jax
import numpy as np
import pytest
from flax import nnx

from aotd_jax.models import llava_onevision as lov
from aotd_jax.models.abstract import abstract_model
from configs.distill import lnv7b, onevision7b
from configs.toyworld import distill as toy
from aotd_jax import sharding
from aotd_jax.train import build
from aotd_jax.train.data import make_train_data
from aotd_jax.train.optim import make_optimizer
from aotd_jax.train.trainer import Trainer
from tests import test_eval_student
from tests.test_train import _export, _train


def test_toy_onevision_student_learns_a_batch():
  """The toy student through the real trainer (frozen SigLIP tower): it fits a fixed batch."""
  cfg = toy.get_config("onevision")
  assert cfg.student.architecture == "LlavaOnevisionForConditionalGeneration"
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  assert isinstance(student, lov.LlavaOnevisionForConditionalGeneration)
  batch = next(make_train_data(cfg, student))
  n_video = int((batch["input_ids"] == student.config.video_token_index).sum(1)[0])
  assert n_video == student.config.video_tokens(cfg.data.num_frames) == 4 * 4 + 1
  trainer = Trainer(
    student,
    make_optimizer(cfg.optim, 12),
    mesh=mesh,
    trainable=lov.trainable_filter(student.options),
  )
  losses = [float(trainer.train_step(batch).loss) for _ in range(12)]
  assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow  # a launch.train subprocess and an export
def test_toy_onevision_launch_train_exports_for_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  r = _train(
    tmp_path / "run", "--config.total_steps=2", "--config.checkpoint_every=2", arch="onevision"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  _export(tmp_path / "run", tmp_path / "hf")
  loaded, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
    str(tmp_path / "hf"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_toy_config_names_a_bad_student():
  with pytest.raises(ValueError, match="arg 'qwen' not in"):
    toy.get_config("qwen")


@pytest.mark.parametrize("target", ["h100x8", "tpu_v5p_128"])
def test_onevision7b_replaces_only_the_student(target):
  base, c = lnv7b.get_config(target), onevision7b.get_config(target)
  assert c.student.architecture == "LlavaOnevisionForConditionalGeneration"
  assert c.student.hf_dir == c.data.tokenizer == onevision7b.HF_DIR
  compute = c.student.compute
  assert (
    compute.freeze_vision_tower and compute.remat == "full" and compute.attention_impl == "causal"
  )
  assert (c.data.num_frames, c.data.seq_len) == (32, 8192)
  for key in ("mesh", "batch_size", "optim", "total_steps", "rationale_weight", "peak_flops"):
    assert c[key] == base[key], key
  assert c.data.datasets == base.data.datasets


@pytest.mark.slow  # a big-config check
def test_onevision7b_shapes_fit_the_sequences():
  config = lov.onevision_7b_config()
  assert config.video_tokens(onevision7b.NUM_FRAMES) == 32 * 14 * 14 + 1 < onevision7b.SEQ_LEN
  abstract = abstract_model(
    lambda rngs: lov.LlavaOnevisionForConditionalGeneration(config, rngs=rngs)
  )
  n = sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert 7.9e9 < n < 8.2e9, n  # llava-onevision-qwen2-7b: 8.03B parameters


@pytest.mark.slow  # four tiny students built and stepped
@pytest.mark.parametrize("arch", ["llava", "onevision"])
def test_trainer_step_with_remat_and_a_frozen_tower(arch):
  """The 7B configs' setting (remat + frozen tower) through the trainer: the towers' remat once
  failed there ("Cannot mutate Param from a different trace level"); same loss as without."""
  cfg = toy.get_config(arch)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  losses = []
  for remat in ("none", "full"):
    cfg.student.compute.remat = remat
    student = build.build_student(cfg.student, mesh=mesh, seed=0)
    assert student.vision_tower.options.remat == remat
    batch = next(make_train_data(cfg, student))
    trainer = Trainer(
      student,
      make_optimizer(cfg.optim, 4),
      mesh=mesh,
      trainable=lov.trainable_filter(student.options),
    )
    losses.append([float(trainer.train_step(batch).loss) for _ in range(2)])
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


world = test_eval_student.world  # the toy-world fixture (clips, records, tokenizer)


@pytest.fixture(scope="module")
def onevision_world(world):
  from aotd_jax.hf import registry

  adapter = registry.adapter_for("LlavaOnevisionForConditionalGeneration")
  d, records, tok, _ = world
  tok = copy.deepcopy(tok)
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_ONEVISION)), rngs=nnx.Rngs(0))
  return d, records, tok, model


def test_student_evaluation_runs_a_onevision_student(onevision_world, monkeypatch):
  from aotd_jax.data import conversation, video_processing
  from aotd_jax.eval import student as student_eval

  d, records, tok, model = onevision_world
  seen = []
  real = video_processing.preprocess_video
  monkeypatch.setattr(
    video_processing,
    "preprocess_video",
    lambda *a, **k: seen.append(k.get("resize")) or real(*a, **k),
  )
  run = student_eval.run_student(
    model,
    tok,
    records[:2],
    mode="answer",
    video_root=str(d / "videos"),
    num_frames=4,
    batch_size=2,
    max_new_tokens=3,
  )
  assert len(run.outputs) == 2 and set(seen) == {"square"}
  assert tok.chat_template == conversation.ONEVISION_CHAT_TEMPLATE
  ids = student_eval.prompt_ids(tok, records[0], "answer", model.config.video_tokens(4))
  assert ids.count(tok.convert_tokens_to_ids("<video>")) == 4 * 4 + 1


@pytest.mark.slow  # a launch.evaluate subprocess
def test_evaluate_cli_on_an_exported_onevision_student(onevision_world, tmp_path):
  d, _, tok, model = onevision_world
  assert test_eval_student.evaluate_export(model, tok, d, tmp_path)["count"] == 2


def test_onevision7b_takes_lnv7b_options():
  c = onevision7b.get_config("h100x8,hf_dir=/models/ov,datasets=star")
  assert c.student.hf_dir == c.data.tokenizer == "/models/ov"
  assert list(c.data.datasets.keys()) == ["star"]
  assert c.student.architecture == "LlavaOnevisionForConditionalGeneration"
  with pytest.raises(ValueError, match="not in"):
    onevision7b.get_config("a100x8")
