"""The toy world's frame encoder (aotd_jax.projects.toyworld.object_encoder): dense per-patch targets, a
cached HF CLIPVisionModel directory, and clear errors."""

import os

import numpy as np
import pytest

from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.render import ACTIONS, ClipTruth
from aotd_jax.projects.toyworld import object_encoder as oe

pytestmark = pytest.mark.slow  # a module fixture trains the toy object encoder

NAMES = list(toyworld.ALL_OBJECT_NAMES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=0, num_train=4, num_val=1, num_test=1)
  return str(out)


@pytest.fixture(scope="module")
def encoder_dir(world, tmp_path_factory):
  return oe.train_object_encoder(
    world,
    tmp_path_factory.mktemp("enc"),
    steps=60,
    extra_clips=2,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    learning_rate=1e-2,
  )


def _truth():
  boxes = np.full((2, 2, 4), np.nan, np.float32)
  boxes[:, 0] = [0, 0, 32, 16]  # red circle: the top-left 4 x 2 patches of an 8 x 8 grid
  boxes[0, 1] = [60, 60, 62, 62]  # blue square: smaller than a patch, frame 0 only
  visible = np.array([[True, True], [True, False]])
  events = [
    {"action": "jump", "object": "red circle", "target": None, "start_frame": 1, "end_frame": 1}
  ]
  return ClipTruth("t", 8, 64, ["red circle", "blue square"], boxes, visible, events)


def test_patch_targets_mark_covered_patches_and_actions():
  frames = np.zeros((2, 64, 64, 3), np.uint8)
  x, ids, acts = oe.patch_targets([_truth()], [frames], NAMES, 8, every=1)
  assert x.shape == (2, 64, 64, 3) and ids.shape == (2, 64) and acts.shape == (2, 64, len(ACTIONS))
  grid0 = ids[0].reshape(8, 8)
  assert (grid0[:2, :4] == NAMES.index("red circle")).all()
  assert grid0[7, 7] == NAMES.index("blue square")  # the patch holding a tiny box's centre
  assert (grid0 == len(NAMES)).sum() == 64 - 8 - 1
  assert (ids[1] == NAMES.index("blue square")).sum() == 0  # not visible in frame 1
  jump = ACTIONS.index("jump")
  assert acts[0].sum() == 0  # no event in frame 0
  assert (acts[1].reshape(8, 8, -1)[:2, :4, jump] == 1).all() and acts[1].sum() == 8


def test_scores_on_known_probe_outputs(monkeypatch):
  """`score_object_encoder` on scripted probe logits (no model): every figure by hand."""
  import dataclasses

  from flax import nnx

  boxes = np.full((3, 2, 4), np.nan, np.float32)
  boxes[:, 0] = [0, 0, 32, 16]  # red circle: patches (0..1, 0..3) of the 8 x 8 grid
  boxes[0, 1] = [60, 60, 62, 62]  # blue square: patch (7, 7), frame 0 only
  visible = np.array([[True, True], [True, False], [True, False]])
  truth = ClipTruth("t", 8, 64, ["red circle", "blue square"], boxes, visible, [])
  red, blue, background = NAMES.index("red circle"), NAMES.index("blue square"), len(NAMES)
  # scored frames 0 and 2 (every second frame); what the probe says on each patch:
  said = np.full((2, 8, 8), background)
  said[0, :2, :4] = red  # frame 0: the circle right, the tiny square missed (8 of 9)
  said[1, 0, :4] = blue  # frame 2: half the circle called a blue square (4 of 8)
  said[1, 1, :4] = red
  logits = np.zeros((2, 64, len(NAMES) + 1 + len(ACTIONS)), np.float32)
  np.put_along_axis(logits, said.reshape(2, 64, 1), 5.0, axis=-1)
  monkeypatch.setattr(oe, "_probe_logits", lambda tower, head, pixels: logits)

  @dataclasses.dataclass(frozen=True)
  class Config:
    patch_size: int = 8

  class Tower(nnx.Module):
    config = Config()

  got = oe.score_object_encoder(
    Tower(), None, [truth], [np.zeros((3, 64, 64, 3), np.uint8)], image_size=64
  )
  # presence over 2 frames x 12 names: there {red, blue}, {red}; said {red}, {red, blue}
  assert got == {
    "identity": pytest.approx(12 / 17),
    "identity_chance": pytest.approx(1 / 12),
    "presence": pytest.approx(22 / 24),
    "presence_always_absent": pytest.approx(21 / 24),
    "presence_recall": pytest.approx(2 / 3),
    "frames": 2,
  }


def test_trained_encoder_is_a_cached_hf_clip_vision_model(world, encoder_dir):
  import transformers

  from aotd_jax import hf
  from aotd_jax.projects.toyworld import vision_experts as ve
  from aotd_jax.projects.toyworld.object_states import load_object_states

  info = oe.read_done(encoder_dir)
  assert info["final_loss"] < info["first_loss"]
  assert info["train_clips"] == 6 and info["extra_clips"] == 2
  # the recorded val figures are the scorer's (checked by hand above) on the saved tower + head
  states = load_object_states(encoder_dir)
  truths, frames, _ = ve._world(world, "val")
  assert info["val"] == oe.score_object_encoder(
    states.tower.vision_model, states.head, truths, frames, image_size=64
  )
  assert info["val"]["frames"] == 12 and info["val"]["identity_chance"] == pytest.approx(1 / 12)
  ours = hf.from_pretrained(encoder_dir)
  ref = transformers.CLIPVisionModel.from_pretrained(encoder_dir).eval()
  x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
  import torch

  with torch.no_grad():
    want = ref(pixel_values=torch.tensor(x)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(ours(x).last_hidden_state), want, atol=1e-4)
  stamp = os.path.getmtime(os.path.join(encoder_dir, "model.safetensors"))
  assert oe.train_object_encoder(world, encoder_dir, steps=999) == encoder_dir
  assert os.path.getmtime(os.path.join(encoder_dir, "model.safetensors")) == stamp


def test_training_learns_identity_on_its_train_frames(encoder_dir):
  """60 steps on 6 clips: the probe names the object under a patch far above chance (1/12)
  on the world's train frames; an untrained tower and probe sit near chance."""
  info = oe.read_done(encoder_dir)
  assert info["final_loss"] < 0.6 * info["first_loss"]
  assert info["train"]["identity"] > 3 * info["train"]["identity_chance"]
  assert info["train"]["frames"] == 4 * 12  # the world's own clips, every second frame


def test_errors_name_the_argument(world, tmp_path):
  with pytest.raises(oe.ObjectEncoderError, match=r"unknown size keys \['hidden'\]"):
    oe.train_object_encoder(world, tmp_path / "e", steps=1, hidden=3)
  with pytest.raises(oe.ObjectEncoderError, match="steps=0"):
    oe.train_object_encoder(world, tmp_path / "e", steps=0)
  with pytest.raises(
    oe.ObjectEncoderError, match="image_size=60 is not a multiple of patch_size=8"
  ):
    oe.train_object_encoder(world, tmp_path / "e", steps=1, image_size=60)
  with pytest.raises(ValueError, match="extra_clips=-1"):
    oe.train_object_encoder(world, tmp_path / "e", steps=1, extra_clips=-1)
  with pytest.raises(FileNotFoundError, match="no world.json"):
    oe.train_object_encoder(tmp_path, tmp_path / "e", steps=1)
  with pytest.raises(oe.ObjectEncoderError, match="no DONE"):
    oe.read_done(tmp_path / "e")
  assert not os.path.exists(tmp_path / "e" / oe.DONE)
