"""launch.evaluate on NExT-QA (issue 19, item 8): `--map` finds the videos through NExT-QA's
video-id map, `--scoring=likelihood|both` is closed-set scoring, and bad flags are named."""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import aotd_jax  # noqa: F401
from aotd_jax import hf
from aotd_jax.data import annotations
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.data.toy_tokenizer import train_tokenizer
from aotd_jax.eval import student as student_eval
from aotd_jax.hf import registry
from configs.toyworld import distill as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = [
  "video",
  "frame_count",
  "width",
  "height",
  "question",
  "answer",
  "qid",
  "type",
  "a0",
  "a1",
  "a2",
  "a3",
  "a4",
]


def _evaluate(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.evaluate", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.fixture(scope="module")
def nextqa(tmp_path_factory):
  """Two NExT-QA rows over toy-world clips stored as NExTVideo/<dir>/<vidorID>.mp4; the map is
  not beside the CSV, so only `--map` finds them."""
  d = tmp_path_factory.mktemp("nextqa")
  paths = toyworld.generate_world(d / "toy", seed=0, num_train=1, num_val=1, num_test=2)
  star = annotations.read("star", paths["test"])[:2]
  (d / "NExTVideo" / "0001").mkdir(parents=True)
  (d / "ann").mkdir()
  video_map, rows = {}, []
  for i, r in enumerate(star):
    vid = str(4000 + i)
    video_map[vid] = f"0001/{r.video_id}"
    shutil.copy(
      d / "toy" / "videos" / f"{r.video_id}.mp4", d / "NExTVideo" / "0001" / f"{r.video_id}.mp4"
    )
    choices = (list(r.choices) + ["nothing"] * 5)[:5]
    rows.append([vid, "64", "64", "64", r.question, str(r.answer_index), str(i), "CW", *choices])
  with open(d / "ann" / "val.csv", "w", newline="") as f:
    csv.writer(f).writerows([COLUMNS, *rows])
  (d / "map_vid_vidorID.json").write_text(json.dumps(video_map))
  texts = [r.question + " " + " ".join(r.choices) for r in star] + [
    "USER: ASSISTANT: (A) (B) (C) (D) (E) nothing"
  ]
  tok = train_tokenizer(texts, d / "tok", vocab_size=300)
  from flax import nnx

  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))
  hf.save_pretrained(model, str(d / "student"))
  tok.save_pretrained(str(d / "student"))
  return d, model, tok


@pytest.mark.slow  # one launch.evaluate subprocess with a model
def test_nextqa_map_and_both_scorings(nextqa, tmp_path):
  d, model, tok = nextqa
  out = tmp_path / "eval.json"
  r = _evaluate(
    f"--student={d / 'student'}",
    "--format=nextqa",
    f"--annotations={d / 'ann' / 'val.csv'}",
    f"--map={d / 'map_vid_vidorID.json'}",
    f"--video_root={d / 'NExTVideo'}",
    "--num_frames=4",
    "--max_new_tokens=2",
    "--scoring=both",
    f"--out={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["scoring"] == "both" and result["count"] == 2 and result["likelihood"]["count"] == 2
  records = annotations.read(
    "nextqa", str(d / "ann" / "val.csv"), map_path=str(d / "map_vid_vidorID.json")
  )
  # a Hugging Face directory: the official release's frames (--frame_sampling=official)
  assert result["settings"]["frame_sampling"] == "official"
  want = student_eval.choose_by_likelihood(
    model, tok, records, video_root=str(d / "NExTVideo"), num_frames=4, frame_sampling="official"
  )
  assert [o["likelihood_output"] for o in result["outputs"]] == want.outputs
  assert all(o["output"] is not None for o in result["outputs"])


def test_bad_flags_are_named(tmp_path):
  """Each stops before a model is loaded, with one line naming the flag."""
  (tmp_path / "map.json").write_text("{}")
  base = [f"--student={tmp_path / 'student'}", f"--annotations={tmp_path / 'val.csv'}"]
  r = _evaluate(*base, "--format=nextqa", "--num_frames=0")
  assert (
    r.returncode != 0 and "--num_frames must be >= 1" in r.stderr and "Traceback" not in r.stderr
  )
  r = _evaluate(*base, "--format=star", f"--map={tmp_path / 'map.json'}")
  assert r.returncode == 2 and "is NExT-QA's video map; --format is 'star'" in r.stderr, r.stderr[
    -2000:
  ]
  r = _evaluate(*base, "--format=nextqa", "--mode=rationale", "--scoring=likelihood")
  assert r.returncode == 2 and "--mode=rationale needs --scoring=generate" in r.stderr


@pytest.mark.slow  # two launch.evaluate subprocesses with a model
def test_a_training_checkpoint_gives_its_tokenizer_frames_and_formats(nextqa, tmp_path):
  """`--student=W/checkpoints` alone (the README's command): the tokenizer, frames, prompt
  format and QA target come from the run's saved config; a flag on the command line wins."""
  from flax import nnx

  from aotd_jax.train import build
  from aotd_jax.train.checkpoint import Checkpointer

  d, model, tok = nextqa
  ckpt = tmp_path / "checkpoints"
  data = dict(
    tokenizer=str(d / "student"),
    num_frames=3,
    prompt_format="official",
    answer_style="letter",
    window="whole",
  )
  checkpointer = Checkpointer(ckpt, async_save=False)
  checkpointer.save(
    2,
    model=nnx.state(model, nnx.Param).to_pure_dict(),
    opt_state={"count": np.zeros((), np.int32)},
    meta={"config": {"data": data}},
    data=None,
  )
  checkpointer.close()
  build.write_hf_config(model, str(ckpt))
  out = tmp_path / "eval.json"
  common = (
    f"--student={ckpt}",
    "--format=nextqa",
    f"--annotations={d / 'ann' / 'val.csv'}",
    f"--map={d / 'map_vid_vidorID.json'}",
    f"--video_root={d / 'NExTVideo'}",
    "--scoring=likelihood",
    f"--out={out}",
  )
  r = _evaluate(*common)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["settings"]["tokenizer"] == str(d / "student")
  assert {k: result["settings"][k] for k in data if k != "tokenizer"} == {
    "num_frames": 3,
    "prompt_format": "official",
    "answer_style": "letter",
    "window": "whole",
  }
  # the saved config has no frame_sampling: the run trained with the trainer's default, ours
  assert result["settings"]["frame_sampling"] == "ours"
  records = annotations.read(
    "nextqa", str(d / "ann" / "val.csv"), map_path=str(d / "map_vid_vidorID.json")
  )
  want = student_eval.choose_by_likelihood(
    model,
    tok,
    records,
    video_root=str(d / "NExTVideo"),
    num_frames=3,
    prompt_format="official",
    answer_style="letter",
  )
  assert [o["likelihood_output"] for o in result["outputs"]] == want.outputs
  # other settings into the same --out are refused: its row log would mix two runs' rows
  r = _evaluate(*common, "--num_frames=2", "--answer_style=letter_text")
  assert r.returncode == 2 and "with other settings (answer_style, num_frames)" in r.stderr
  # the same command after a later step was saved into the same path: other weights, refused
  checkpointer = Checkpointer(ckpt, async_save=False)
  checkpointer.save(
    3,
    model=nnx.state(model, nnx.Param).to_pure_dict(),
    opt_state={"count": np.ones((), np.int32)},
    meta={"config": {"data": data}},
    data=None,
  )
  checkpointer.close()
  r = _evaluate(*common)
  assert r.returncode == 2 and "with other settings (student_weights)" in r.stderr
  out = tmp_path / "eval2.json"
  r = _evaluate(*common, "--num_frames=2", "--answer_style=letter_text", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  settings = json.loads(out.read_text())["settings"]
  assert (settings["num_frames"], settings["answer_style"]) == (2, "letter_text")
  assert settings["from_training_config"] == [
    f"--tokenizer={d / 'student'}",
    "--prompt_format=official",
    "--window=whole",
    "--frame_sampling=ours",
  ]


def test_student_weights_change_when_a_path_is_rewritten(nextqa, tmp_path):
  """The row log's key for `--student`: a HF directory's files, rewritten, give another key."""
  import os

  from launch import evaluate

  d, model, tok = nextqa
  student = tmp_path / "student"
  hf.save_pretrained(model, str(student))
  first = evaluate.student_weights(str(student))
  assert {entry[0] for entry in first} == {"config.json", "model.safetensors"}
  assert evaluate.student_weights(str(student)) == first
  weights = student / "model.safetensors"
  st = weights.stat()
  os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-exported a second later
  assert evaluate.student_weights(str(student)) != first
  assert evaluate.student_weights(str(tmp_path / "nothing")) == []


def test_a_bad_value_in_the_training_config_is_named(tmp_path):
  """Stops before any model is loaded, naming the saved key and the flag."""
  from aotd_jax.train.checkpoint import Checkpointer

  ckpt = tmp_path / "checkpoints"
  checkpointer = Checkpointer(ckpt, async_save=False)
  checkpointer.save(
    1,
    model={"w": np.zeros(2, np.float32)},
    opt_state={"count": np.zeros((), np.int32)},
    meta={"config": {"data": {"prompt_format": "fancy"}}},
    data=None,
  )
  checkpointer.close()
  (ckpt / "hf_config.json").write_text("{}")
  r = _evaluate(f"--student={ckpt}", f"--annotations={tmp_path / 'val.json'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "training config's data.prompt_format='fancy' is not a valid --prompt_format" in r.stderr
