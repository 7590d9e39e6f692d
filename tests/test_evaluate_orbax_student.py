"""`launch.evaluate --student=ORBAX_DIR` on the Orbax copy `python -m aotd_jax.hf convert` makes
(docs/reproduce.md, section 3: "an Orbax copy of a checkpoint loads without re-reading
safetensors"): it stopped with Orbax's `KeyError: Item "meta" was not found` (the copy holds no
training config) and, past that, a transformers traceback (no tokenizer beside it). The copy
now keeps the tokenizer, and its rows are those of the Hugging Face directory it came from; a
folder without a tokenizer stops before the student is loaded, naming --tokenizer."""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NEXTQA = ROOT / "tests" / "fixtures" / "real" / "nextqa"
QUESTIONS = 3


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A tiny Qwen2-VL written by transformers' own class, its Orbax copy, and synthetic videos
  for the first questions of the real NExT-QA val.csv, laid out as its map says."""
  from aotd_jax.hf.__main__ import main as hf_cli
  from aotd_jax.rehearsal import checkpoints, datasets

  tmp = tmp_path_factory.mktemp("orbax_student")
  hf_dir = checkpoints.qwen2_vl(str(tmp / "qwen2vl"))
  assert hf_cli(["convert", f"--hf_dir={hf_dir}", f"--orbax_dir={tmp / 'orbax'}"]) == 0
  video_map = json.loads((NEXTQA / "map_vid_vidorID.json").read_text())
  with open(NEXTQA / "val.csv", newline="") as f:
    rows = list(csv.DictReader(f))[:QUESTIONS]
  for i, row in enumerate(rows):
    path = tmp / "NExTVideo" / f"{video_map[row['video']]}.mp4"
    datasets.write_video(str(path), seconds=3, fps=8, size=32, seed=i)
  return tmp, hf_dir


def _evaluate(tmp, student_dir, out, *extra):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.evaluate",
      f"--student={student_dir}",
      "--format=nextqa",
      f"--annotations={NEXTQA / 'val.csv'}",
      f"--map={NEXTQA / 'map_vid_vidorID.json'}",
      f"--video_root={tmp / 'NExTVideo'}",
      f"--limit={QUESTIONS}",
      "--num_frames=2",
      "--answer_style=letter",
      "--scoring=both",
      "--max_new_tokens=4",
      f"--out={out}",
      *extra,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_the_orbax_copy_evaluates_as_its_hf_directory(student):
  tmp, hf_dir = student
  assert (tmp / "orbax" / "tokenizer.json").is_file()  # convert keeps the tokenizer
  got = {}
  for name, path in (("hf", hf_dir), ("orbax", tmp / "orbax")):
    r = _evaluate(tmp, path, tmp / f"{name}.json")
    assert r.returncode == 0, r.stderr[-3000:]
    got[name] = json.loads((tmp / f"{name}.json").read_text())["outputs"]
  keys = ("qid", "output", "likelihood_output")
  assert [{k: o[k] for k in keys} for o in got["orbax"]] == [
    {k: o[k] for k in keys} for o in got["hf"]
  ]
  assert len(got["hf"]) == QUESTIONS


def test_a_student_folder_without_a_tokenizer_is_named_before_loading(student):
  tmp, _ = student
  bare = tmp / "weights_only"  # as `aotd_jax.hf export` or an older convert leaves it
  shutil.copytree(tmp / "orbax", bare)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    (bare / name).unlink(missing_ok=True)
  r = _evaluate(tmp, bare, tmp / "bare.json")
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"--student={bare} holds no tokenizer" in r.stderr and "Traceback" not in r.stderr
  assert "--tokenizer=<the Hugging Face directory" in r.stderr
