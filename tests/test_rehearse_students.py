"""The rehearsal's other students (LLaVA-OneVision, Qwen2-VL): their production configs distil
tiny checkpoints that transformers' own classes wrote, the exports reload in transformers with
the trained model's logits, and `launch.evaluate` runs them unchanged (slow: apart from
tests/test_rehearse.py so the two run side by side)."""

import json
import os
import subprocess
import sys

import pytest

from aotd_jax.rehearsal import export_parity, stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_STAGES = ("distill", "export", "hf_load", "eval_star_mc")


def test_every_student_has_its_stages_and_an_unknown_one_is_named():
  plan = stages.placeholder_plan()
  names = {s.name for s in plan}
  for student in stages.STUDENTS:
    assert {f"{n}_{student}" for n in STUDENT_STAGES} <= names
  distill = next(s for s in plan if s.name == "distill_qwen2vl7b")
  assert distill.base_name() == "distill" and distill.student == "qwen2vl7b"
  assert distill.command[3].startswith(
    "--config=configs/distill/qwen2vl7b.py:h100x8,hf_dir=qwen2vl,"
  )
  lnv = next(s for s in plan if s.name == "distill")
  assert distill.command[4:-1] == lnv.command[4:-1]  # the same data flags as lnv7b's
  with pytest.raises(ValueError, match="student 'llava7b' not in"):
    stages.student_stages({"paths": {}, "data": {}}, "llava7b", train_data=[], mc=[])


def test_export_parity_names_an_export_it_cannot_check(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
  with pytest.raises(
    ValueError, match=r"config.json: architectures\[0\]='LlamaForCausalLM' is not"
  ):
    export_parity.compare(str(tmp_path), str(tmp_path / "none"))


@pytest.mark.slow
def test_other_students_rehearse_end_to_end(tmp_path):
  """The CoT stages (their inputs), then each student's distill / export / hf_load / eval."""
  only = ["cot_star", "cot_nextqa"] + [f"{n}_{s}" for s in stages.STUDENTS for n in STUDENT_STAGES]
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.rehearse",
      f"--workdir={tmp_path}",
      f"--students={','.join(stages.STUDENTS)}",
      f"--only={','.join(only)}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  result = json.loads((tmp_path / "rehearsal.json").read_text())
  rows = {row["stage"]: row for row in result["stages"]}
  assert set(only) <= set(rows), sorted(rows)
  bad = {k: (v["status"], v["detail"]) for k, v in rows.items() if v["status"] != "ok"}
  assert not bad, f"{bad}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  assert r.returncode == 0
  for student in stages.STUDENTS:
    assert rows[f"distill_{student}"]["figures"]["rationale_tokens"] > 0
    parity = json.loads((tmp_path / "eval" / f"export_parity_{student}.json").read_text())
    want = {
      "onevision7b": "LlavaOnevisionForConditionalGeneration",
      "qwen2vl7b": "Qwen2VLForConditionalGeneration",
    }[student]
    assert parity["architecture"] == want and parity["max_abs_diff"] < 1e-4
    assert parity["tensors_changed_by_training"] > 0 and not parity["vision_tower_changed"]
    evaluated = json.loads((tmp_path / "eval" / f"eval_star_mc_{student}.json").read_text())
    assert len(evaluated["outputs"]) == 4
