"""Sub-task harness: each scorer on a scripted expert with known, imperfect outputs (figures
computed by hand); the toy world wired end to end (the oracle reads the ground truth it is
scored against, so its 1.0 only checks the wiring: frame ids, labels, windows line up); chance
baselines equal to the IoUs of their seeded draws, recomputed here; the table; bad configs / data
reported by name."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aotd_jax.eval import subtasks
from aotd_jax.projects.toyworld import expert_scores
from aotd_jax.projects.toyworld.oracle import PLUGIN
from experts import subtasks as harness

ROLES = ("detector", "grounder", "action_recognizer", "video_qa")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  from aotd_jax.projects.toyworld import world as toyworld

  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=3, num_train=1, num_val=3, num_test=1)
  return str(out)


def _config(world, **data):
  config = harness.default_config(world, split="val")
  config.data.update(data)
  return config


@pytest.fixture(scope="module")
def results(world):
  return harness.evaluate(_config(world), plugins=[PLUGIN])


def test_oracle_wiring_scores_one_on_every_ground_truth_subtask(results):
  # a wiring check, not a scorer check (see test_scorers_on_known_imperfect_outputs)
  oracle = results["oracle"]
  assert oracle["detector"]["detection_iou"] == 1.0 and oracle["detector"]["n"] > 50
  assert oracle["grounder"]["grounding_iou"] == 1.0 and oracle["grounder"]["n"] >= 3
  assert oracle["action_recognizer"]["action_top1"] == 1.0
  gen = oracle["program_generator"]
  assert gen["program_exact"] == gen["program_normalized"] == gen["answer_match"] == 1.0
  assert gen["n"] > 0
  assert gen["step_n"] > 0 and gen["step_exact"] == gen["step_f1"] == gen["step_edit"] == 1.0


def _iou(a, b) -> float:
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _chance_scores(data, seed: int = 0) -> dict[str, float]:
  """The random detector's and grounder's figures recomputed here, independently of the
  harness's scorers: what `default_rng(seed)` draws as the baselines document (per frame and
  label, a box of width and height uniform in [0.05, 0.5] of the frame at a uniform position
  inside it; per action, the window between two uniform frame positions), scored by IoU."""
  det_rng, gr_rng = np.random.default_rng(seed), np.random.default_rng(seed)
  det, gr = [], []
  for vid in data.video_ids:
    clip = data.clip(vid)
    frames = [data.gt.frame(vid, int(f))["boxes"] for f in clip.frame_ids]
    labels = sorted({label for boxes in frames for label, _ in boxes})
    for boxes in frames if labels else []:
      drawn = {}
      for label in labels:
        w, h = det_rng.uniform(0.05, 0.5, 2) * (clip.width, clip.height)
        x, y = det_rng.uniform(0, 1, 2) * (clip.width - w, clip.height - h)
        drawn[label] = (x, y, x + w, y + h)
      det += [_iou(drawn[label], box) for label, box in boxes]
    for _, runs in sorted(subtasks.action_runs(data.gt, vid, clip.frame_ids).items()):
      a, b = sorted(gr_rng.integers(0, len(clip), 2))
      lo, hi = int(clip.frame_ids[a]), int(clip.frame_ids[b]) + 1
      gr.append(max(max(0, min(hi, e) - max(lo, s)) / (max(hi, e) - min(lo, s)) for s, e in runs))
  return {"detection_iou": float(np.mean(det)), "grounding_iou": float(np.mean(gr))}


def test_random_baselines_on_hand_data():
  """Chance on the hand data (6 frames of 8x8, boxes (0,0,2,2) and (0,0,4,4)): the figures
  are the IoUs of what seed 0 draws, computed in `_chance_scores`."""
  data = _hand_data()
  want = _chance_scores(data)
  det = subtasks.score_detector(harness.RandomDetector(0), data)
  gr = subtasks.score_grounder(harness.RandomGrounder(0), data)
  assert det["n"] == 9 and det["detection_iou"] == pytest.approx(want["detection_iou"])
  assert gr["n"] == 2 and gr["grounding_iou"] == pytest.approx(want["grounding_iou"])


def test_random_baseline_scores_chance(world, results):
  rnd, oracle = results["random"], results["oracle"]
  want = _chance_scores(harness.load_data(_config(world).data, plugins=[PLUGIN]))
  assert rnd["detector"]["detection_iou"] == pytest.approx(want["detection_iou"])
  assert rnd["grounder"]["grounding_iou"] == pytest.approx(want["grounding_iou"])
  assert rnd["action_recognizer"]["action_top1"] < 0.7
  assert rnd["program_generator"]["program_normalized"] < 1.0
  for role, key in [
    ("detector", "detection_iou"),
    ("grounder", "grounding_iou"),
    ("action_recognizer", "action_top1"),
  ]:
    assert rnd[role][key] < oracle[role][key] - 0.3, (role, rnd[role][key])


def test_table_has_a_row_per_subtask_and_a_column_per_candidate(results):
  table = subtasks.subtask_table(results)
  lines = table.splitlines()
  assert lines[0].split()[-2:] == ["oracle", "random"]
  for task in (
    "program generation",
    "object detection",
    "temporal grounding",
    "action recognition",
    "video QA",
  ):
    assert any(line.startswith(task) for line in lines), task
  det = next(l for l in lines if l.startswith("object detection") and " IoU " in l)
  assert det.split()[-2] == "1.000"
  # a role a candidate does not have is shown as "-"
  partial = {"a": {"detector": {"detection_iou": 0.5}}, "b": {}}
  assert subtasks.subtask_table(partial).splitlines()[2].split()[-2:] == ["0.500", "-"]


def test_metrics_helpers():
  assert subtasks.box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
  assert subtasks.window_iou((0, 4), (2, 6)) == pytest.approx(2 / 6)
  assert subtasks.window_iou((0, 0), (2, 6)) == 0.0
  a = "def f(x):\n    '''doc'''\n    return x+1\n"
  assert subtasks.normalize_program(a) == subtasks.normalize_program("def f(x):  return (x + 1)")
  assert subtasks.normalize_program("def (") is None


def test_star_format_with_blank_frames(world):
  """STAR-format data (situations only, no videos): oracle and chance still score."""
  config = harness.default_config(os.path.join(world, "val.json"), kind="star")
  config.data.blank_frames = True
  for name in ("oracle", "random"):
    config.candidates[name].program_generator = {"kind": "gold"}  # keep this test short
  del config.candidates.random.program_generator
  res = harness.evaluate(config, plugins=[PLUGIN])
  assert res["oracle"]["detector"]["detection_iou"] == 1.0
  assert res["oracle"]["grounder"]["grounding_iou"] == 1.0
  want = _chance_scores(harness.load_data(config.data, plugins=[PLUGIN]))
  assert res["random"]["detector"]["detection_iou"] == pytest.approx(want["detection_iou"])


@pytest.mark.parametrize(
  "edit,msg",
  [
    (
      lambda c: c.candidates.oracle.update({"segmenter": {"kind": "sam"}}),
      r"candidates.oracle has unknown section\(s\) \['segmenter'\]",
    ),
    (
      lambda c: c.candidates.random.detector.update({"kind": "yolo"}),
      r"candidates.random: experts config: detector.kind='yolo' is not one of",
    ),
    (
      lambda c: c.candidates.random.program_generator.update({"kind": "gpt"}),
      r"candidates.random: program_generator.kind='gpt'",
    ),
    (
      lambda c: c.candidates.random.program_generator.update({"kind": "llama"}),
      r"program_generator.path is required for kind 'llama'",
    ),
    (
      lambda c: c.candidates.random.grounder.update({"kind": "univtg"}),
      r"candidates.random: .*grounder",
    ),
    (lambda c: c.data.update({"kind": "kinetics"}), r"data.kind='kinetics' is not one of"),
    (lambda c: c.data.update({"path": ""}), r"data.path is required"),
    (lambda c: c.data.update({"split": "dev"}), r"dev.json not found"),
    (lambda c: setattr(c, "candidates", {}), r"`candidates` is empty"),
  ],
)
def test_bad_config_is_reported_by_name(world, edit, msg):
  config = _config(world)
  edit(config)
  with pytest.raises((ValueError, FileNotFoundError), match=msg):
    harness.evaluate(config, plugins=[PLUGIN])


def test_missing_video_file_names_the_file(world, tmp_path):
  import shutil

  copy = tmp_path / "w"
  shutil.copytree(world, copy)
  vid = json.load(open(copy / "world.json"))["splits"]["val"][0]
  os.remove(copy / "videos" / f"{vid}.mp4")
  config = harness.default_config(str(copy), split="val")
  config.candidates = {"random": {"detector": {"kind": "random"}}}
  with pytest.raises(FileNotFoundError, match=f"no video file .*{vid}.mp4"):
    harness.evaluate(config, plugins=[PLUGIN])


def test_launcher_prints_the_table(world, tmp_path):
  out = tmp_path / "W" / "res.json"  # docs/reproduce.md's W/subtasks.json: W made by the launcher
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.eval_subtasks",
      f"--data={world}",
      "--split=val",
      f"--out={out}",
    ],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "PYTHONPATH": root},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "temporal grounding" in proc.stdout and "oracle" in proc.stdout
  assert json.load(open(out))["oracle"]["detector"]["detection_iou"] == 1.0


def test_score_experts_without_trained_models_gives_chance(world):
  scores = expert_scores.score_experts(world, {}, split="val")
  assert scores["detection_iou"] is None and scores["program_accuracy"] is None
  want = _chance_scores(harness.load_data(_config(world).data, plugins=[PLUGIN]))
  assert scores["random"]["detection_iou"] == pytest.approx(want["detection_iou"])
  assert scores["random"]["grounding_iou"] == pytest.approx(want["grounding_iou"])
  assert "random" in scores["table"]


# -- the scorers on an expert with known, imperfect outputs (every figure computed by hand) -----


def _hand_data():
  """One 6-frame video (fps 1): frames 0-2 show a cup, "hold cup"; frames 3-5 the cup and a
  box, "open box". Two questions (gold A, gold B) with annotated programs."""
  from aotd_jax.data.annotations import VideoQA
  from experts.backends.oracle import GroundTruth
  from experts.clip import VideoClip

  gt = GroundTruth("hand")
  for f in range(6):
    boxes = [("cup", (0, 0, 2, 2))] + ([("box", (0, 0, 4, 4))] if f >= 3 else [])
    gt.add_frame("v", f, boxes, ["hold cup"] if f < 3 else ["open box"])
  first = (
    "def execute_command(video_clip, query, possible_answers):\n    return possible_answers[0]\n"
  )
  records = [
    VideoQA("q1", "v", "what is held?", ["cup", "box"], "cup", 0, meta={"question_program": first}),
    VideoQA(
      "q2", "v", "what is opened?", ["cup", "box"], "box", 1, meta={"question_program": first}
    ),  # an annotated program that answers wrong
    VideoQA("q3", "v", "what is last?", ["cup", "box"], "box", 1, meta={"question_program": first}),
  ]
  frames = np.zeros((6, 8, 8, 3), np.uint8)
  return subtasks.SubtaskData(records, gt, lambda vid: VideoClip(frames, fps=1.0, video_id=vid))


class _ScriptedExperts:
  """Detects the cup shifted by one pixel everywhere (IoU 1/3) and the box on frame 5 only;
  grounds "hold cup" at [0, 2) (IoU 2/3) and "open box" at [0, 3) (IoU 0); always recognizes
  "open box"; always answers "(A)"."""

  def detect(self, clip, queries, *, threshold):
    from experts.backends.protocols import Box

    assert sorted(queries) == ["box", "cup"]
    return [
      [Box(int(f), "cup", 0.9, (1, 0, 3, 2))]
      + ([Box(int(f), "box", 0.8, (0, 0, 4, 4))] if f == 5 else [])
      for f in clip.frame_ids
    ]

  def ground(self, clip, query, *, top_k=1):
    from experts.backends.protocols import Window

    return [Window(0, 2, 1.0, query)] if query == "hold cup" else [Window(0, 3, 1.0, query)]

  def recognize(self, clip, object_name=None, candidates=None, **kw):
    return ["open box"]

  def answer(self, clip, question, choices=None):
    return "(A)"


def test_scorers_on_known_imperfect_outputs():
  data, ex = _hand_data(), _ScriptedExperts()
  # 9 (frame, object) pairs: 6 cups at IoU 1/3, boxes at 0, 0, 1 -> mean 3/9, one >= 0.5
  det = subtasks.score_detector(ex, data)
  assert det["n"] == 9
  assert det["detection_iou"] == pytest.approx(1 / 3) and det["detection_ap50"] == pytest.approx(
    1 / 9
  )
  # runs: hold cup [0, 3), open box [3, 6); windows [0, 2) -> 2/3 and [0, 3) -> 0
  assert subtasks.action_runs(data.gt, "v", range(6)) == {
    "hold cup": [(0, 3)],
    "open box": [(3, 6)],
  }
  gr = subtasks.score_grounder(ex, data)
  assert gr == {"grounding_iou": pytest.approx(1 / 3), "grounding_r50": 0.5, "n": 2}
  # "open box" is right on its own run only
  assert subtasks.score_action_recognizer(ex, data) == {"action_top1": 0.5, "n": 2}
  # "(A)" = cup: right for q1 only
  assert subtasks.score_qa(ex, data) == {"qa_accuracy": pytest.approx(1 / 3), "n": 3}


def test_program_scorer_on_known_programs():
  data = _hand_data()
  gold = data.records[0].meta["question_program"]
  # q1: the gold program reformatted (normalised match, right answer); q2: the gold program
  # verbatim, whose answer (cup) is wrong; q3: nothing generated.
  generated = [
    gold.replace("return possible_answers[0]", "return (possible_answers[0])  # A"),
    gold,
    None,
  ]
  got = subtasks.score_program_generator(lambda recs: generated, data, tools={})
  # the gold program calls no tool: no step to compare (step_n 0, the step columns NaN)
  steps = {k: got.pop(k) for k in ("step_exact", "step_f1", "step_edit")}
  assert all(v != v for v in steps.values())
  assert got == {
    "program_exact": pytest.approx(1 / 3),
    "program_normalized": pytest.approx(2 / 3),
    "answer_accuracy": pytest.approx(1 / 3),
    "answer_match": pytest.approx(2 / 3),
    "n": 3,
    "step_n": 0,
    "unknown_star_functions": [],
  }
  with pytest.raises(ValueError, match="returned 2 programs for 3 questions"):
    subtasks.score_program_generator(lambda recs: generated[:2], data, tools={})
