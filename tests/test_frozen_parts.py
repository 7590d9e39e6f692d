"""The 7B distillation configs freeze what docs/fidelity.md's "frozen parts" row says: the
official run's rule (every parameter named `vision_tower` or `image_newline`) for lnv7b,
onevision7b and qwen2vl7b, and the trainer's filter applies it to each student's parameters."""

import pathlib

import pytest
from flax import nnx

from aotd_jax.train.optim import trainable_filter

CONFIGS = ("lnv7b", "onevision7b", "qwen2vl7b")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", CONFIGS)
def test_real_configs_freeze_the_tower_and_image_newline(name):
  import importlib

  c = importlib.import_module(f"configs.distill.{name}").get_config("h100x8")
  assert c.student.freeze_image_newline is True
  assert c.student.compute.freeze_vision_tower is True


def test_the_doc_row_names_every_config():
  row = next(
    line
    for line in (ROOT / "docs" / "fidelity.md").read_text().splitlines()
    if line.startswith("| frozen parts |")
  )
  assert "official by default in lnv7b, onevision7b and qwen2vl7b" in row


def _names(model, flt) -> set[str]:
  return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, flt))}


@pytest.mark.parametrize(
  "architecture,init",
  [
    ("LlavaOnevisionForConditionalGeneration", "TINY_ONEVISION"),
    ("Qwen2VLForConditionalGeneration", "TINY_QWEN2VL"),
  ],
)
def test_filter_freezes_each_students_tower_and_newline(architecture, init):
  from aotd_jax.hf import api, registry
  from configs.toyworld import distill as toy

  adapter = registry.adapter_for(architecture)
  config = adapter.config_from_hf(dict(getattr(toy, init)))
  model = api.build_abstract(adapter, config, api.dtype_options("float32"))  # shapes only
  every = _names(model, nnx.Param)
  trained = _names(model, trainable_filter(True, freeze_image_newline=True))
  frozen = every - trained
  assert frozen and all(
    ("vision_tower" in n or "visual" in n or "image_newline" in n) for n in frozen
  )
  assert any("language_model" in n or "layers" in n for n in trained)
  if architecture.startswith("LlavaOnevision"):
    assert "image_newline" in every and "image_newline" in frozen
  else:  # Qwen2-VL has no newline: the rule changes nothing beyond the tower
    assert not any("image_newline" in n for n in every)
    assert trained == _names(model, trainable_filter(True))
