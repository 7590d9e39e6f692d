"""Per-name object states from a CLIP tower's patch tokens: the pooling, save / load, the
block permutation that renames objects, and the grounder backend reading them."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aotd_jax.projects.toyworld import object_states as obj
from aotd_jax.models.clip import CLIPVisionConfig, CLIPVisionModel

NAMES = ("red circle", "blue square", "green star")
ACTIONS = ("jump", "spin")


def _model(seed=0):
  cfg = CLIPVisionConfig(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=8,
  )
  rngs = nnx.Rngs(seed)
  return obj.ObjectStates(CLIPVisionModel(cfg, rngs=rngs), NAMES, ACTIONS, rngs=rngs)


def _pixels(n=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 3, 32, 32)), jnp.float32)


def test_states_pool_each_names_patches_into_its_own_block(monkeypatch):
  """Name 1 covers one patch (row 0, column 3 of the 4 x 4 grid) and spins there: its block
  says present, at x = 3.5 / 4, y = 0.5 / 4, spinning; the other names are absent."""
  model = _model()
  n, a = len(NAMES), len(ACTIONS)
  logits = np.full((1, 16, n + 1 + a), -30.0, np.float32)
  logits[0, :, n] = 30.0  # background everywhere ...
  logits[0, 3, n] = -30.0  # ... except patch 3 = (row 0, col 3): blue square
  logits[0, 3, 1] = 30.0
  logits[0, 3, n + 1 + 1] = 30.0  # spinning
  monkeypatch.setattr(model, "patch_logits", lambda pixels: jnp.asarray(logits))
  out = np.asarray(model(_pixels(1))).reshape(n, model.block_size)
  assert model.feature_dim == out.size == n * (4 + a)
  presence, mass, cx, cy, jump, spin = out[1]
  np.testing.assert_allclose(
    [presence, mass, cx, cy, jump, spin], [1.0, 1 / 16, 3.5 / 4, 0.5 / 4, 0.0, 1.0], atol=1e-5
  )
  assert out[[0, 2], 0].max() < 1e-6  # absent names


def test_save_load_round_trip_and_transformers_reads_the_tower(tmp_path):
  import torch
  import transformers

  model = _model(seed=3)
  obj.save_object_states(model, tmp_path)
  assert obj.has_object_states(tmp_path)
  back = obj.load_object_states(tmp_path)
  assert back.names == NAMES and back.actions == ACTIONS
  x = _pixels()
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(back(x)))
  ref = transformers.CLIPVisionModel.from_pretrained(tmp_path).eval()
  with torch.no_grad():
    hidden = ref(pixel_values=torch.from_numpy(np.array(x))).last_hidden_state.numpy()
  np.testing.assert_allclose(hidden, np.asarray(model.tower(x).last_hidden_state), atol=1e-4)


def test_a_missing_or_misshaped_head_names_its_file(tmp_path):
  from safetensors.numpy import save_file

  model = _model()
  obj.save_object_states(model, tmp_path)
  head = os.path.join(tmp_path, obj.HEAD_FILE)
  save_file({"kernel": np.zeros((16, 3), np.float32), "bias": np.zeros(6, np.float32)}, head)
  with pytest.raises(ValueError, match=r"object_head.safetensors: tensor 'kernel' is \(16, 3\)"):
    obj.load_object_states(tmp_path)
  os.remove(head)
  with pytest.raises(FileNotFoundError, match=r"object_head.safetensors: missing"):
    obj.load_object_states(tmp_path)
  assert not obj.has_object_states(tmp_path / "nowhere")


def test_permuting_name_blocks_moves_each_block_to_its_new_name():
  feats = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 12)  # 3 names x 4 per block
  out = obj.permute_name_blocks(feats, [2, 0, 1], 3)
  blocks, moved = feats.reshape(2, 3, 4), out.reshape(2, 3, 4)
  for i, j in enumerate([2, 0, 1]):
    np.testing.assert_array_equal(moved[:, j], blocks[:, i])
  with pytest.raises(ValueError, match="do not split into 3 name blocks"):
    obj.permute_name_blocks(feats, [0, 0, 1], 3)
  with pytest.raises(ValueError, match="do not split into 5 name blocks"):
    obj.permute_name_blocks(feats, list(range(5)), 5)


def test_the_grounder_backend_reads_object_states(tmp_path):
  """UniVTG on object-state features: the video features are the reader's, and a config
  whose feature width disagrees is refused naming both."""
  from aotd_jax.projects.toyworld import vision_experts as ve
  from aotd_jax.models.clip import CLIPModel
  from aotd_jax.models.univtg import UniVTG
  from experts.backends.univtg import UniVTGGrounder

  reader = _model()
  clip_cfg, vtg_cfg = ve.grounder_configs(
    40, hidden=16, projection_dim=8, layers=1, video_feature_dim=reader.feature_dim
  )
  rngs = nnx.Rngs(0)
  clip_model, vtg = CLIPModel(clip_cfg, rngs=rngs), UniVTG(vtg_cfg, rngs=rngs)
  tokenize = lambda texts: (np.ones((len(texts), 4), np.int32), np.ones((len(texts), 4), np.int32))
  g = UniVTGGrounder(vtg, clip_model, tokenize, frame_features=reader, buckets=(4,))
  assert g.image_size == 32
  frames = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)
  from experts import VideoClip

  feats, _ = g.features(VideoClip(frames, fps=8, video_id="v"))
  assert feats.shape[1] == reader.feature_dim
  with pytest.raises(ValueError, match=r"CLIP image features computed here are \(8,\)"):
    UniVTGGrounder(vtg, clip_model, tokenize)  # this UniVTG wants 18-wide features
  narrow = UniVTG(
    ve.grounder_configs(40, hidden=16, projection_dim=8, layers=1, video_feature_dim=7)[1],
    rngs=rngs,
  )
  with pytest.raises(ValueError, match=r"frame_features computed here are \(18,\)"):
    UniVTGGrounder(narrow, clip_model, tokenize, frame_features=reader)


def test_bad_names_and_metadata_are_refused(tmp_path):
  cfg = CLIPVisionConfig(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=8,
  )
  with pytest.raises(ValueError, match=r"names \(0\) and actions \(2\) must both be non-empty"):
    obj.ObjectStates(CLIPVisionModel(cfg, rngs=nnx.Rngs(0)), (), ACTIONS, rngs=nnx.Rngs(0))
  obj.save_object_states(_model(), tmp_path)
  (tmp_path / obj.META_FILE).write_text('{"names": "red circle", "actions": []}')
  with pytest.raises(ValueError, match=r"object_states.json: expected lists 'names' and 'actions'"):
    obj.load_object_states(tmp_path)
