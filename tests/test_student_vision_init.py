"""`build_student(vision_init=CLIP dir)`: the student's vision tower is the CLIP's, weight for
weight, as transformers computes it; bad directories are refused by name."""

import numpy as np
import pytest
import torch

import aotd_jax  # noqa: F401
import jax
import ml_collections
from aotd_jax import sharding
from aotd_jax.train import build
from configs.toyworld import distill as toy


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  from transformers import CLIPVisionConfig, CLIPVisionModel

  d = tmp_path_factory.mktemp("clip")
  torch.manual_seed(0)
  cfg = CLIPVisionConfig(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=48,
  )
  model = CLIPVisionModel(cfg).eval()
  model.save_pretrained(d)
  return d, model


def _cfg(**kw):
  return ml_collections.ConfigDict(
    {
      "hf_dir": "",
      "architecture": "LlavaNextVideoForConditionalGeneration",
      "init": dict(toy.TINY_LLAVA),
      **kw,
    }
  )


def test_vision_tower_is_the_clip_and_frozen(clip_dir):
  d, ref = clip_dir
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
  student = build.build_student(
    _cfg(vision_init=str(d), compute={"freeze_vision_tower": True}), mesh=mesh
  )
  assert student.config.vision_config.hidden_size == 48 and student.options.freeze_vision_tower
  pixels = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  ours = student.vision_tower.vision_model(pixels, output_hidden_states=True).hidden_states[-2]
  with torch.no_grad():
    theirs = ref(torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2].numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
  fresh = build.build_student(_cfg(), mesh=mesh)  # without vision_init: TINY_LLAVA's random tower
  assert fresh.config.vision_config.hidden_size == toy.TINY_LLAVA["vision_config"]["hidden_size"]


def test_bad_vision_init_is_named(tmp_path):
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=f"vision_init='{tmp_path}': no config.json"):
    build.build_student(_cfg(vision_init=str(tmp_path)), mesh=mesh)
  llama = ml_collections.ConfigDict(
    {
      "hf_dir": "",
      "architecture": "LlamaForCausalLM",
      "init": dict(toy.TINY_LLAMA),
      "vision_init": str(tmp_path),
    }
  )
  with pytest.raises(ValueError, match="LlamaForCausalLM has no vision tower"):
    build.build_student(llama, mesh=mesh)
