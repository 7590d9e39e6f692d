"""The sub-task harness: AoTD's first step, choosing the best expert for each sub-task.

On annotated data (STAR's `question_program` + `situations`, or a project's data in the same
format, such as the toy world's) each candidate is scored per sub-task:

  program generation   exact / normalised match with the annotated program (Python), the
                       match of their normalised step sequences (exact, F1, edit similarity;
                       STAR's list form too: `aotd_jax.eval.program_match`, our choice), and
                       the answer its execution (`aotd_jax.agent.run_program`, oracle tools)
                       gives
  detection            per annotated frame and object: best IoU of the boxes returned for the
                       object's name against its ground-truth box (0 when none)
  temporal grounding   per (video, action): IoU of the top-1 window with the annotated run
                       of frames where the action happens (best over its runs)
  action recognition   per annotated action run: is the top-1 of `recognize(run, candidates)`
                       an action annotated in the run (candidates: the run's actions plus
                       distractors from the dataset, `num_action_choices` in all; 0, STAR's
                       default: every action class, the paper's top-1)
  video QA             multiple-choice accuracy of `answer(clip, question, choices)`

The harness takes the experts as arguments (`score_candidate(experts, data, ...)`: objects
with the `experts.backends.protocols` methods); building them from a config is
`experts.subtasks.evaluate`. `subtask_table(results)` prints the paper's table (sub-task x
candidate).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aotd_jax.agent import filters, run_program
from aotd_jax.eval import program_match
from aotd_jax.eval.metrics import box_iou, window_iou  # noqa: F401 (re-exported)

# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SubtaskData:
  """Questions, per-frame ground truth and a clip loader for the videos they refer to.

  records: `VideoQA` list (STAR reader); `meta["question_program"]` is the annotated program.
  gt: ground truth with `frame(video_id, frame_id)` -> {boxes, actions} and `video_ids`
    (`experts.backends.oracle.GroundTruth`).
  load_clip: video_id -> `experts.VideoClip` covering the annotated frames (source frame ids).
  """

  records: list
  gt: Any
  load_clip: Callable[[str], Any]
  _clips: dict = dataclasses.field(default_factory=dict)

  def clip(self, video_id: str):
    """The video's clip (loaded once)."""
    if video_id not in self._clips:
      self._clips[video_id] = self.load_clip(video_id)
    return self._clips[video_id]

  @property
  def video_ids(self) -> list[str]:
    """Videos that have both questions and ground truth, in question order."""
    have = set(self.gt.video_ids)
    return list(dict.fromkeys(r.video_id for r in self.records if r.video_id in have))


# -- metrics -----------------------------------------------------------------------------------


def action_runs(gt, video_id: str, frame_ids: Sequence[int]) -> dict[str, list[tuple[int, int]]]:
  """{action: [start, end) windows of consecutive annotated frames where it runs}."""
  runs: dict[str, list[list[int]]] = {}
  prev = None
  for f in frame_ids:
    for a in gt.frame(video_id, int(f))["actions"]:
      r = runs.setdefault(a, [])
      if r and prev is not None and r[-1][1] == int(prev) + 1:
        r[-1][1] = int(f) + 1
      else:
        r.append([int(f), int(f) + 1])
    prev = f
  return {a: [tuple(w) for w in ws] for a, ws in runs.items()}


def _mean(xs) -> float:
  xs = list(xs)
  return float(np.mean(xs)) if xs else float("nan")


def score_detector(
  detector, data: SubtaskData, *, threshold: float = 0.1, max_frames: int = 0
) -> dict[str, float]:
  """Mean best-match box IoU per (annotated frame, object), queried by the object's name."""
  ious = []
  for vid in data.video_ids:
    clip = data.clip(vid)
    if max_frames and len(clip) > max_frames:
      clip = clip.select(np.linspace(0, len(clip) - 1, max_frames).round().astype(int))
    labels = sorted({l for f in clip.frame_ids for l, _ in data.gt.frame(vid, int(f))["boxes"]})
    if not labels:
      continue
    found = detector.detect(clip, labels, threshold=threshold)
    for f, boxes in zip(clip.frame_ids, found):
      for label, gt_box in data.gt.frame(vid, int(f))["boxes"]:
        ious.append(max((box_iou(b.box, gt_box) for b in boxes if b.label == label), default=0.0))
  return {
    "detection_iou": _mean(ious),
    "detection_ap50": _mean(i >= 0.5 for i in ious),
    "n": len(ious),
  }


def score_grounder(grounder, data: SubtaskData) -> dict[str, float]:
  """Mean temporal IoU of the top-1 window per (video, action), and recall at IoU 0.5."""
  ious = []
  for vid in data.video_ids:
    clip = data.clip(vid)
    for action, runs in sorted(action_runs(data.gt, vid, clip.frame_ids).items()):
      pred = grounder.ground(clip, action, top_k=1)
      w = (pred[0].start_frame, pred[0].end_frame) if pred else (0, 0)
      ious.append(max(window_iou(w, r) for r in runs))
  return {
    "grounding_iou": _mean(ious),
    "grounding_r50": _mean(i >= 0.5 for i in ious),
    "n": len(ious),
  }


def score_action_recognizer(
  recognizer,
  data: SubtaskData,
  *,
  num_action_choices: int = 4,
  seed: int = 0,
  action_classes: Sequence[str] | None = None,
) -> dict[str, float]:
  """Top-1 accuracy on each annotated action run, among the run's actions plus distractors
  (`num_action_choices` in all), or with `num_action_choices=0` among every action class (the
  paper's top-1 over STAR's classes: `action_classes`, else every action the data annotates)."""
  if num_action_choices < 0:
    raise ValueError(f"num_action_choices={num_action_choices}: must be >= 0 (0: all classes)")
  rng = np.random.default_rng(seed)
  vocab = sorted(
    {a for vid in data.video_ids for a in action_runs(data.gt, vid, data.clip(vid).frame_ids)}
  )
  if num_action_choices == 0:
    classes = list(action_classes) if action_classes else vocab
    missing = sorted(set(vocab) - set(classes))
    if missing:
      raise ValueError(
        f"action recognition: annotated actions {missing[:3]} are not among the "
        f"{len(classes)} action classes"
      )
  hits = []
  for vid in data.video_ids:
    clip = data.clip(vid)
    for action, runs in sorted(action_runs(data.gt, vid, clip.frame_ids).items()):
      for start, end in runs:
        run = clip.select(clip.positions_in(start, end), start_frame=start, end_frame=end)
        truth = {a for f in run.frame_ids for a in data.gt.frame(vid, int(f))["actions"]}
        if num_action_choices == 0:
          top = recognizer.recognize(run, None, classes)
          hits.append(bool(top) and top[0] in truth)
          continue
        others = [a for a in vocab if a not in truth]
        k = max(0, min(num_action_choices - 1, len(others)))
        cands = [action] + [others[int(i)] for i in rng.choice(len(others), k, replace=False)]
        cands = [cands[int(i)] for i in rng.permutation(len(cands))]
        top = recognizer.recognize(run, None, cands)
        hits.append(bool(top) and top[0] in truth)
  return {"action_top1": _mean(hits), "n": len(hits)}


def _question_clip(data: SubtaskData, record):
  clip = data.clip(record.video_id)
  if record.start is None or record.end is None:
    return clip
  lo, hi = int(round(record.start * clip.fps)), int(round(record.end * clip.fps))
  return clip.select(clip.positions_in(lo, hi), start_frame=lo, end_frame=hi)


def score_qa(video_qa, data: SubtaskData) -> dict[str, float]:
  """Multiple-choice accuracy of the video-QA model on the annotated questions."""
  hits = []
  for r in data.records:
    if not r.choices or r.video_id not in set(data.gt.video_ids):
      continue
    pred = video_qa.answer(_question_clip(data, r), r.question, list(r.choices))
    v = filters.check_answer(pred, r.choices, r.answer, r.answer_index)
    hits.append(bool(v and v.passed))
  return {"qa_accuracy": _mean(hits), "n": len(hits)}


def normalize_program(source: str) -> str | None:
  """Canonical text of a program: parsed and unparsed (layout, quotes, comments dropped)."""
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return None
  for node in ast.walk(tree):  # docstrings do not change what a program does
    body = getattr(node, "body", None)
    if (
      isinstance(body, list)
      and body
      and isinstance(body[0], ast.Expr)
      and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)
    ):
      node.body = body[1:] or [ast.Pass()]
  return ast.unparse(tree)


def score_program_generator(
  generate: Callable[[list], list[str | None]],
  data: SubtaskData,
  tools: Mapping[str, Callable],
  *,
  program_key: str = "question_program",
  timeout_s: float = 10.0,
) -> dict[str, float]:
  """Generated vs annotated programs: exact and normalised match, executed-answer match.

  generate: [VideoQA] -> program sources (None when nothing usable was produced).
  tools: the tools the programs run on (the oracle, so that only the program is judged).
  `answer_accuracy`: the generated program's answer is the correct choice; `answer_match`:
  it equals the annotated program's own executed answer. `step_exact`, `step_f1`,
  `step_edit`: the programs' normalised step sequences compared (`program_match`; over the
  questions whose annotated program has a step, `step_n` of them), for Python and for STAR's
  list form (`[{"function", "value_input"}, ...]`); STAR functions outside
  `program_match.STAR_STEPS` are listed under `unknown_star_functions`. A list-form program
  cannot be text-matched or run: such questions count for neither `program_exact` /
  `program_normalized` nor `answer_match`. A generator's non-string output counts as nothing
  generated.
  """
  records = [
    r
    for r in data.records
    if isinstance(r.meta.get(program_key), (str, list)) and r.video_id in set(data.gt.video_ids)
  ]
  if not records:
    return {
      "program_exact": float("nan"),
      "program_normalized": float("nan"),
      "answer_accuracy": float("nan"),
      "answer_match": float("nan"),
      "step_exact": float("nan"),
      "step_f1": float("nan"),
      "step_edit": float("nan"),
      "n": 0,
      "step_n": 0,
      "unknown_star_functions": [],
    }
  sources = list(generate(records))
  if len(sources) != len(records):
    raise ValueError(
      f"program generator returned {len(sources)} programs for {len(records)} questions"
    )
  exact, norm, correct, match = [], [], [], []
  steps: dict[str, list[float]] = {"step_exact": [], "step_f1": [], "step_edit": []}
  unknown: set[str] = set()
  for r, src in zip(records, sources):
    gold = r.meta[program_key]
    src = src if isinstance(src, str) else None
    if isinstance(gold, str):
      gold_steps = program_match.python_steps(gold)
    else:
      try:
        gold_steps, missing = program_match.star_steps(gold)
      except ValueError as e:
        raise ValueError(f"question {r.qid}: {program_key}: {e}") from None
      unknown.update(missing)
    if gold_steps:
      pred_steps = program_match.python_steps(src) if src is not None else None
      for k, v in program_match.step_scores(pred_steps, gold_steps).items():
        steps[k].append(v)
    args = lambda: {
      "video_clip": _question_clip(data, r),
      "query": r.question,
      "possible_answers": list(r.choices),
    }
    got = run_program(src, tools, args(), timeout_s=timeout_s) if src else None
    ok = got is not None and got.ok
    v = filters.check_answer(got.value, r.choices, r.answer, r.answer_index) if ok else None
    correct.append(bool(v and v.passed))
    if not isinstance(gold, str):  # STAR's list form: nothing to match or run
      continue
    exact.append(src is not None and src.strip() == gold.strip())
    norm.append(
      src is not None
      and normalize_program(src) is not None
      and normalize_program(src) == normalize_program(gold)
    )
    ref = run_program(gold, tools, args(), timeout_s=timeout_s)
    match.append(ok and ref.ok and str(got.value) == str(ref.value))
  return {
    "program_exact": _mean(exact),
    "program_normalized": _mean(norm),
    "answer_accuracy": _mean(correct),
    "answer_match": _mean(match),
    **{k: _mean(v) for k, v in steps.items()},
    "n": len(records),
    "step_n": len(steps["step_exact"]),
    "unknown_star_functions": sorted(unknown),
  }


# -- one candidate -----------------------------------------------------------------------------


def score_candidate(
  experts,
  data: SubtaskData,
  *,
  generate: Callable | None = None,
  tools: Mapping[str, Callable] | None = None,
  threshold: float = 0.1,
  max_frames: int = 0,
  num_action_choices: int = 4,
  action_classes: Sequence[str] | None = None,
) -> dict[str, dict]:
  """Scores one candidate on every sub-task it has an expert for.

  experts: anything with `detector`, `grounder`, `action_recognizer`, `video_qa` attributes
  (None = not scored), e.g. an `experts.Toolbox`. generate: the program generator (None = not
  scored), its programs executed on `tools`. action_classes: see `score_action_recognizer`.
  """
  out = {}
  if generate is not None:
    out["program_generator"] = score_program_generator(generate, data, tools or {})
  if getattr(experts, "detector", None) is not None:
    out["detector"] = score_detector(
      experts.detector, data, threshold=threshold, max_frames=max_frames
    )
  if getattr(experts, "grounder", None) is not None:
    out["grounder"] = score_grounder(experts.grounder, data)
  if getattr(experts, "action_recognizer", None) is not None:
    out["action_recognizer"] = score_action_recognizer(
      experts.action_recognizer,
      data,
      num_action_choices=num_action_choices,
      action_classes=action_classes,
    )
  if getattr(experts, "video_qa", None) is not None:
    out["video_qa"] = score_qa(experts.video_qa, data)
  return out


ROWS = (  # (sub-task, role, metric key, shown metric name)
  ("program generation", "program_generator", "program_normalized", "program match"),
  ("program generation", "program_generator", "step_exact", "step match"),
  ("program generation", "program_generator", "step_f1", "step F1"),
  ("program generation", "program_generator", "step_edit", "step edit sim."),
  ("program generation", "program_generator", "answer_accuracy", "executed-answer acc"),
  ("object detection", "detector", "detection_iou", "IoU"),
  ("object detection", "detector", "detection_ap50", "IoU>=0.5"),
  ("temporal grounding", "grounder", "grounding_iou", "IoU"),
  ("temporal grounding", "grounder", "grounding_r50", "R@0.5"),
  ("action recognition", "action_recognizer", "action_top1", "top-1"),
  ("video QA", "video_qa", "qa_accuracy", "accuracy"),
)


def subtask_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
  """The paper's table: one row per (sub-task, metric), one column per candidate."""
  names = list(results)
  rows = [r for r in ROWS if any(r[1] in results[n] for n in names)]
  head = ["sub-task", "metric"] + names
  body = []
  for task, role, key, shown in rows:
    cells = []
    for n in names:
      v = results[n].get(role, {}).get(key)
      cells.append("-" if v is None or v != v else f"{v:.3f}")
    body.append([task, shown] + cells)
  widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
  fmt = lambda r: "  ".join(
    str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
  )
  lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
  return "\n".join(lines)
