"""The toy-world study (`aotd_jax.projects.toyworld.study`, `launch/study.py`): the paired intervals on
known numbers (crossed and nested), the noisy oracle teacher's clip swap, and 2-seed studies
whose shared, training and evaluation stages are replaced by deterministic fakes (a world
per seed or one world, pairing, table, resume, refusals). The real stages are covered end
to end by tests/test_demo.py."""

import json
import os

import numpy as np
import pytest

from aotd_jax.projects.toyworld import run as demo_run
from aotd_jax.projects.toyworld import stats, study
from aotd_jax.projects.toyworld.common import DemoError
from aotd_jax.projects.toyworld.oracle_teacher import NoisyGroundTruth, swapped_clips
from configs.toyworld import demo as demo_config

# -- the intervals -------------------------------------------------------------------------------


def test_t_interval_on_known_numbers():
  ci = stats.t_interval([1, 2, 3, 4, 5])  # mean 3, sd sqrt(2.5), t(4) = 2.7764
  assert ci["mean"] == 3.0 and ci["n"] == 5
  half = 2.7764 * np.sqrt(2.5) / np.sqrt(5)
  assert ci["lo"] == pytest.approx(3 - half) and ci["hi"] == pytest.approx(3 + half)
  assert ci["lo"] == pytest.approx(1.0368, abs=1e-4)
  with pytest.raises(ValueError, match="at least 2"):
    stats.t_interval([0.5])


def test_t975_matches_scipy():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df in (1, 2, 4, 9, 30, 31, 45, 200):
    assert stats.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-4)


def test_paired_bootstrap_on_known_numbers():
  a = np.ones((3, 10))
  b = np.zeros((3, 10))
  ci = stats.paired_bootstrap(a, b, samples=200)
  assert (ci["mean"], ci["lo"], ci["hi"]) == (1.0, 1.0, 1.0)  # no spread, no width
  # one question out of 4 differs (+1) on every seed: the mean is 0.25 and the question
  # resample spreads it over {0, 0.25, 0.5, 0.75, 1}, 95 % within [0, 0.75]
  a = np.array([[1, 0, 0, 0]] * 2)
  ci = stats.paired_bootstrap(a, np.zeros_like(a), samples=4000, seed=1)
  assert ci["mean"] == 0.25 and ci["lo"] == 0.0 and ci["hi"] in (0.5, 0.75)
  # a gain on every seed but of different sizes: the interval covers the per-seed spread
  rng = np.random.default_rng(0)
  b = (rng.random((5, 200)) < 0.5).astype(float)
  a = np.maximum(b, rng.random((5, 200)) < np.array([0.05, 0.1, 0.15, 0.2, 0.25])[:, None])
  c = stats.compare(a, b, samples=2000)
  assert 0 < c["bootstrap"]["lo"] < c["mean"] < c["bootstrap"]["hi"]
  assert c["t"]["lo"] < c["mean"] < c["t"]["hi"] and len(c["per_seed"]) == 5
  with pytest.raises(ValueError, match=r"shapes \(2, 4\) and \(2, 3\)"):
    stats.paired_bootstrap(np.zeros((2, 4)), np.zeros((2, 3)))
  assert stats.fmt_interval({"mean": 0.012, "lo": -0.034, "hi": 0.056}) == "+1.2 [-3.4, +5.6]"


# -- the noisy oracle ----------------------------------------------------------------------------


def test_swapped_clips_moves_the_share_asked_and_no_clip_keeps_its_own():
  ids = [f"v{i}" for i in range(20)]
  assert swapped_clips(ids, 0.0, 0) == {}
  swap = swapped_clips(ids, 0.25, 0)
  assert len(swap) == 5 and all(k != v for k, v in swap.items())
  assert set(swap.values()) == set(swap)  # permuted among themselves
  assert swap == swapped_clips(list(reversed(ids)), 0.25, 0)  # deterministic
  one = swapped_clips(ids[:4], 0.25, 3)
  assert len(one) == 1 and list(one.values())[0] != list(one)[0]
  with pytest.raises(ValueError, match="noise=1.5"):
    swapped_clips(ids, 1.5, 0)

  class GT:
    source, video_ids = "gt", ["a", "b"]

    def frame(self, video_id, frame_id):
      return {"video": video_id, "frame": frame_id}

  noisy = NoisyGroundTruth(GT(), {"a": "b"})
  assert noisy.frame("a", 3) == {"video": "b", "frame": 3} and noisy.frame("b", 1)["video"] == "b"


# -- a 2-seed study on fake stages ---------------------------------------------------------------


def qids(world_seed: int) -> list[str]:
  """The fake world `world_seed`'s test questions: 40 + world_seed of them."""
  return [f"w{world_seed}_q{i}" for i in range(40 + world_seed)]


@pytest.fixture
def fake_stages(monkeypatch):
  """Shared stages and the student / eval stages replaced by deterministic fakes: a student
  answers question i of world w right when (i + seed + bonus) % 3 != 0, bonus = 1 for CoT
  students; world w has 40 + w test questions (w = the config's world seed)."""
  calls = []

  def shared(config, workdir, arms, log):
    cots = {
      a.cot_key: {"questions": 10, "passed_answer": 6, "passed_judge": 5, "unfiltered": 9}
      for a in arms
      if a.cot_set
    }
    calls.append(("shared", os.path.basename(workdir), int(config.world.seed)))
    return {
      "world": "w",
      "tokenizer": "t",
      "experts": {"qa": {"source": "trained"}},
      "cots": cots,
      "bases": {"base": "", "large": ""},
      "vision_dir": "",
    }

  def student_stage(cfg, armdir, name, seed, *args):
    calls.append((os.path.basename(armdir), seed))
    return {
      "name": name,
      "seed": seed,
      "steps": 7,
      "seconds": 0.1,
      "label_loss": 0.5,
      "rationale_loss": None if name == "instruct" else 1.5,
      "path": armdir,
      "protocol": cfg.students.protocol,
    }

  def eval_stage(cfg, armdir, info, world):
    bonus = 0 if info["name"] == "instruct" else 1
    q = qids(int(cfg.world.seed))
    correct = [(i + info["seed"] + bonus) % 3 != 0 for i in range(len(q))]
    return {
      "accuracy": float(np.mean(correct)),
      "per_type": {},
      "qids": q,
      "correct": correct,
      "rationales": [],
      "letters": {},
    }

  monkeypatch.setattr(study, "shared_stages", shared)
  monkeypatch.setattr(demo_run, "student_stage", student_stage)
  monkeypatch.setattr(demo_run, "eval_stage", eval_stage)
  return calls


def test_study_pairs_arms_writes_the_table_and_resumes(tmp_path, fake_stages):
  config = demo_config.get_config("micro")
  config.compilation_cache = False
  lines = []
  out = study.run_study(
    config, str(tmp_path), ["aotd", "aotd_steps"], [0, 1], epochs=1, samples=500, log=lines.append
  )
  # one world (and set of experts) per seed, drawn from world.seed + seed, made once
  assert [c for c in fake_stages if c[0] == "shared"] == [
    ("shared", "shared_w0", 0),
    ("shared", "shared_w1", 1),
  ]
  fake_stages[:] = [c for c in fake_stages if c[0] != "shared"]
  # each CoT arm brings its baseline; 4 arms x 2 seeds
  assert sorted(fake_stages) == sorted(
    (a, s) for a in ("instruct", "aotd", "instruct_steps", "aotd_steps") for s in (0, 1)
  )
  rows = {r["arm"]: r for r in out["rows"]}
  assert rows["aotd"]["baseline"] == "instruct" and rows["instruct"]["compare"] is None
  # paired per seed on its own world's questions (40 and 41): a nested bootstrap
  expected = [
    np.mean([(i + s + 1) % 3 != 0 for i in range(40 + s)])
    - np.mean([(i + s) % 3 != 0 for i in range(40 + s)])
    for s in (0, 1)
  ]
  c = rows["aotd"]["compare"]
  assert c["per_seed"] == pytest.approx(expected) and c["mean"] == pytest.approx(np.mean(expected))
  assert c["nested"] and c["bootstrap"]["seeds"] == 2 and c["bootstrap"]["questions"] == 81
  assert rows["aotd"]["cots"] == 5 and rows["aotd"]["teacher_accuracy"] == 0.6
  assert rows["aotd_steps"]["protocol"] == "steps"
  table = (tmp_path / "study.md").read_text()
  assert "| aotd |" in table and "vs instruct" in table and "vs instruct_steps" in table
  assert json.loads((tmp_path / "study.json").read_text())["questions"] == (
    "40-41 questions per world"
  )
  assert (tmp_path / "runs" / "aotd_s1.json").is_file()
  assert "<svg" in (tmp_path / "study_gain.svg").read_text()  # aotd: gain vs teacher accuracy
  # a rerun (e.g. after a kill) trains nothing that finished, and can add a seed
  fake_stages.clear()
  (tmp_path / "runs" / "aotd_s1.json").unlink()  # as if killed before this run finished
  study.run_study(
    config, str(tmp_path), ["aotd"], [0, 1, 2], epochs=1, samples=100, log=lines.append
  )
  assert sorted(fake_stages) == [
    ("aotd", 1),
    ("aotd", 2),
    ("instruct", 2),
    ("shared", "shared_w1", 1),
    ("shared", "shared_w2", 2),
  ]
  # report_only trains nothing and tables the finished runs (seeds 0-2 of aotd, instruct)
  fake_stages.clear()
  out = study.run_study(
    config,
    str(tmp_path),
    ["aotd", "aotd_steps"],
    [0, 1, 2, 3],
    epochs=1,
    samples=100,
    report_only=True,
    log=lines.append,
  )
  assert fake_stages == [] and out["seeds"] == [0, 1, 2]
  other = demo_config.get_config("micro")  # a newer config may differ: tabling still works
  other.compilation_cache, other.students.batch_size = False, 3
  assert study.run_study(
    other,
    str(tmp_path),
    ["aotd"],
    [0, 1, 2],
    epochs=1,
    samples=100,
    report_only=True,
    log=lines.append,
  )["seeds"] == [0, 1, 2]
  with pytest.raises(DemoError, match="another config"):
    study.run_study(other, str(tmp_path), ["aotd"], [3], epochs=1, log=lines.append)
  assert {r["arm"]: len(r["seeds"]) for r in out["rows"]} == {
    "instruct": 3,
    "aotd": 3,
    "instruct_steps": 2,
    "aotd_steps": 2,
  }
  with pytest.raises(DemoError, match="no finished run"):
    study.run_study(config, str(tmp_path), ["aotd"], [7], epochs=1, report_only=True)
  # a result of another arm definition is refused by name
  with pytest.raises(DemoError, match=r"instruct_s0.json was written for arm"):
    study.run_study(config, str(tmp_path), ["aotd"], [0], epochs=2, log=lines.append)


def test_study_one_world_pairs_on_shared_questions(tmp_path, fake_stages):
  """--vary=student: every seed on the world of config.world.seed, one shared directory, the
  crossed (seeds x questions) bootstrap; the judge and size arms take their own CoT set and
  student init."""
  config = demo_config.get_config("micro")
  config.compilation_cache, config.world.seed = False, 3
  out = study.run_study(
    config,
    str(tmp_path),
    ["aotd_rjudge", "aotd_large"],
    [0, 1],
    epochs=1,
    samples=100,
    vary="student",
    log=lambda s: None,
  )
  assert {c for c in fake_stages if c[0] == "shared"} == {("shared", "shared", 3)}
  rows = {r["arm"]: r for r in out["rows"]}
  assert set(rows) == {"instruct", "aotd_rjudge", "instruct_large", "aotd_large"}
  c = rows["aotd_rjudge"]["compare"]
  assert not c["nested"] and c["bootstrap"]["questions"] == 43
  assert rows["aotd_rjudge"]["judge"] == "rationale" and rows["aotd_large"]["size"] == "large"
  assert rows["aotd_large"]["baseline"] == "instruct_large"
  table = (tmp_path / "study.md").read_text()
  assert "| aotd_rjudge | agent (60 %) | 5 | rationale | base |" in table
  with pytest.raises(DemoError, match="--vary='world'"):
    study.run_study(config, str(tmp_path), ["aotd"], [0], epochs=1, vary="world")


def test_fidelity_arms_set_their_switch_and_pair_with_aotd(tmp_path, fake_stages, monkeypatch):
  """The docs/fidelity.md arms: each student trains under its one switch, paired with aotd; a
  run written before the switches (and judge, size, vary) were in its spec reads back as their
  defaults, its teacher from the shared CoTs."""
  seen = {}
  fake_student = demo_run.student_stage

  def student_stage(cfg, armdir, name, seed, *args):
    s = cfg.students
    seen[os.path.basename(armdir)] = (
      s.loss_normalization,
      demo_run.student_mixing(s),
      s.prompt_format,
      s.answer_style,
    )
    return fake_student(cfg, armdir, name, seed, *args)

  monkeypatch.setattr(demo_run, "student_stage", student_stage)
  config = demo_config.get_config("micro")
  config.compilation_cache, config.students.protocol = False, "epochs"
  names = ["aotd_sequence", "aotd_weighted", "aotd_official_prompt", "aotd_official_format"]
  out = study.run_study(
    config, str(tmp_path), names, [0], epochs=1, samples=100, vary="student", log=lambda s: None
  )
  assert seen == {
    "aotd": ("per_part", "concat_epoch", "plain", "letter_text"),
    "aotd_sequence": ("sequence", "concat_epoch", "plain", "letter_text"),
    "aotd_weighted": ("per_part", "weighted", "plain", "letter_text"),
    "aotd_official_prompt": ("per_part", "concat_epoch", "official", "letter_text"),
    "aotd_official_format": ("per_part", "concat_epoch", "official", "letter"),
  }
  rows = {r["arm"]: r for r in out["rows"]}
  assert "instruct" not in rows and rows["aotd"]["compare"] is None
  assert all(rows[n]["baseline"] == "aotd" and rows[n]["compare"]["mean"] == 0.0 for n in names)
  path = tmp_path / "runs" / "aotd_s0.json"
  old = json.loads(path.read_text())
  for key in (
    "loss_normalization",
    "mixing",
    "prompt_format",
    "answer_style",
    "judge",
    "size",
    "vary",
  ):
    del old["arm"][key]
  del old["teacher"]  # runs did not keep their teacher either: it comes from the shared CoTs
  path.write_text(json.dumps(old))
  seen.clear()
  again = study.run_study(
    config,
    str(tmp_path),
    ["aotd_sequence"],
    [0],
    epochs=1,
    samples=100,
    vary="student",
    log=lambda s: None,
  )
  assert seen == {}  # both runs read back, nothing retrained
  assert {r["arm"]: r["teacher_accuracy"] for r in again["rows"]} == {
    "aotd": 0.6,
    "aotd_sequence": 0.6,
  }
  config.students.mixing = "shuffled"
  with pytest.raises(DemoError, match=r"config.students.mixing='shuffled': expected ''"):
    demo_run.student_mixing(config.students)


def test_study_refuses_unknown_arms_and_bad_seeds(tmp_path):
  with pytest.raises(DemoError, match=r"unknown arm\(s\) \['aodt'\]"):
    study.resolve_arms(["aodt"])
  from absl import app

  from launch import cli

  with pytest.raises(app.UsageError, match="--seeds=0,x"):
    cli.parse_seeds(["0", "x"])
  with pytest.raises(app.UsageError, match="distinct"):
    cli.parse_seeds(["1", "1"])


def test_demo_protocol_counts_epochs_over_each_students_own_data():
  s = demo_config.get_config("quick").students
  assert s.protocol == "epochs"
  assert demo_run.student_steps(s, 182, 0) == -(-5 * 182 // 8)
  assert demo_run.student_steps(s, 182, 86) == -(-5 * 268 // 8)  # AoTD: its CoTs on top
  s.protocol = "steps"
  assert demo_run.student_steps(s, 182, 86) == s.steps
  s.protocol = "epoch"
  with pytest.raises(DemoError, match="protocol='epoch'"):
    demo_run.student_steps(s, 1, 1)
  s.protocol, s.epochs = "epochs", 0
  with pytest.raises(DemoError, match="epochs=0"):
    demo_run.student_steps(s, 1, 1)


def test_demo_report_prints_the_paired_difference():
  from aotd_jax.projects.toyworld import report

  a = np.array([[1, 1, 0, 1]])
  c = stats.compare(a, np.array([[1, 0, 0, 1]]), samples=200)
  (line,) = report.paired_lines({"aotd": c})
  assert line.startswith("AoTD - Instruct: +25.0 [") and "1 seed(s) x 4 questions" in line
  assert "t over seeds" not in line  # one seed: no interval over seeds
  evals = {"instruct": [{"correct": [True, False]}], "aotd": [{"correct": [True, True]}]}
  assert demo_run.paired_differences(evals)["aotd"]["mean"] == 0.5
  assert demo_run.paired_differences({"aotd": evals["aotd"]}) == {}


def test_nested_bootstrap_per_world_questions():
  # two worlds of 4 and 2 questions: per-seed gains 0.25 and 1.0, mean 0.625
  a = [np.array([1, 0, 0, 0]), np.array([1, 1])]
  b = [np.zeros(4), np.zeros(2)]
  ci = stats.nested_bootstrap(a, b, samples=4000, seed=0)
  assert ci["mean"] == 0.625 and ci["questions"] == 6 and ci["seeds"] == 2
  assert 0.0 <= ci["lo"] < 0.625 < ci["hi"] <= 1.0
  c = stats.compare(a, b, samples=200, nested=True)
  assert c["per_seed"] == [0.25, 1.0] and c["nested"] and c["t"]["n"] == 2
  # the same questions in every seed: nested and crossed agree on the mean
  x = np.array([[1, 0, 1, 1], [0, 0, 1, 1]])
  assert stats.nested_bootstrap(x, np.zeros_like(x))["mean"] == pytest.approx(
    stats.paired_bootstrap(x, np.zeros_like(x))["mean"]
  )
  with pytest.raises(ValueError, match=r"seed 1: correctness arrays of shapes \(2,\) and \(3,\)"):
    stats.nested_bootstrap(a, [np.zeros(4), np.zeros(3)])
  with pytest.raises(ValueError, match="2 and 1 seeds"):
    stats.nested_bootstrap(a, b[:1])


def test_seed_config_draws_a_world_per_seed():
  config = demo_config.get_config("micro")
  config.world.seed = 10
  assert study.seed_config(config, 3, "all").world.seed == 13
  assert study.seed_config(config, 3, "student").world.seed == 10
  assert config.world.seed == 10  # the base config is not touched
  assert study.shared_dir("W", 3, "all") == os.path.join("W", "shared_w3")
  with pytest.raises(DemoError, match="--vary='seed'"):
    study.seed_config(config, 0, "seed")
  config.students.init_from = ""
  with pytest.raises(DemoError, match="size 'large' needs config.students.init_from='qa'"):
    study.student_init(config, "W", {}, "large", "", print)
  with pytest.raises(DemoError, match="size 'huge'"):
    study.student_init(config, "W", {}, "huge", "", print)
  assert study.student_init(config, "W", {}, "base", "B", print) == "B"
