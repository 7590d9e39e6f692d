"""CLIP towers: parity with transformers' PyTorch models on random tiny weights, export round trip."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp
from flax import nnx

from aotd_jax import hf
from aotd_jax.layers.compute import ComputeOptions
from aotd_jax.kernels import attention as attention_kernel
from aotd_jax.models import clip
from aotd_jax.models.options import with_options

TOL = 1e-4

VISION = dict(
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  image_size=32,
  patch_size=8,
  projection_dim=16,
)
TEXT = dict(
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=2,
  vocab_size=99,
  max_position_embeddings=12,
  projection_dim=16,
)


def _close(ours, theirs, what):
  ours, theirs = np.asarray(ours), theirs.detach().numpy()
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
  err = np.abs(ours - theirs).max()
  assert err < TOL, f"{what}: max abs err {err}"


def _tokens(rng, eos, batch=3, length=9):
  ids = rng.integers(3, 90, size=(batch, length))
  mask = np.ones_like(ids)
  for b, n in enumerate([length, 6, 4][:batch]):  # right padding, as CLIP's tokenizer does
    ids[b, n - 1] = eos
    ids[b, n:] = 1
    mask[b, n:] = 0
  return ids, mask


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.CLIPVisionConfig(**VISION, hidden_act="quick_gelu")
  model = transformers.CLIPVisionModel(cfg).eval()
  path = str(tmp_path_factory.mktemp("clip_vision"))
  model.save_pretrained(path)
  return path, model


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_vision_parity_every_hidden_state(tmp_path, hidden_act):
  torch.manual_seed(1)
  ref = transformers.CLIPVisionModel(
    transformers.CLIPVisionConfig(**VISION, hidden_act=hidden_act)
  ).eval()
  ref.save_pretrained(tmp_path)
  ours = hf.from_pretrained(str(tmp_path))
  assert isinstance(ours, clip.CLIPVisionModel)
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(x), output_hidden_states=True)
  got = ours(pixel_values=x, output_hidden_states=True)
  assert len(got.hidden_states) == len(want.hidden_states) == VISION["num_hidden_layers"] + 1
  for i, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
    _close(a, b, f"hidden_states[{i}]")
  _close(got.last_hidden_state, want.last_hidden_state, "last_hidden_state")
  _close(got.pooler_output, want.pooler_output, "pooler_output")


def test_vision_legacy_prefixed_keys_load(vision_dir, tmp_path):
  """Checkpoints written by transformers 4 prefix every key with `vision_model.`."""
  from safetensors.numpy import load_file, save_file

  path, ref = vision_dir
  tensors = load_file(os.path.join(path, "model.safetensors"))
  save_file(
    {f"vision_model.{k}": v for k, v in tensors.items()}, str(tmp_path / "model.safetensors")
  )
  with open(os.path.join(path, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
    g.write(f.read())
  ours = hf.from_pretrained(str(tmp_path))
  x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(x))
  _close(ours(x).pooler_output, want.pooler_output, "pooler_output (legacy keys)")


def test_vision_export_round_trip(vision_dir, tmp_path):
  path, ref = vision_dir
  ours = hf.from_pretrained(path)
  hf.save_pretrained(ours, str(tmp_path))
  back = transformers.CLIPVisionModel.from_pretrained(str(tmp_path)).eval()
  for (k, v), (k2, v2) in zip(sorted(ref.state_dict().items()), sorted(back.state_dict().items())):
    assert k == k2 and torch.equal(v, v2), f"{k} changed in the round trip"
  x = torch.randn(2, 3, 32, 32)
  with torch.no_grad():
    assert torch.equal(ref(pixel_values=x).pooler_output, back(pixel_values=x).pooler_output)


def test_vision_bad_pixel_shape(vision_dir):
  ours = hf.from_pretrained(vision_dir[0])
  with pytest.raises(
    ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\).*\(2, 32, 32, 3\)"
  ):
    ours(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="pixel_values"):
    ours(np.zeros((3, 32, 32), np.float32))


@pytest.mark.parametrize("cpu_kernels", [True, False])  # the C++ attention kernel / XLA's ops
@pytest.mark.parametrize("eos_token_id", [98, 2])  # 2 = legacy configs: pool at argmax(input_ids)
def test_clip_model_parity(tmp_path, eos_token_id, cpu_kernels, expect_kernel):
  torch.manual_seed(2)
  cfg = transformers.CLIPConfig(
    text_config=dict(**TEXT, eos_token_id=eos_token_id, bos_token_id=97, pad_token_id=1),
    vision_config=dict(**VISION),
    projection_dim=16,
  )
  ref = transformers.CLIPModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  ours = with_options(hf.from_pretrained(str(tmp_path)), cpu_kernels=cpu_kernels)
  assert isinstance(ours, clip.CLIPModel) and ours.vision_model.options.cpu_kernels == cpu_kernels
  rng = np.random.default_rng(3)
  ids, mask = _tokens(rng, eos_token_id)
  px = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(
      input_ids=torch.from_numpy(ids),
      attention_mask=torch.from_numpy(mask),
      pixel_values=torch.from_numpy(px),
      output_hidden_states=True,
    )
  with expect_kernel(attention_kernel, attention_kernel.TARGET_FWD, when=cpu_kernels):
    got = ours(input_ids=ids, attention_mask=mask, pixel_values=px, output_hidden_states=True)
  for i, (a, b) in enumerate(
    zip(got.text_model_output.hidden_states, want.text_model_output.hidden_states)
  ):
    _close(a, b, f"text hidden_states[{i}]")
  for i, (a, b) in enumerate(
    zip(got.vision_model_output.hidden_states, want.vision_model_output.hidden_states)
  ):
    _close(a, b, f"vision hidden_states[{i}]")
  _close(
    got.text_model_output.last_hidden_state, want.text_model_output.last_hidden_state, "text last"
  )
  # transformers 5 overwrites the sub-output's pooler_output with the projected one; ours keeps
  # the tower's pooled state, so project it to compare.
  _close(
    ours.text_projection(got.text_model_output.pooler_output),
    want.text_model_output.pooler_output,
    "text pooled",
  )
  for name in ("text_embeds", "image_embeds", "logits_per_image", "logits_per_text"):
    _close(getattr(got, name), getattr(want, name), name)
  with torch.no_grad():
    _close(
      ours.get_text_features(ids, mask),
      ref.get_text_features(
        input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
      ).pooler_output,
      "get_text_features",
    )
    _close(
      ours.get_image_features(px),
      ref.get_image_features(pixel_values=torch.from_numpy(px)).pooler_output,
      "get_image_features",
    )


def test_clip_model_export_round_trip(tmp_path):
  torch.manual_seed(4)
  cfg = transformers.CLIPConfig(
    text_config=dict(**TEXT, eos_token_id=98), vision_config=dict(**VISION), projection_dim=16
  )
  ref = transformers.CLIPModel(cfg).eval()
  ref.save_pretrained(tmp_path / "in")
  ours = hf.from_pretrained(str(tmp_path / "in"))
  hf.save_pretrained(ours, str(tmp_path / "out"))
  with open(tmp_path / "out" / "config.json") as f:
    assert json.load(f)["architectures"] == ["CLIPModel"]
  back = transformers.CLIPModel.from_pretrained(str(tmp_path / "out")).eval()
  ref_sd, back_sd = ref.state_dict(), back.state_dict()
  assert set(ref_sd) == set(back_sd)
  for k in ref_sd:
    assert torch.equal(ref_sd[k], back_sd[k]), f"{k} changed in the round trip"
  assert back.config.text_config.eos_token_id == 98


def test_text_errors(tmp_path):
  cfg = clip.CLIPTextConfig(**TEXT)
  # Shapes only: the checks run before any weight is used.
  model = nnx.eval_shape(lambda: clip.CLIPTextModel(cfg, rngs=nnx.Rngs(0)))
  ids = np.ones((2, 5), np.int32)
  with pytest.raises(
    ValueError, match=r"attention_mask shape \(2, 4\) does not match input_ids shape \(2, 5\)"
  ):
    model(ids, np.ones((2, 4), np.int32))
  with pytest.raises(ValueError, match="exceeds max_position_embeddings 12"):
    model(np.ones((1, 13), np.int32))
  with pytest.raises(ValueError, match="hidden_act='swish'"):
    nnx.eval_shape(
      lambda: clip.CLIPTextModel(
        clip.CLIPTextConfig(**{**TEXT, "hidden_act": "swish"}), rngs=nnx.Rngs(0)
      )
    )


@pytest.mark.slow  # more compilations of the model (bf16, remat); `make test` runs it
def test_bf16_remat_and_logical_axes():
  cfg = clip.CLIPVisionConfig(**{**VISION, "num_hidden_layers": 1})
  model = clip.CLIPVisionModel(
    cfg, options=ComputeOptions(dtype="bfloat16", remat="full"), rngs=nnx.Rngs(0)
  )
  x = jnp.ones((2, 3, 32, 32))

  def loss(m, x):
    out = m(x).pooler_output
    return jnp.mean(out.astype(jnp.float32) ** 2), out.dtype == jnp.bfloat16

  (_, is_bf16), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, x)
  assert bool(is_bf16)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  q = model.vision_model.encoder.layers[0].self_attn.q_proj.kernel
  assert q.get_metadata()["out_sharding"] == ("embed", "heads")
  assert model.vision_model.embeddings.class_embedding.get_metadata().get("out_sharding") == (
    "embed",
  )
