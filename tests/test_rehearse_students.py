"""The rehearsal's other students (LLaVA-OneVision, Qwen2-VL): their stages in the plan and the
export parity check's refusal. Their end-to-end run (distill, export, transformers reload,
`launch.evaluate`) is tests/test_rehearse.py's, in the same rehearsal run as LLaVA-NeXT-Video's
stages (they share its CoT stages)."""

import json

import pytest

from aotd_jax.rehearsal import export_parity, stages

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
