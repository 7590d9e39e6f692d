"""A Hugging Face directory is asked for and an Orbax checkpoint directory is given (the
`aotd_jax.hf convert` output as `student.hf_dir`): the error says which it is."""

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
