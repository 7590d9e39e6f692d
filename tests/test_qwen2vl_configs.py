"""Qwen2-VL as the distillation student: the toy config trains through the real trainer, the 7B
config is lnv7b's with only the student (and frames) replaced, the evaluation runs it with its
chat template and `<|video_pad|>` layout, and a launch.train export loads in transformers."""

import copy

import jax
import numpy as np
import pytest
from flax import nnx

from aotd_jax import hf, sharding
from aotd_jax.models import qwen2_vl
from aotd_jax.models.abstract import abstract_model
from aotd_jax.train import build
from aotd_jax.train.data import make_train_data
from aotd_jax.train.optim import make_optimizer, trainable_filter
from aotd_jax.train.trainer import Trainer
from configs.distill import lnv7b, qwen2vl7b
from configs.toyworld import distill as toy
from tests import test_eval_student
from tests.test_train import _export, _train

QWEN_TOKENS = [
  "<|im_start|>",
  "<|im_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|video_pad|>",
  "<|image_pad|>",
]


def test_toy_qwen2vl_student_learns_a_batch():
  """The toy student through the real trainer (frozen tower, M-RoPE from the ids under jit)."""
  cfg = toy.get_config("qwen2vl")
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  assert isinstance(student, qwen2_vl.Qwen2VLForConditionalGeneration)
  batch = next(make_train_data(cfg, student))
  assert batch["pixel_values_videos"].shape[-2:] == (16, 16)
  n_video = int((batch["input_ids"] == student.config.video_token_index).sum(1)[0])
  assert n_video == student.config.video_tokens(cfg.data.num_frames) == 2 * 2 * 2
  trainable = trainable_filter(cfg.student.compute.freeze_vision_tower)
  assert not any(
    "visual" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(student, trainable))
  )
  trainer = Trainer(student, make_optimizer(cfg.optim, 12), mesh=mesh, trainable=trainable)
  before = jax.tree.map(np.asarray, nnx.state(student.visual, nnx.Param))
  losses = [float(trainer.train_step(batch).loss) for _ in range(12)]
  assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
  after = jax.tree.map(np.asarray, nnx.state(trainer.model.visual, nnx.Param))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("target", ["h100x8", "tpu_v5p_128"])
def test_qwen2vl7b_replaces_only_the_student(target):
  base, c = lnv7b.get_config(target), qwen2vl7b.get_config(target)
  assert c.student.architecture == "Qwen2VLForConditionalGeneration"
  assert c.student.hf_dir == c.data.tokenizer == qwen2vl7b.HF_DIR
  compute = c.student.compute
  assert (
    compute.freeze_vision_tower and compute.remat == "full" and compute.attention_impl == "causal"
  )
  assert c.data.num_frames == 16 and c.data.seq_len == base.data.seq_len
  for key in ("mesh", "batch_size", "optim", "total_steps", "rationale_weight", "peak_flops"):
    assert c[key] == base[key], key
  assert c.data.datasets == base.data.datasets
  given = qwen2vl7b.get_config(f"{target},hf_dir=/elsewhere")
  assert given.student.hf_dir == given.data.tokenizer == "/elsewhere"


@pytest.mark.slow  # a big-config check
def test_qwen2vl7b_shapes_fit_the_sequences():
  config = qwen2_vl.qwen2_vl_7b_config()
  tokens = config.video_tokens(qwen2vl7b.NUM_FRAMES)
  assert tokens == 8 * 12 * 12 and tokens + 512 < lnv7b.get_config("h100x8").data.seq_len
  abstract = abstract_model(
    lambda rngs: qwen2_vl.Qwen2VLForConditionalGeneration(config, rngs=rngs)
  )
  n = sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert 8.2e9 < n < 8.35e9, n  # Qwen2-VL-7B-Instruct: 8.29B parameters


world = test_eval_student.world  # the toy-world fixture (clips, records, tokenizer)


@pytest.fixture(scope="module")
def qwen_world(world):
  from aotd_jax.hf import registry

  d, records, tok, _ = world
  tok = copy.deepcopy(tok)
  tok.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
  ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
  init = dict(
    toy.TINY_QWEN2VL,
    video_token_id=ids["<|video_pad|>"],
    image_token_id=ids["<|image_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"],
    vision_end_token_id=ids["<|vision_end|>"],
  )
  adapter = registry.adapter_for("Qwen2VLForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(init), rngs=nnx.Rngs(0))
  return d, records, tok, model


def test_student_evaluation_runs_a_qwen2vl_student(qwen_world):
  from aotd_jax.data import conversation
  from aotd_jax.eval import student as student_eval

  d, records, tok, model = qwen_world
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
  assert len(run.outputs) == 2
  assert tok.chat_template == conversation.QWEN2_VL_CHAT_TEMPLATE
  ids = student_eval.prompt_ids(
    tok, records[0], "answer", model.config.video_tokens(4), video_token=model.config.video_token
  )
  text = tok.decode(ids)
  assert text.count("<|video_pad|>") == 8
  assert (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|>" + "<|video_pad|>" * 8 + "<|vision_end|>" in text
  )
  assert text.endswith(conversation.ANSWER_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")
  # Closed-set scoring: right-padded rows through the jitted forward (M-RoPE from the ids).
  scored = student_eval.choose_by_likelihood(
    model, tok, records[:2], video_root=str(d / "videos"), num_frames=4, batch_size=2
  )
  assert len(scored.predictions) == 2


def test_training_sample_layout_with_the_chat_template(qwen_world):
  """The pipeline's tokenisation: media placeholder expanded to the clip's tokens, the reply
  (and only it) in the label mask."""
  from aotd_jax.data import conversation
  from aotd_jax.data.tokenize import TokenizeOptions, tokenize_sample

  _, records, tok, model = qwen_world
  conversation.use_student_chat_template(tok, "Qwen2VLForConditionalGeneration")
  r = records[0]
  options = TokenizeOptions(
    max_length=256,
    video_token=model.config.video_token,
    num_video_tokens=model.config.video_tokens(4),
  )
  out = tokenize_sample(
    tok, conversation.qa_user_text(r.question, r.choices), "(A) x", "qa", options
  )
  ids = np.asarray(out["input_ids"])
  assert int((ids == model.config.video_token_id).sum()) == 8
  start = int(np.flatnonzero(ids == model.config.video_token_id)[0])
  assert (
    ids[start - 1] == model.config.vision_start_token_id
    and ids[start + 8] == model.config.vision_end_token_id
  )
  assert tok.decode(ids[np.asarray(out["label_mask"]) > 0]).startswith("(A) x")


@pytest.mark.slow  # a launch.train subprocess and an export
def test_toy_qwen2vl_launch_train_exports_for_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  r = _train(
    tmp_path / "run", "--config.total_steps=2", "--config.checkpoint_every=2", arch="qwen2vl"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  _export(tmp_path / "run", tmp_path / "hf")
  loaded, info = transformers.Qwen2VLForConditionalGeneration.from_pretrained(
    str(tmp_path / "hf"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  again = hf.from_pretrained(str(tmp_path / "hf"))
  assert again.config.vision_config.image_size == 16


@pytest.mark.slow  # a launch.evaluate subprocess
def test_evaluate_cli_on_an_exported_qwen2vl_student(qwen_world, tmp_path):
  d, _, tok, model = qwen_world
  assert test_eval_student.evaluate_export(model, tok, d, tmp_path)["count"] == 2
