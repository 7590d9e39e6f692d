"""Tiny vision experts on the toy world: training lowers the loss, the saved models load
through `experts.make_tools` and return boxes / windows, a finished directory is reused."""

import json
import os

import numpy as np
import pytest

import experts
from aotd_jax.projects.toyworld import vision_experts as ve
from aotd_jax.projects.toyworld.oracle import PLUGIN

pytestmark = pytest.mark.slow  # module fixtures train the toy detector and grounder

TINY_DET = dict(vision_hidden=32, text_hidden=16, layers=1, heads=2, projection_dim=16)
TINY_GR = dict(vision_hidden=16, hidden=16, projection_dim=16, layers=1, heads=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  from aotd_jax.projects.toyworld import world as toyworld

  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=1, num_train=3, num_val=1, num_test=1)
  return str(out)


@pytest.fixture(scope="module")
def detector(world, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("det") / "detector")
  # 8 steps: the loss falls below half its first value by step 3 (52 -> 13; 4.4 at step 8)
  return ve.train_detector(world, out, steps=8, batch_size=16, lr=3e-3, **TINY_DET)


@pytest.fixture(scope="module")
def grounder(world, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("gr") / "grounder")
  # CLIP's loss falls from 9.4 to 3.5 in 8 steps, UniVTG's from 5.9 to 3.7 in 12
  return ve.train_grounder(
    world, out, steps=10, clip_steps=8, vtg_steps=12, batch_size=8, extra_clips=1, **TINY_GR
  )


def _info(path):
  with open(os.path.join(path, "train_info.json")) as f:
    return json.load(f)


def _clip(world):
  from aotd_jax.data import video
  from aotd_jax.projects.toyworld import world as toyworld

  vid = json.load(open(os.path.join(world, "world.json")))["splits"]["val"][0]
  frames = video.decode_all(toyworld.video_path(world, vid))
  return experts.VideoClip(frames, fps=8, video_id=vid)


def test_word_tokenizer_loads_with_autotokenizer_and_ends_with_the_highest_id(tmp_path):
  from aotd_jax import hf

  vocab = ve.build_word_tokenizer(ve.world_words(), str(tmp_path))
  tok = hf.load_tokenizer(str(tmp_path))
  enc = tok(["red circle", "the BLUE square jumps"], padding="max_length", max_length=16)
  ids = enc["input_ids"]
  assert ids[0][:4] == [vocab["[BOS]"], vocab["red"], vocab["circle"], vocab["[EOS]"]]
  assert ids[1][2] == vocab["blue"] and max(ids[1]) == vocab["[EOS]"] == len(vocab) - 1
  assert ids[0][4:] == [0] * 12 and enc["attention_mask"][0][:5] == [1, 1, 1, 1, 0]


def test_detector_trains_and_loads_through_make_tools(world, detector):
  info = _info(detector)
  assert info["last_loss"] < info["first_loss"] * 0.5, info
  assert os.path.exists(os.path.join(detector, "DONE"))
  config = experts.default_config()
  config.ground_truth.path = world
  config.detector = ve.detector_section(detector, threshold=0.0)
  box = experts.make_toolbox(config, plugins=[PLUGIN])
  clip = _clip(world)
  found = box.tools()["Find"](clip, "red circle")  # threshold 0: every frame has boxes
  # kept: every frame, each with exactly the detector's highest-scoring box of that frame
  best = [
    max(boxes, key=lambda b: b.score)
    for boxes in box.detector.detect(clip, ["red circle"], threshold=0.0)
  ]
  assert len(found) == len(clip)
  assert [b.frame_id for b in found.detections] == [int(f) for f in clip.frame_ids]
  assert {b.label for b in found.detections} == {"red circle"}
  assert [(b.box, b.score) for b in found.detections] == [(b.box, b.score) for b in best]


def test_detector_transformers_loads_the_saved_directory(detector):
  """The save is a real HF OWLv2 directory: transformers reads the config and weights."""
  import transformers

  model = transformers.Owlv2ForObjectDetection.from_pretrained(detector)
  assert model.config.vision_config.image_size == 64
  assert model.config.text_config.eos_token_id == model.config.text_config.vocab_size - 1


def test_grounder_trains_and_loads_through_make_tools(world, grounder):
  info = _info(grounder)
  assert info["last_loss"] < info["first_loss"], info
  assert info["train_clips"] == 4 and info["extra_clips"] == 1  # 3 world clips + 1 rendered
  assert np.mean(info["clip_losses"][-5:]) < info["clip_losses"][0]
  config = experts.default_config()
  config.ground_truth.path = world
  # the backend takes the directory itself as `path` (univtg.ckpt inside)
  config.grounder = ve.grounder_section(grounder, path=grounder)
  box = experts.make_toolbox(config, plugins=[PLUGIN])
  clip = _clip(world)
  windows = box.grounder.ground(clip, "red circle jumps", top_k=2)
  # the windows are the official decoding of the model's outputs (NMS 0.7), in frames at 8 fps
  from aotd_jax.models import univtg_postprocess as post
  from aotd_jax.models.univtg import UniVTGOutput

  logits, spans, sal, vmask = box.grounder.raw_outputs(clip, "red circle jumps")
  want = post.decode_moments(
    UniVTGOutput(
      pred_logits=logits,
      pred_spans=spans,
      saliency_scores=sal,
      vid_mem_proj=None,
      txt_mem_proj=None,
      src_vid_mask=vmask,
    ),
    clip_length=box.grounder.clip_length,
    durations=[len(clip) / 8],
    nms_thd=0.7,
    top_k=2,
  )[0].pred_relevant_windows
  starts = [min(int(np.floor(s * 8)), len(clip) - 1) for s, _, _ in want]
  assert [(w.start_frame, w.end_frame, w.score) for w in windows] == [
    (a, min(max(int(np.ceil(e * 8)), a + 1), len(clip)), pytest.approx(score, abs=1e-6))
    for a, (_, e, score) in zip(starts, want)
  ]
  out = box.Filter_frames_with_act(clip, "an object moves")
  top = box.grounder.ground(clip, "an object moves")[0]
  assert (out.start_frame, out.end_frame) == (top.start_frame, top.end_frame)


def test_finished_directories_are_returned_without_retraining(
  world, detector, grounder, monkeypatch
):
  def boom(*a, **k):
    raise AssertionError("retrained a finished expert")

  monkeypatch.setattr(ve, "_world", boom)
  assert ve.train_detector(world, detector, steps=5) == detector
  assert ve.train_grounder(world, grounder, steps=5) == grounder


@pytest.mark.parametrize("fn", [ve.train_detector, ve.train_grounder])
def test_bad_arguments_are_reported(fn, world, tmp_path):
  with pytest.raises(ValueError, match=r"steps=0: must be a positive int"):
    fn(world, str(tmp_path / "a"), steps=0)
  with pytest.raises(FileNotFoundError, match=r"no world.json \(not a generated toy world"):
    fn(str(tmp_path), str(tmp_path / "b"), steps=2)


def test_grounder_input_dropout_defaults_to_zero():
  """The official input dropout kept the tiny heads from learning (docs/vision_experts.md)."""
  _, vtg = ve.grounder_configs(40)
  assert vtg.input_dropout == 0.0
  _, vtg = ve.grounder_configs(40, input_dropout=0.5)
  assert vtg.input_dropout == 0.5


def test_extra_train_clips_are_new_train_clips_of_the_same_world(world):
  with open(os.path.join(world, "world.json")) as f:
    meta = json.load(f)
  truths, frames = ve.extra_train_clips(meta, 2)
  assert len(truths) == len(frames) == 2
  n_train = len(meta["splits"]["train"])
  assert [t.video_id for t in truths] == [f"toy1_train_{n_train + i:05d}" for i in range(2)]
  assert frames[0].shape == (24, 64, 64, 3) and frames[0].dtype == np.uint8
  heldout = {tuple(h) for h in meta["heldout"]}
  for t in truths:
    for e in t.events:
      colour, shape = e["object"].split()
      assert (shape, colour, e["action"]) not in heldout
  again, _ = ve.extra_train_clips(world, 1)  # from the directory; deterministic
  assert again[0].events == truths[0].events
  with pytest.raises(ValueError, match=r"extra_clips=-1: must be an int >= 0"):
    ve.extra_train_clips(meta, -1)
  with pytest.raises(FileNotFoundError, match=r"no world.json"):
    ve.extra_train_clips(os.path.dirname(world), 1)


@pytest.fixture(scope="module")
def object_states_dir(tmp_path_factory):
  """A saved (untrained) `ObjectStates` over the world's names: the features a frame
  encoder gives the grounder."""
  from flax import nnx
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.projects.toyworld.render import ACTIONS
  from aotd_jax.projects.toyworld import object_states as obj
  from aotd_jax.models.clip import CLIPVisionConfig, CLIPVisionModel

  cfg = CLIPVisionConfig(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=8,
  )
  rngs = nnx.Rngs(0)
  model = obj.ObjectStates(
    CLIPVisionModel(cfg, rngs=rngs), toyworld.ALL_OBJECT_NAMES, ACTIONS, rngs=rngs
  )
  return obj.save_object_states(model, str(tmp_path_factory.mktemp("states")))


def test_rename_objects_replaces_all_names_at_once():
  swap = {"red circle": "blue square", "blue square": "red circle"}
  assert (
    ve.rename_objects("the red circle touches the blue square", swap)
    == "the blue square touches the red circle"
  )
  assert ve.rename_objects("an object spins", swap) == "an object spins"


def test_rename_sample_moves_the_queried_objects_block_with_its_name():
  from aotd_jax.projects.toyworld import world as toyworld

  names = list(toyworld.ALL_OBJECT_NAMES)
  feats = np.random.default_rng(0).normal(size=(5, len(names) * 10))
  perm = np.random.default_rng(1).permutation(len(names))
  out, query = ve.rename_sample(feats, f"the {names[4]} jumps", perm, names)
  new = names[perm[4]]
  assert query == f"the {new} jumps"
  j = names.index(new)
  np.testing.assert_array_equal(out[:, j * 10 : (j + 1) * 10], feats[:, 40:50])


def test_grounder_on_object_states_renames_and_loads_through_make_tools(
  world, object_states_dir, tmp_path
):
  out = ve.train_grounder(
    world,
    str(tmp_path / "g"),
    steps=10,
    vtg_steps=12,
    batch_size=8,
    features=object_states_dir,
    **TINY_GR,
  )
  info = _info(out)
  assert info["features"] == "object_states" and info["clip_steps"] == 0
  assert info["renamed_samples"] == 12 * 8 and not info["clip_losses"]  # rename_prob 1
  assert info["last_loss"] < info["first_loss"], info
  section = ve.grounder_section(out)
  assert section["features_path"] == os.path.join(out, ve.FEATURES_DIR)
  config = experts.default_config()
  config.ground_truth.path = world
  config.grounder = section
  box = experts.make_toolbox(config, plugins=[PLUGIN])
  assert box.grounder.image_size == 32  # the object states' tower, not the grounder's CLIP
  clip = _clip(world)
  windows = box.grounder.ground(clip, "the red circle jumps", top_k=2)
  assert windows and all(0 <= w.start_frame < w.end_frame <= len(clip) for w in windows)


def test_grounder_feature_errors_are_reported(world, object_states_dir, tmp_path):
  with pytest.raises(ValueError, match=r"rename_prob=1.5 must be in \[0, 1\]"):
    ve.train_grounder(
      world, str(tmp_path / "a"), steps=2, features=object_states_dir, rename_prob=1.5
    )
  with pytest.raises(FileNotFoundError, match=r"object_states.json: missing"):
    ve.train_grounder(world, str(tmp_path / "b"), steps=2, features=str(tmp_path))
  assert not os.path.exists(tmp_path / "b")


def test_grounder_refuses_object_states_of_other_names(world, tmp_path):
  """Renaming permutes name blocks, so the states must be over this world's names."""
  from flax import nnx
  from aotd_jax.projects.toyworld import object_states as obj
  from aotd_jax.models.clip import CLIPVisionConfig, CLIPVisionModel

  cfg = CLIPVisionConfig(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=8,
  )
  rngs = nnx.Rngs(0)
  other = obj.save_object_states(
    obj.ObjectStates(
      CLIPVisionModel(cfg, rngs=rngs), ("red circle", "pink cube"), ("jump",), rngs=rngs
    ),
    str(tmp_path / "states"),
  )
  with pytest.raises(
    ValueError,
    match=r"states: object states for names \['red circle', "
    r"'pink cube'\], not this world's",
  ):
    ve.train_grounder(world, str(tmp_path / "g"), steps=2, features=other)
  assert not os.path.exists(tmp_path / "g")
