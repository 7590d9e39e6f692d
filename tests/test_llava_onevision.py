"""LLaVA-OneVision student: parity with transformers' PyTorch model on random tiny weights
(videos, any-res images with the anyres_max cap, greedy generation), both HF key layouts, the
export transformers reloads, remat/bf16, mesh equivalence and the errors users hit."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax import hf, sharding
from aotd_jax.hf.io import CheckpointError, read_tensors
from fixtures.hf_layouts import to_current_layout
from aotd_jax.models import llava_onevision as lov
from tests.test_llava_next_video import (
  _jit_logits,
  _logits,
  _loss,
  _torch_logits,
  check_mesh_train_step,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VIDEO, IMAGE, VOCAB = 99, 98, 100
S = 35  # tile side in pixels: 5x5 patches of 7, so the 2x video resize takes 5 -> ceil(5/2) = 3
PINPOINTS = [[35, 70], [70, 35], [70, 70]]


@pytest.fixture(autouse=True)
def full_f32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield


def _hf_config(**kw):
  vision = transformers.SiglipVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=S,
    patch_size=7,
    vision_use_head=False,
  )
  text = transformers.Qwen2Config(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    eos_token_id=2,
    rope_parameters=dict(rope_type="default", rope_theta=1e6),
  )
  # anyres_max_2: a 2x2-tile image (10x10 patches > 2 tiles' worth) is resized, 1x2 is not.
  args = dict(
    image_token_index=IMAGE,
    video_token_index=VIDEO,
    image_grid_pinpoints=PINPOINTS,
    vision_aspect_ratio="anyres_max_2",
  )
  args.update(kw)
  return transformers.LlavaOnevisionConfig(
    vision_config=vision.to_dict(), text_config=text.to_dict(), **args
  )


def _save_hf(path, seed=0, **kw):
  torch.manual_seed(seed)
  model = transformers.LlavaOnevisionForConditionalGeneration(_hf_config(**kw)).eval()
  with torch.no_grad():  # biases start at zero: make every weight count
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  model.save_pretrained(path)
  return model


def _video_batch(config, rng, frames=3, batch=2):
  n = config.video_tokens(frames)
  ids = np.concatenate(
    [rng.integers(3, 90, (batch, 5)), np.full((batch, n), VIDEO), rng.integers(3, 90, (batch, 4))],
    1,
  )
  mask = np.ones_like(ids)
  mask[-1, :2] = 0  # left padding
  videos = rng.standard_normal((batch, frames, 3, S, S)).astype(np.float32)
  return ids, mask, videos


def _image_batch(config, rng, sizes=((40, 70), (80, 75))):
  """Random tiles (images, max tiles, 3, S, S) for images of `sizes` (H, W)."""
  rows = [
    np.concatenate([[5, 6], np.full(config.image_tokens(s), IMAGE), [7, 8, 9]]) for s in sizes
  ]
  width = max(map(len, rows))
  ids = np.stack([np.pad(r, (width - len(r), 0)) for r in rows])
  mask = np.stack([np.pad(np.ones(len(r), np.int64), (width - len(r), 0)) for r in rows])
  pixels = rng.standard_normal((len(sizes), 5, 3, S, S)).astype(np.float32)
  return ids, mask, dict(pixel_values=pixels, image_sizes=np.asarray(sizes))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("onevision"))
  ref = _save_hf(path)
  return path, ref, hf.from_pretrained(path)


# ------------------------------------------------------------------------------------- parity


def test_config_and_token_counts(pair):
  _, ref, model = pair
  cfg = model.config
  assert isinstance(model, lov.LlavaOnevisionForConditionalGeneration)
  assert cfg.text_config.qkv_bias and cfg.text_config.rope_theta == 1e6
  assert cfg.vision_feature_select_strategy == "full" and cfg.vision_feature_layer == -1
  assert cfg.video_tokens_per_frame() == 9 and cfg.video_tokens(3) == 28
  # The counts are what transformers' model produces (its masked_scatter checks them too).
  rng = np.random.default_rng(0)
  with torch.no_grad():
    feats = ref.model.get_video_features(
      torch.tensor(rng.standard_normal((1, 3, 3, S, S), np.float32))
    )
    assert feats.pooler_output.shape[1] == cfg.video_tokens(3)
    for size in ((40, 70), (80, 75), (70, 30), (35, 35)):
      _, _, batch = _image_batch(cfg, rng, sizes=(size,))
      got = ref.model.get_image_features(
        torch.tensor(batch["pixel_values"]), torch.tensor(batch["image_sizes"])
      ).pooler_output
      assert got[0].shape[0] == cfg.image_tokens(size), size


@pytest.mark.parametrize("layer", [-1, [0, -2]])
def test_video_logits_match_transformers(pair, tmp_path, layer):
  if layer == -1:
    _, ref, model = pair
  else:
    ref = _save_hf(str(tmp_path), seed=1, vision_feature_layer=layer)
    model = hf.from_pretrained(str(tmp_path))
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(1))
  want = _torch_logits(ref, ids, mask, pixel_values_videos=videos)
  got = _logits(model, ids, mask, pixel_values_videos=videos)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_image_logits_match_transformers(pair):
  # (40, 70): 1x2 tiles, no resize; (80, 75): 2x2 tiles, the anyres_max cap resizes the grid.
  _, ref, model = pair
  ids, mask, batch = _image_batch(model.config, np.random.default_rng(2))
  want = _torch_logits(ref, ids, mask, **batch)
  got = _logits(model, ids, mask, **batch)
  assert np.abs(got - want)[mask > 0].max() < 1e-4


def test_greedy_generation_with_video_matches_transformers(pair):
  _, ref, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(5))
  out = lov.generate(
    model, ids, mask, pixel_values_videos=videos, max_new_tokens=8, eos_token_id=-1, pad_token_id=0
  )
  with torch.no_grad():
    want = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      pixel_values_videos=torch.tensor(videos),
      max_new_tokens=8,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    ).numpy()[:, ids.shape[1] :]
  assert len(np.unique(want)) > 3  # a sequence that exercises the KV cache, not one token
  np.testing.assert_array_equal(np.asarray(out.sequences), want)


# ------------------------------------------------------------------------------------ HF I/O


def test_reads_both_key_layouts_and_exports_for_transformers(pair, tmp_path):
  path, ref, model = pair
  tensors, _ = read_tensors(path)
  # transformers 5 writes the released checkpoints' older layout: language_model.model.*
  assert "language_model.lm_head.weight" in tensors and "image_newline" in tensors
  hf.save_pretrained(model, str(tmp_path / "out"))  # the released checkpoints' layout
  exported, _ = read_tensors(str(tmp_path / "out"))
  released = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) for k in tensors}
  assert set(exported) == released
  assert "language_model.model.layers.0.self_attn.q_proj.bias" in exported
  current = to_current_layout(str(tmp_path / "out"), str(tmp_path / "current"))
  assert "model.language_model.layers.0.self_attn.q_proj.bias" in current
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(7))
  ours = _logits(model, ids, mask, pixel_values_videos=videos)
  for folder in ("out", "current"):  # both layouts read back
    again = hf.from_pretrained(str(tmp_path / folder))
    np.testing.assert_allclose(
      _logits(again, ids, mask, pixel_values_videos=videos), ours, atol=1e-6
    )
  loaded, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
    str(tmp_path / "out"), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  want = _torch_logits(ref, ids, mask, pixel_values_videos=videos)
  theirs = _torch_logits(loaded.eval(), ids, mask, pixel_values_videos=videos)
  assert np.abs(theirs - want).max() < 1e-5
  assert np.abs(ours - theirs)[mask > 0].max() < 1e-4


def test_bad_checkpoints_are_named(pair, tmp_path):
  path, _, _ = pair
  cfg = json.load(open(os.path.join(path, "config.json")))
  os.makedirs(tmp_path / "bad")
  for key, value, message in (
    (
      "vision_aspect_ratio",
      "anyres_9",
      "vision_aspect_ratio='anyres_9': expected 'anyres_max_<N>'",
    ),
    (
      "text_config",
      {**cfg["text_config"], "model_type": "llama"},
      "text_config.model_type 'llama'",
    ),
    ("vision_config", {**cfg["vision_config"], "vision_use_head": True}, "vision_use_head=True"),
  ):
    json.dump({**cfg, key: value}, open(tmp_path / "bad" / "config.json", "w"))
    with pytest.raises(CheckpointError, match=message):
      hf.from_pretrained(str(tmp_path / "bad"))


def test_mismatched_video_tokens_are_reported(pair):
  _, _, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(10))
  short = ids[:, 1:]
  short[:, 4] = 7  # drop one video token per row
  with pytest.raises(
    ValueError,
    match=r"input_ids hold 54 video tokens .* give 56 features "
    r"\(2 clip\(s\) x 3 frames x 9 tokens per frame \+ 1 per clip\)",
  ):
    model(short, mask[:, 1:], pixel_values_videos=videos)
  default = nnx.clone(model)
  default.config = dataclasses.replace(model.config, vision_feature_select_strategy="default")
  with pytest.raises(
    ValueError, match="got 24 .* SigLIP tower, which has no class token: use 'full'"
  ):
    default.get_video_features(videos[:1])


# ------------------------------------------------------------------------ training machinery


@pytest.mark.slow  # more compilations of the model (bf16, remat); `make test` runs it
def test_bf16_remat_and_frozen_tower(pair):
  path, _, model = pair
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(15))
  want = _logits(model, ids, mask, pixel_values_videos=videos)
  options = dataclasses.replace(model.options, remat="full", freeze_vision_tower=True)
  remat = nnx.eval_shape(
    lambda: lov.LlavaOnevisionForConditionalGeneration(
      model.config, options=options, rngs=nnx.Rngs(0)
    )
  )
  assert remat.vision_tower.options.remat_enabled and remat.language_model.options.remat_enabled
  nnx.update(remat, nnx.state(model))
  batch = dict(
    input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values_videos=videos
  )
  (_, logits), grads = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))(remat, batch)
  assert np.abs(np.asarray(logits) - want).max() < 1e-4
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(nnx.state(grads.vision_tower)))
  assert float(jnp.abs(grads.language_model.model.layers[0].self_attn.q_proj.bias[...]).max()) > 0
  trainable = nnx.state(remat, lov.trainable_filter(options))
  assert not any("vision_tower" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable))
  bf16 = hf.from_pretrained(path, dtype=jnp.bfloat16)
  logits = _jit_logits(bf16, jnp.asarray(ids), jnp.asarray(mask), None, None, videos)
  assert logits.dtype == jnp.bfloat16
  assert np.abs(np.asarray(logits, np.float32) - want).max() < 0.1


def test_weights_carry_logical_axes(pair):
  path, _, model = pair
  meta = model.language_model.model.layers[0].self_attn.q_proj.bias.get_metadata()
  assert (meta.get("out_sharding") or meta.get("sharding")) == ("heads",)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  placed = hf.from_pretrained(path, mesh=mesh)  # loads straight onto the mesh
  P = jax.sharding.PartitionSpec
  assert placed.multi_modal_projector.linear_1.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert placed.language_model.model.layers[0].self_attn.q_proj.kernel[...].sharding.spec == P(
    "fsdp", "tensor"
  )
  patch = placed.vision_tower.vision_model.embeddings.patch_embedding.kernel[...]
  assert patch.sharding.spec[-1] == "fsdp"


@pytest.mark.slow  # two SPMD compilations on 8 host devices
def test_mesh_forward_and_train_step_match_one_device(pair):
  _, _, model = pair
  assert len(jax.devices()) >= 8, "conftest forces 8 host devices"
  ids, mask, videos = _video_batch(model.config, np.random.default_rng(16), frames=1, batch=4)
  batch = dict(
    input_ids=jnp.asarray(ids),
    attention_mask=jnp.asarray(mask),
    pixel_values_videos=jnp.asarray(videos),
  )
  check_mesh_train_step(model, batch, _loss)
