"""The wrong kind of model directory given (an Orbax checkpoint directory as `student.hf_dir`,
a `launch.train` workdir as `launch.evaluate --student`): the error says which it is."""

import json

import pytest

from aotd_jax.hf import io


def test_an_orbax_directory_where_a_hf_directory_is_read(tmp_path):
  (tmp_path / "orbax").mkdir()
  (tmp_path / "orbax" / "hf_config.json").write_text(json.dumps({"model_type": "llava"}))
  with pytest.raises(io.CheckpointError, match="an Orbax checkpoint directory .*not a Hugging"):
    io.read_config(str(tmp_path / "orbax"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(io.CheckpointError, match="no config.json in this Hugging Face directory"):
    io.read_config(str(tmp_path / "empty"))


def test_a_training_workdir_where_its_checkpoints_directory_is_read(tmp_path):
  from aotd_jax.hf import orbax_io

  (tmp_path / "w" / "checkpoints").mkdir(parents=True)
  (tmp_path / "w" / "checkpoints" / "hf_config.json").write_text("{}")
  with pytest.raises(io.CheckpointError, match=r"is a launch.train workdir: .*/w/checkpoints"):
    orbax_io.read_hf_config(str(tmp_path / "w"))
  with pytest.raises(io.CheckpointError, match="hf_config.json: missing"):
    orbax_io.read_hf_config(str(tmp_path))
