"""The student evaluator on a tiny random LLaVA-NeXT-Video, toy-world clips and the toy tokenizer."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import aotd_jax  # noqa: F401
from aotd_jax import hf
from aotd_jax.data import annotations, toyworld
from aotd_jax.data.toy_tokenizer import train_tokenizer
from aotd_jax.eval import student as student_eval
from aotd_jax.hf import registry
from configs.distill import toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = tmp_path_factory.mktemp("world")
  paths = toyworld.generate_world(d, seed=0, num_train=2, num_val=1, num_test=2)
  records = annotations.read("star", paths["test"])
  texts = [r.question + " " + " ".join(r.choices) for r in records] + ["USER: ASSISTANT: (A) (B) (C) (D)"]
  tok = train_tokenizer(texts, d / "tok", vocab_size=300)
  from flax import nnx
  adapter = registry.adapter_for("LlavaNextVideoForConditionalGeneration")
  model = adapter.model_class(adapter.config_from_hf(dict(toy.TINY_LLAVA)), rngs=nnx.Rngs(0))
  return d, records[:3], tok, model


def test_run_student_answers_and_rationales(world):
  d, records, tok, model = world
  for mode in ("answer", "rationale"):
    run = student_eval.run_student(model, tok, records, mode=mode, video_root=str(d / "videos"),
                                   num_frames=4, batch_size=2, max_new_tokens=5)
    assert len(run.outputs) == len(records) and all(isinstance(o, str) for o in run.outputs)
    assert run.efficiency.questions == len(records) and run.efficiency.seconds > 0
  res = student_eval.score(records, ["(A)", "B", "nonsense"][:len(records)])
  assert res["count"] == len(records) and 0.0 <= res["accuracy"] <= 1.0
  assert set(res["per_type"]) == {student_eval.question_type(r) for r in records}


def test_prompt_carries_one_video_token_per_feature(world):
  _, records, tok, model = world
  n = 4 * model.config.video_tokens_per_frame()
  ids = student_eval.prompt_ids(tok, records[0], "answer", n)
  assert ids.count(tok.convert_tokens_to_ids("<video>")) == n
  with pytest.raises(ValueError, match="mode"):
    student_eval.prompt_ids(tok, records[0], "explain", n)


def test_evaluate_cli_on_an_exported_student(world, tmp_path):
  d, records, tok, model = world
  hf.save_pretrained(model, str(tmp_path / "student"))
  tok.save_pretrained(str(tmp_path / "student"))
  out = tmp_path / "eval.json"
  r = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--student={tmp_path / 'student'}",
                      "--format=star", f"--annotations={d / 'test.json'}",
                      f"--video_root={d / 'videos'}", "--num_frames=4", "--limit=2",
                      "--max_new_tokens=4", f"--out={out}"], cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["count"] == 2 and len(result["outputs"]) == 2
  assert result["efficiency"]["seconds_per_question"] > 0
