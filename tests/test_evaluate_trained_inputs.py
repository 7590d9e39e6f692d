"""`launch.evaluate` on a `launch.export` directory takes the frames, prompt format and QA target
the student trained with from its `aotd_training.json`, as it does from a training checkpoint;
a flag given with another value wins and is reported."""

import json

import pytest
from absl import flags

from aotd_jax.train import data as train_data
from aotd_jax.train.config_check import ConfigError


@pytest.fixture
def evaluate():
  """`launch.evaluate`, imported in the test (it defines its flags), as test_frame_sampling."""
  import launch.evaluate

  return launch.evaluate


@pytest.fixture
def command_line(evaluate):
  """The evaluate flags as a fresh command line left them, restored after the test."""
  yield flags.FLAGS
  for flag in evaluate.TRAINED_WITH:
    flags.FLAGS[flag].unparse()


def _export(path, data):
  path.mkdir()
  (path / "config.json").write_text("{}")
  if data is not None:
    (path / train_data.TRAINED_INPUTS_FILE).write_text(json.dumps({"data": data}))
  return str(path)


def test_trained_inputs_fill_the_trainers_defaults():
  assert train_data.trained_inputs({"num_frames": 16, "prompt_format": "official"}) == {
    "num_frames": 16,
    "prompt_format": "official",
    "window": "question",
    "frame_sampling": "ours",
  }


def test_an_export_gives_its_training_inputs_and_a_differing_flag_is_reported(
  tmp_path, command_line, evaluate
):
  data = {"num_frames": 16, "prompt_format": "official", "answer_style": "letter"}
  data = train_data.trained_inputs({**data, "window": "whole", "frame_sampling": "official"})
  data["frame_numbers"] = "source"  # from the run's CoT report
  student = _export(tmp_path / "export", data)
  assert evaluate.training_data_config(student) == data
  command_line["num_frames"].parse("8")  # given on the command line
  taken = evaluate.defaults_from_training(evaluate.training_data_config(student))
  assert taken == [
    "--prompt_format=official",
    "--answer_style=letter",
    "--window=whole",
    "--frame_sampling=official",
    "--frame_numbers=source",
  ]
  assert command_line["num_frames"].value == 8 and command_line["prompt_format"].value == "official"
  assert evaluate.differences_from_training(data) == ["--num_frames=8 (trained with 16)"]


def test_a_hf_directory_from_elsewhere_or_a_bad_file(tmp_path, command_line, evaluate):
  assert evaluate.training_data_config(_export(tmp_path / "hub", None)) == {}
  bad = _export(tmp_path / "bad", None)
  (tmp_path / "bad" / train_data.TRAINED_INPUTS_FILE).write_text("[")
  with pytest.raises(ConfigError, match="aotd_training.json is not the JSON launch.export writes"):
    evaluate.training_data_config(bad)
