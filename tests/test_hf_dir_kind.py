"""The wrong kind of model directory given (an Orbax checkpoint directory as `student.hf_dir`,
a `launch.train` workdir as `launch.evaluate --student`, its checkpoints as `launch.export
--workdir`, a checkpoint file as `launch.eval_subtasks --grounder`): the error says which it is
and what to give."""

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


def test_launch_export_names_a_workdir_that_is_not_one(tmp_path):
  """`--workdir=W/checkpoints` (the run's checkpoints, not its workdir) and a missing one: one
  line each, exit 2, saying what to give."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "w" / "checkpoints").mkdir(parents=True)
  (tmp_path / "w" / "checkpoints" / "hf_config.json").write_text("{}")
  for workdir, want in (
    (tmp_path / "w" / "checkpoints", f"holds it: --workdir={tmp_path / 'w'}"),
    (tmp_path / "nowhere", "no such directory"),
  ):
    r = subprocess.run(
      [sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--hf_dir={tmp_path}/x"],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_eval_subtasks_names_a_grounder_that_is_not_its_directory(tmp_path):
  """docs/reproduce.md section 1 with `--grounder=` the released checkpoint file instead of the
  directory holding univtg.ckpt and clip/: one line before any model is read."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "STAR_val.json").write_text("[]")
  (tmp_path / "model_best.ckpt").write_bytes(b"")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.eval_subtasks",
      "--kind=star",
      f"--data={tmp_path / 'STAR_val.json'}",
      f"--grounder={tmp_path / 'model_best.ckpt'}",
      f"--llava={tmp_path / 'llava-typo'}",
    ],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert f"--grounder={tmp_path / 'model_best.ckpt'} (a directory holding univtg.ckpt" in r.stderr
  assert f"--llava={tmp_path / 'llava-typo'} (a LLaVA-NeXT-Video directory)" in r.stderr
