"""A project's data kind reaches the experts only as a plugin (experts/plugins.py): without it
the toy world's kinds are refused by name; with it they resolve; bad plugin lists are refused."""

import pytest

import experts
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.oracle import PLUGIN
from experts import registry
from experts import subtasks as harness
from experts.plugins import Plugin, by_kind


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=0, num_clips=4, write_videos=False)
  return str(out)


def _oracle_config(world):
  config = registry.default_config()
  config.ground_truth.path = world
  return config


def test_toy_world_kinds_need_its_plugin(world):
  config = _oracle_config(world)
  with pytest.raises(
    ValueError,
    match=r"ground_truth.kind='toyworld' is not one of \['star'\] "
    r"\(a project's kind comes with its plugin",
  ):
    experts.make_tools(config)
  for role in ("detector", "grounder", "action_recognizer", "video_qa"):
    config[role].kind = "none"  # no oracle: the ground truth is not read
  with pytest.raises(
    ValueError,
    match=r"object_vocabulary='toyworld' is not a list, a plugin's "
    r"kind \[\]",
  ):
    experts.make_tools(config)
  box = experts.make_toolbox(_oracle_config(world), plugins=[PLUGIN])
  assert set(box.detector.gt.video_ids) == set(toyworld.load_ground_truth(world))


def test_the_plugin_names_the_vocabulary_and_describes_it(world):
  box = experts.make_toolbox(_oracle_config(world), plugins=[PLUGIN])
  assert box.object_vocabulary == list(toyworld.ALL_OBJECT_NAMES)
  described = registry.describe(_oracle_config(world), plugins=[PLUGIN])
  assert described["object_vocabulary"] == {
    "kind": "toyworld",
    "size": len(toyworld.ALL_OBJECT_NAMES),
  }


def test_frame_features_need_exactly_one_reader(world):
  config = _oracle_config(world)
  for role in ("detector", "action_recognizer", "video_qa"):
    config[role].kind = "none"
  config.grounder = {
    "kind": "univtg",
    "path": "g.ckpt",
    "clip_path": "clip",
    "features_path": "features",
  }
  with pytest.raises(
    ValueError,
    match=r"grounder.features_path='features' needs exactly one "
    r"plugin that reads frame features \(have \[\]",
  ):
    experts.make_tools(
      config,
      plugins=[Plugin("other", ground_truth=PLUGIN.ground_truth, object_names=PLUGIN.object_names)],
    )


def test_bad_plugin_lists_are_refused():
  with pytest.raises(ValueError, match=r"two plugins for kind 'toyworld'"):
    by_kind([PLUGIN, PLUGIN])
  with pytest.raises(TypeError, match=r"expected experts.plugins.Plugin, got dict"):
    by_kind([{"kind": "toyworld"}])


def test_subtask_data_and_demo_prompt_need_the_plugin(world):
  config = harness.default_config(world, split="val")
  with pytest.raises(ValueError, match=r"data.kind='toyworld' is not one of \['star'\]"):
    harness.evaluate(config)
  no_prompt = Plugin(
    "toyworld",
    ground_truth=PLUGIN.ground_truth,
    object_names=PLUGIN.object_names,
    subtask_data=PLUGIN.subtask_data,
  )
  gen = {"kind": "llama", "path": "unused", "prompt": "demo"}
  data = harness.load_data(config.data, plugins=[no_prompt])
  with pytest.raises(ValueError, match=r"prompt='demo' needs the data kind's plugin"):
    harness.evaluate_candidate(
      "x", {"program_generator": gen}, data, config.data, plugins=[no_prompt]
    )
