"""The end-to-end demo on the `micro` config: every stage's output, held-out evaluation,
student vs agent efficiency, resume from the cache, the CLI, and bad configs / files."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from aotd_jax.data import annotations
from aotd_jax.projects.toyworld import agent as demo_agent
from aotd_jax.projects.toyworld import common
from aotd_jax.projects.toyworld import report as report_lib
from aotd_jax.projects.toyworld import run as demo
from configs.toyworld import demo as demo_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDENTS = ("instruct", "aotd", "aotd_unfiltered")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("demo"))
  lines = []
  rep = demo.run(demo_config.get_config("micro"), workdir, log=lines.append)
  return workdir, rep, lines


def _split_qids(workdir, split):
  return [r.qid for r in annotations.read("star", os.path.join(workdir, "world", f"{split}.json"))]


@pytest.mark.slow
def test_every_stage_leaves_its_output(micro):
  workdir, rep, lines = micro
  w = pathlib.Path(workdir)
  # world: STAR JSON per split, one mp4 per clip, ground truth
  for split in ("train", "val", "test"):
    assert (w / "world" / f"{split}.json").is_file()
  world = json.loads((w / "world" / "world.json").read_text())
  assert all((w / "world" / "videos" / f"{v}.mp4").is_file() for v in world["splits"]["test"])
  # tokenizer and experts
  assert (w / "experts" / "tokenizer" / "tokenizer.json").is_file()
  assert set(rep["experts"]["sources"]) == set(demo.EXPERT_ROLES)
  experts_info = json.loads((w / "experts" / "experts.json").read_text())
  assert set(experts_info) == {"encoder", *demo.EXPERT_ROLES}
  for role, info in experts_info.items():
    if info["source"] == "trained":
      assert os.path.isfile(os.path.join(info["path"], common.DONE)), role
  if experts_info["encoder"]["source"] == "trained":  # the QA expert reads frames with it
    # the report carries the encoder's recorded val figures (test_object_encoder checks them
    # against the scorer on the saved model, and the scorer by hand)
    enc_done = os.path.join(experts_info["encoder"]["path"], common.DONE)
    assert rep["experts"]["frame_encoder"] == json.loads(pathlib.Path(enc_done).read_text())["val"]
    qa_done = json.loads((w / "experts" / "qa" / common.DONE).read_text())
    assert qa_done["vision_init"] == experts_info["encoder"]["path"]
    if experts_info["grounder"]["source"] == "trained":  # ... and the grounder its states
      gr_info = json.loads((w / "experts" / "grounder" / "train_info.json").read_text())
      assert gr_info["features"] == "object_states"
      assert gr_info["features_from"] == experts_info["encoder"]["path"]
  # CoTs: every train question processed once, the two-step filter is a funnel
  c = rep["cot"]
  train_qids = _split_qids(workdir, "train")
  records = [json.loads(l) for l in open(c["records"])]
  assert sorted(r["qid"] for r in records) == sorted(train_qids) and c["questions"] == len(
    train_qids
  )
  assert c["questions"] >= c["programs_ok"] >= c["passed_answer"] >= c["passed_judge"] > 0
  assert c["unfiltered"] == c["programs_ok"] and os.path.getsize(c["filtered_path"]) > 0
  assert c["passed_judge"] == sum(r["kept"] for r in records)
  if rep["experts"]["sources"]["program"] != "trained":  # no generator: every program is gold
    assert c["gold_fallbacks"] == c["questions"]
  # three students, same init, same steps, each saved as a HF directory
  steps = {rep["students"][n]["train"][0]["steps"] for n in STUDENTS}
  assert steps == {demo_config.get_config("micro").students.steps}
  for name in STUDENTS:
    info = rep["students"][name]["train"][0]
    assert (pathlib.Path(info["path"]) / "config.json").is_file()
    assert (pathlib.Path(info["path"]) / common.DONE).is_file()
  assert rep["students"]["instruct"]["train"][0]["cot_files"] == []
  assert rep["students"]["aotd"]["train"][0]["cot_files"] == [c["filtered_path"]]
  assert rep["students"]["aotd_unfiltered"]["train"][0]["cot_files"] == [c["unfiltered_path"]]
  # report files and the printed table
  assert (w / "report.json").is_file() and "<img" in (w / "report.html").read_text()
  assert "<svg" in (w / "report.html").read_text() and (w / "traces_cot.html").is_file()
  assert any("Instruct (QA only)" in line and "overall" in line for line in lines)


@pytest.mark.slow
def test_report_json_has_the_contract_keys(micro):
  workdir, _, _ = micro
  rep = json.loads(pathlib.Path(workdir, "report.json").read_text())
  gold = {
    r.qid: r.answer_index
    for r in annotations.read("star", os.path.join(workdir, "world", "test.json"))
  }
  for name in STUDENTS:
    assert {"accuracy", "per_type"} <= set(rep["students"][name])
    # by hand from the saved per-question scores (one seed): the likeliest option is the answer
    saved = json.loads(pathlib.Path(workdir, "eval", f"{name}_s0.json").read_text())
    picks = [int(np.argmax(lp)) for lp in saved["option_logprobs"]]
    right = [p == gold[q] for p, q in zip(picks, saved["qids"])]
    assert rep["students"][name]["accuracy"] == pytest.approx(sum(right) / len(gold))
  assert {"questions", "programs_ok", "passed_answer", "passed_judge"} <= set(rep["cot"])
  assert {
    "detection_iou",
    "grounding_iou",
    "action_top1",
    "qa_accuracy",
    "program_accuracy",
  } <= set(rep["experts"])
  assert {"box_iou", "window_iou"} <= set(rep["rationale_grounding"])
  assert {
    "agent_s_per_question",
    "student_s_per_question",
    "agent_peak_mb",
    "student_peak_mb",
  } <= set(rep["efficiency"])
  assert rep["config"]["variant"] == "micro" and "seconds" in rep


@pytest.mark.slow
def test_students_are_scored_on_the_held_out_split_only(micro):
  workdir, rep, _ = micro
  test_qids, train_qids = _split_qids(workdir, "test"), _split_qids(workdir, "train")
  assert test_qids and not set(test_qids) & set(train_qids)
  world = json.loads(pathlib.Path(workdir, "world", "world.json").read_text())
  assert not set(world["splits"]["test"]) & set(world["splits"]["train"])
  for name in STUDENTS:
    s = rep["students"][name]
    assert s["qids"] == test_qids and s["count"] == len(test_qids)
    saved = json.loads(pathlib.Path(workdir, "eval", f"{name}_s0.json").read_text())
    assert saved["split"] == "test" and saved["qids"] == test_qids
    assert len(saved["outputs"]) == len(test_qids)
    assert saved["scoring"] == "likelihood" and len(saved["option_logprobs"]) == len(test_qids)
    assert sum(saved["letters"]["pred"].values()) == sum(saved["letters"]["gold"].values())
    # every student starts from the trained QA expert (the toy world's pretrained Video-LLM)
    assert s["train"][0]["init_from"].endswith(os.path.join("experts", "qa"))
  assert rep["majority_letter"]["letter"] in "ABCD"
  cot_qids = {json.loads(l)["qid"] for l in open(rep["cot"]["records"])}
  assert cot_qids <= set(train_qids)  # CoTs come from train only


@pytest.mark.slow
def test_student_and_agent_measured_on_the_same_questions(micro):
  workdir, rep, _ = micro
  e = rep["efficiency"]
  assert e["questions"] == demo_config.get_config("micro").efficiency.questions
  assert e["speedup"] == e["agent_s_per_question"] / e["student_s_per_question"]
  assert e["agent_peak_mb"] == e["agent_process_peak_mb"] + e["agent_sandbox_peak_mb"]
  assert e["memory_ratio"] == e["agent_peak_mb"] / e["student_peak_mb"]
  # each system ran in its own process: the peaks differ (a shared RSS peak would not)
  assert e["agent_process_peak_mb"] != e["student_peak_mb"]
  agent = [json.loads(l) for l in open(e["agent_records"])]
  assert [r["qid"] for r in agent] == _split_qids(workdir, "test")[: e["questions"]]
  # by hand: a question counts when its program's value is the gold answer's text
  gold = {
    r.qid: r.answer for r in annotations.read("star", os.path.join(workdir, "world", "test.json"))
  }
  right = sum(r["prediction"] == gold[r["qid"]] for r in agent)
  assert e["agent_accuracy"] == pytest.approx(right / len(agent))


@pytest.mark.slow
def test_rerun_resumes_from_the_cache_and_cli_prints_the_table(micro):
  workdir, rep, _ = micro
  done = {
    n: os.path.getmtime(os.path.join(rep["students"][n]["train"][0]["path"], common.DONE))
    for n in STUDENTS
  }
  lines = []
  again = demo.run(demo_config.get_config("micro"), workdir, log=lines.append)
  assert again["students"]["aotd"]["accuracy"] == rep["students"]["aotd"]["accuracy"]
  assert again["cot"] == rep["cot"] and again["efficiency"] == rep["efficiency"]
  assert {
    n: os.path.getmtime(os.path.join(rep["students"][n]["train"][0]["path"], common.DONE))
    for n in STUDENTS
  } == done  # nothing retrained (a count, not a faster wall time)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.demo",
      "--config=configs/toyworld/demo.py:micro",
      f"--workdir={workdir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert "AoTD (QA + filtered CoTs)" in r.stdout and "held-out test split" in r.stdout


# -- failure modes (no training) --------------------------------------------------------------


def test_config_variants_and_bad_variant():
  for v in demo_config.VARIANTS:
    c = demo_config.get_config(v)
    assert c.variant == v and list(c.students.names) == list(STUDENTS)
  assert len(demo_config.get_config("full").seeds) == 3
  with pytest.raises(ValueError, match="configs/toyworld/demo.py:tiny"):
    demo_config.get_config("tiny")


def test_repo_root_is_the_repository():
  """The efficiency stage's child processes import `aotd_jax` and `experts` from here."""
  assert common.REPO_ROOT == ROOT


def test_corrupt_stage_summary_names_the_file(tmp_path):
  bad = tmp_path / "summary.json"
  bad.write_text("{not json")
  with pytest.raises(common.DemoError, match="summary.json: corrupt stage summary"):
    common.cached(str(bad), lambda: {})
  assert common.cached(str(tmp_path / "new.json"), lambda: {"a": 1}) == {"a": 1}
  assert common.cached(str(tmp_path / "new.json"), lambda: {"a": 2}) == {"a": 1}  # cached


def test_compilation_cache_keeps_a_directory_already_set(tmp_path):
  """The demo's cache goes to W/jax_cache unless one is set already (JAX_COMPILATION_CACHE_DIR,
  `make test`'s run cache), and never raises the minimum compile time it is given."""
  import jax

  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  before = {k: getattr(jax.config, k) for k in keys}
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    common.enable_compilation_cache(str(tmp_path / "w"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "w" / "jax_cache")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    common.enable_compilation_cache(str(tmp_path / "w"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  finally:
    for k, v in before.items():
      jax.config.update(k, v)


def test_rerun_with_another_config_is_refused(tmp_path):
  c = demo_config.get_config("micro")
  common.check_config_stamp(c, str(tmp_path))
  c.efficiency.questions = 1  # measurement settings may change between reruns
  common.check_config_stamp(c, str(tmp_path))
  c.students.steps = 99
  with pytest.raises(common.DemoError, match=r"sections \['students'\] differ"):
    common.check_config_stamp(c, str(tmp_path))
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(common.DemoError, match="config.json: corrupt config stamp"):
    common.check_config_stamp(c, str(tmp_path))


def test_bad_expert_source_and_unknown_student(tmp_path):
  c = demo_config.get_config("micro")
  c.experts.detector.source = "magic"
  with pytest.raises(common.DemoError, match=r"experts.detector.source='magic'"):
    demo.experts_stage(c, str(tmp_path), str(tmp_path), str(tmp_path))
  c = demo_config.get_config("micro")
  c.experts.grounder.features = "slowfast"
  with pytest.raises(common.DemoError, match=r"experts.grounder.features='slowfast'"):
    demo.experts_stage(c, str(tmp_path), str(tmp_path), str(tmp_path))
  c = demo_config.get_config("micro")
  with pytest.raises(common.DemoError, match="unknown student 'teacher'"):
    demo.student_stage(c, str(tmp_path), "teacher", 0, str(tmp_path), str(tmp_path), {})


def test_bad_program_source_is_refused(tmp_path):
  c = demo_config.get_config("micro")
  c.agent.programs = "oracle"
  info = {r: {"source": "oracle", "path": ""} for r in demo.EXPERT_ROLES}
  with pytest.raises(common.DemoError, match="config.agent.programs='oracle'"):
    demo_agent.build_agent(c, str(tmp_path), info, sandbox=None, fallback_log=str(tmp_path / "f"))
  c.agent.programs, c.agent.fallback_to_gold = "llm", False
  info["program"]["source"] = "none"
  with pytest.raises(common.DemoError, match="needs a trained program generator"):
    demo_agent.build_agent(c, str(tmp_path), info, sandbox=None, fallback_log=str(tmp_path / "f"))


def test_program_writer_falls_back_to_gold_and_counts(tmp_path):
  class QA:
    def __init__(self, qid, gold):
      self.qid, self.question, self.choices = qid, "Which object jumped?", ["a", "b", "c", "d"]
      self.meta = {"question_program": gold}

  gold = (
    "def execute_command(video_clip, query, possible_answers):\n    return possible_answers[0]\n"
  )

  class Chatter:
    def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
      return [
        "    return possible_answers[1]\n",
        "no code here (((",
      ][: len(prompts)]

  log = tmp_path / "fallbacks.jsonl"
  writer = demo_agent.ProgramWriter(
    Chatter(), prompt=lambda q, c: q, max_new_tokens=8, fallback_to_gold=True, fallback_log=str(log)
  )
  out = writer([QA("q1", gold), QA("q2", gold)])
  assert "possible_answers[1]" in out[0].source  # the LLM's own program, primed with the def
  assert out[1].source == gold
  assert [json.loads(l)["qid"] for l in log.read_text().splitlines()] == ["q2"]
  strict = demo_agent.ProgramWriter(
    Chatter(),
    prompt=lambda q, c: q,
    max_new_tokens=8,
    fallback_to_gold=False,
    fallback_log=str(log),
  )
  assert not strict([QA("q1", gold), QA("q2", gold)])[1].ok


def test_table_from_a_report():
  rep = {
    "config": {"variant": "x"},
    "seconds": 1.0,
    "test_qids": ["a", "b"],
    "students": {
      n: {"accuracy": 0.5, "per_type": {"Sequence": 0.5}, "per_seed": [0.5]} for n in STUDENTS
    },
    "cot": {
      "questions": 4,
      "programs_ok": 3,
      "passed_answer": 2,
      "passed_judge": 1,
      "unfiltered": 3,
      "gold_fallbacks": 0,
    },
    "experts": {"sources": {"detector": "trained"}, "detection_iou": 0.7},
    "rationale_grounding": {"box_iou": None, "window_iou": 0.5},
    "efficiency": {
      "questions": 2,
      "memory_kind": "host_vmhwm",
      "student_s_per_question": 0.1,
      "student_peak_mb": 100,
      "agent_s_per_question": 0.4,
      "agent_peak_mb": 300,
      "speedup": 4.0,
      "memory_ratio": 3.0,
      "agent_accuracy": 0.75,
    },
  }
  text = report_lib.table(rep)
  assert "AoTD (QA + filtered CoTs)" in text and "50.0" in text and "75.0" in text
  assert "4.0x faster" in text and "detection_iou 0.700 (random -)" in text


# -- students: shuffled QA copies, vision tower, baselines, scoring (no training) -------------------


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
  from aotd_jax.projects.toyworld import world as toyworld

  d = tmp_path_factory.mktemp("tiny_world")
  toyworld.generate_world(d, seed=0, num_train=3, num_val=1, num_test=2, write_videos=False)
  return str(d)


def test_shuffled_qa_moves_answers_not_questions(tiny_world, tmp_path):
  paths = demo.shuffled_qa(tiny_world, str(tmp_path / "qa"), 3, seed=0)
  orig = annotations.read("star", os.path.join(tiny_world, "train.json"))
  letters = {r.qid: {r.answer_index} for r in orig}
  for p in paths:
    copy = annotations.read("star", p)
    assert [r.question for r in copy] == [r.question for r in orig]
    for a, b in zip(orig, copy):
      assert b.qid != a.qid and b.answer == a.answer and sorted(b.choices) == sorted(a.choices)
      assert b.choices[b.answer_index] == a.answer
      letters[a.qid].add(b.answer_index)
  assert any(len(v) > 1 for v in letters.values())  # the answers did move
  mtimes = [os.path.getmtime(p) for p in paths]
  assert demo.shuffled_qa(tiny_world, str(tmp_path / "qa"), 3, seed=0) == paths  # written once
  assert [os.path.getmtime(p) for p in paths] == mtimes


def test_letter_histograms_and_majority_baseline(tiny_world):
  test = annotations.read("star", os.path.join(tiny_world, "test.json"))
  h = demo.letter_histograms(test, ["(A)"] * (len(test) - 1) + ["gibberish"])
  assert h["pred"] == ({"A": len(test) - 1, "none": 1} if len(test) > 1 else {"none": 1})
  assert sum(h["gold"].values()) == len(test)
  base = demo.majority_baseline(tiny_world)
  train = [r.answer_index for r in annotations.read("star", os.path.join(tiny_world, "train.json"))]
  top = max(set(train), key=train.count)
  assert base["letter"] == "ABCD"[top]
  assert base["accuracy"] == pytest.approx(sum(r.answer_index == top for r in test) / len(test))


def test_student_vision_dir_needs_a_trained_encoder_or_grounder(tmp_path):
  c = demo_config.get_config("micro")
  assert c.students.vision_init == "encoder" and c.students.freeze_vision_tower
  enc = tmp_path / "encoder"
  enc.mkdir()
  (enc / "config.json").write_text("{}")
  assert demo.student_vision_dir(c, {"encoder": {"source": "trained", "path": str(enc)}}) == str(
    enc
  )
  with pytest.raises(common.DemoError, match="vision_init='encoder'.*its source is 'none'"):
    demo.student_vision_dir(c, {"encoder": {"source": "none", "path": ""}})
  c.students.vision_init = "grounder"
  clip = tmp_path / "grounder" / "clip"
  clip.mkdir(parents=True)
  (clip / "config.json").write_text("{}")
  info = {"grounder": {"source": "trained", "path": str(tmp_path / "grounder")}}
  assert demo.student_vision_dir(c, info) == str(clip)
  with pytest.raises(common.DemoError, match="vision_init='grounder'.*its source is 'oracle'"):
    demo.student_vision_dir(c, {"grounder": {"source": "oracle", "path": ""}})
  c.students.vision_init = ""
  assert demo.student_vision_dir(c, {}) == ""
  c.students.vision_init = "/some/clip"
  assert demo.student_vision_dir(c, {}) == "/some/clip"


def test_student_base_dir_needs_a_trained_qa_expert(tmp_path):
  c = demo_config.get_config("micro")
  assert c.students.init_from == "qa"
  info = {"qa": {"source": "trained", "path": str(tmp_path / "qa")}}
  assert demo.student_base_dir(c, info) == str(tmp_path / "qa")
  with pytest.raises(
    common.DemoError, match="init_from='qa' needs the trained QA expert.*'oracle'"
  ):
    demo.student_base_dir(c, {"qa": {"source": "oracle", "path": ""}})
  c.students.init_from = str(tmp_path / "nowhere")
  with pytest.raises(common.DemoError, match="init_from=.*nowhere.*no config.json"):
    demo.student_base_dir(c, info)
  c.students.init_from = ""
  assert demo.student_base_dir(c, info) == ""


def test_bad_eval_scoring_is_refused(tmp_path):
  c = demo_config.get_config("micro")
  assert c.eval.scoring == "likelihood"
  c.eval.scoring = "vibes"
  with pytest.raises(common.DemoError, match=r"config.eval.scoring='vibes'"):
    demo.eval_stage(c, str(tmp_path), {"path": str(tmp_path / "student")}, str(tmp_path))
