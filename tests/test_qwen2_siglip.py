"""Qwen2 LM (the Llama decoder with q/k/v biases) and the SigLIP vision tower against
transformers' PyTorch `Qwen2ForCausalLM` / `SiglipVisionModel` on random tiny weights."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import aotd_jax  # noqa: F401
from aotd_jax import hf
from aotd_jax.hf.io import CheckpointError
from aotd_jax.models.qwen2 import Qwen2ForCausalLM
from aotd_jax.models.siglip import SiglipVisionModel

QWEN2 = dict(
  vocab_size=96,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  initializer_range=0.2,
  rope_parameters=dict(rope_type="default", rope_theta=1e6),
  bos_token_id=None,
  eos_token_id=2,
  pad_token_id=None,
)
SIGLIP = dict(
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=3,
  num_attention_heads=4,
  image_size=32,
  patch_size=8,
  vision_use_head=False,
)


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


def _hf_qwen2(path, **kw):
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**QWEN2, **kw})).eval()
  with torch.no_grad():  # transformers zero-initialises biases: make them count
    for layer in model.model.layers:
      for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        proj.bias.normal_(0, 0.5)
  model.save_pretrained(str(path))
  return model


def _batch(vocab=96, length=20, pads=(4, 0)):
  rng = np.random.RandomState(0)
  ids = rng.randint(3, vocab, (len(pads), length))
  mask = np.ones_like(ids)
  for row, p in enumerate(pads):
    mask[row, :p] = 0
  pos = np.where(mask > 0, np.cumsum(mask, -1) - 1, 1)
  return ids, mask, pos


def _torch_logits(model, ids, mask, pos):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
    ).logits.numpy()


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_logits_and_export_match_transformers(tmp_path, tied):
  ref = _hf_qwen2(tmp_path / "hf", tie_word_embeddings=tied)
  model = hf.from_pretrained(str(tmp_path / "hf"))
  assert isinstance(model, Qwen2ForCausalLM) and model.config.qkv_bias
  assert model.config.rope_theta == 1e6 and model.config.bos_token_id is None
  assert model.model.layers[0].self_attn.o_proj.bias is None
  ids, mask, pos = _batch()
  want = _torch_logits(ref, ids, mask, pos)
  real = mask > 0
  got = np.asarray(model(ids, mask).logits)
  assert np.abs(got - want)[real].max() < 1e-4
  hf.save_pretrained(model, str(tmp_path / "out"))
  exported = json.load(open(tmp_path / "out" / "config.json"))
  assert exported["model_type"] == "qwen2" and "qkv_bias" not in exported
  loaded, info = transformers.Qwen2ForCausalLM.from_pretrained(
    str(tmp_path / "out"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert np.abs(_torch_logits(loaded.eval(), ids, mask, pos) - want)[real].max() < 1e-5


def test_qwen2_refuses_sliding_window(tmp_path):
  _hf_qwen2(tmp_path)
  cfg = json.load(open(tmp_path / "config.json"))
  cfg["use_sliding_window"] = True
  json.dump(cfg, open(tmp_path / "config.json", "w"))
  with pytest.raises(CheckpointError, match="config.json: use_sliding_window=true"):
    hf.from_pretrained(str(tmp_path))


def _hf_siglip(path):
  torch.manual_seed(1)
  model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)).eval()
  model.save_pretrained(str(path))
  return model


def test_siglip_hidden_states_match_transformers_in_both_layouts(tmp_path):
  ref = _hf_siglip(tmp_path / "v5")
  pixels = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.tensor(pixels), output_hidden_states=True)
  # transformers 5 writes bare keys; 4.x wrote them under `vision_model.`
  tensors = load_file(str(tmp_path / "v5" / "model.safetensors"))
  assert "embeddings.patch_embedding.bias" in tensors
  os.makedirs(tmp_path / "v4")
  save_file(
    {f"vision_model.{k}": v for k, v in tensors.items()}, str(tmp_path / "v4" / "model.safetensors")
  )
  (tmp_path / "v4" / "config.json").write_text((tmp_path / "v5" / "config.json").read_text())
  for layout in ("v5", "v4"):
    model = hf.from_pretrained(str(tmp_path / layout))
    assert isinstance(model, SiglipVisionModel)
    out = model(pixels, output_hidden_states=True)
    assert len(out.hidden_states) == len(want.hidden_states) == SIGLIP["num_hidden_layers"] + 1
    for ours, theirs in zip(out.hidden_states, want.hidden_states):
      assert np.abs(np.asarray(ours) - theirs.numpy()).max() < 1e-4
    assert np.abs(np.asarray(out.last_hidden_state) - want.last_hidden_state.numpy()).max() < 1e-4
  hf.save_pretrained(model, str(tmp_path / "out"))
  loaded, info = transformers.SiglipVisionModel.from_pretrained(
    str(tmp_path / "out"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  with torch.no_grad():
    again = loaded.eval()(torch.tensor(pixels)).last_hidden_state.numpy()
  assert np.abs(again - want.last_hidden_state.numpy()).max() < 1e-5


def test_siglip_errors_are_named(tmp_path):
  _hf_siglip(tmp_path)
  cfg = json.load(open(tmp_path / "config.json"))
  cfg["vision_use_head"] = True
  json.dump(cfg, open(tmp_path / "config.json", "w"))
  with pytest.raises(CheckpointError, match="config.json: .*vision_use_head=True"):
    hf.from_pretrained(str(tmp_path))
  cfg["vision_use_head"] = False
  json.dump(cfg, open(tmp_path / "config.json", "w"))
  model = hf.from_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\)"):
    model(np.zeros((1, 3, 16, 16), np.float32))
