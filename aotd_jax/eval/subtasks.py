"""The sub-task harness: AoTD's first step, choosing the best expert for each sub-task.

On annotated data (STAR's `question_program` + `situations`, or the toy world, which writes
the same format plus every frame's ground truth) each candidate is scored per sub-task:

  program generation   exact / normalised match with the annotated program, and the
                       answer its execution (`aotd_jax.agent.run_program`, oracle tools) gives
  detection            per annotated frame and object: best IoU of the boxes returned for the
                       object's name against its ground-truth box (0 when none)
  temporal grounding   per (video, action): IoU of the top-1 window with the annotated run
                       of frames where the action happens (best over its runs)
  action recognition   per annotated action run: is the top-1 of `recognize(run, candidates)`
                       an action annotated in the run (candidates: the run's actions plus
                       distractors from the dataset, `num_action_choices` in all; 0, STAR's
                       default: every action class, the paper's top-1)
  video QA             multiple-choice accuracy of `answer(clip, question, choices)`

`subtask_table(results)` prints the paper's table (sub-task x candidate). The `random`
backends (`RANDOM_FACTORIES`) give the chance row of every sub-task.
"""
from __future__ import annotations

import ast
import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aotd_jax.eval.metrics import box_iou, window_iou  # noqa: F401 (re-exported)
from experts.backends.protocols import Box, Window

# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SubtaskData:
  """Questions, per-frame ground truth and a clip loader for the videos they refer to.

  records: `VideoQA` list (STAR reader); `meta["question_program"]` is the annotated program.
  gt: `experts.backends.oracle.GroundTruth` (boxes and running actions per frame).
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


def _video_loader(video_dir: str, ext: str, gt, fps: float | None) -> Callable[[str], Any]:
  """video_id -> VideoClip of its annotated frames, decoded from `video_dir/<id><ext>`."""
  from aotd_jax.data import video
  from experts.clip import VideoClip

  def load(video_id: str):
    ids = np.asarray(sorted(gt._frames[video_id]), np.int64)  # annotated source frames
    path = os.path.join(video_dir, f"{video_id}{ext}")
    if not os.path.exists(path):
      raise FileNotFoundError(f"sub-task data: no video file {path} for video {video_id!r} "
                              "(set data.video_dir, or data.blank_frames=True for oracles)")
    info = video.probe(path)
    ids = ids[ids < info.num_frames]
    frames = video.decode_frames(path, ids)
    return VideoClip(frames, start_frame=int(ids[0]), end_frame=int(ids[-1]) + 1,
                     fps=fps or info.fps, video_id=video_id, frame_ids=ids)
  return load


def _blank_loader(gt, size: int, fps: float) -> Callable[[str], Any]:
  """Clips of black frames: enough for ground-truth and random candidates, no video files."""
  from experts.clip import VideoClip

  def load(video_id: str):
    ids = np.asarray(sorted(gt._frames[video_id]), np.int64)
    return VideoClip(np.zeros((len(ids), size, size, 3), np.uint8), start_frame=int(ids[0]),
                     end_frame=int(ids[-1]) + 1, fps=fps, video_id=video_id, frame_ids=ids)
  return load


def load_data(data) -> SubtaskData:
  """`SubtaskData` from a config section (see `launch/eval_subtasks.py`).

  kind "toyworld": path = a generated world directory, split = train|val|test.
  kind "star": path = a STAR-format JSON file, video_dir / video_ext for the videos,
  classes_dir for STAR's class lists (optional). `max_videos` keeps the first videos only.
  """
  from aotd_jax.data import annotations
  from experts.backends import oracle
  get = lambda k, d=None: data.get(k, d) if hasattr(data, "get") else getattr(data, k, d)
  kind, path = get("kind", "toyworld"), get("path", "")
  if not path:
    raise ValueError("sub-task data: data.path is required (a toy-world directory or a STAR "
                     "JSON file)")
  if kind == "toyworld":
    import json
    split = get("split", "val")
    qpath = os.path.join(path, f"{split}.json")
    if not os.path.exists(qpath):
      raise FileNotFoundError(f"sub-task data: {qpath} not found (data.path must be a "
                              "generated toy world; data.split one of train|val|test)")
    with open(os.path.join(path, "world.json")) as f:
      world = json.load(f)
    records = list(annotations.read("star", qpath))
    wanted = set(world["splits"][split])
    from aotd_jax.projects.toyworld import world as toyworld
    truths = {k: v for k, v in toyworld.load_ground_truth(path).items() if k in wanted}
    gt = oracle.GroundTruth.from_toyworld(truths)
    video_dir, ext, fps = os.path.join(path, "videos"), ".mp4", float(world["fps"])
    size = int(world["size"])
  elif kind == "star":
    if not os.path.exists(path):
      raise FileNotFoundError(f"sub-task data: STAR file {path} not found")
    records = list(annotations.read("star", path))
    gt = oracle.GroundTruth.from_star(path, get("classes_dir", "") or None)
    video_dir, ext, fps, size = get("video_dir", ""), get("video_ext", ".mp4"), None, 224
  else:
    raise ValueError(f"sub-task data: data.kind={kind!r} is not one of ['toyworld', 'star']")
  max_videos = int(get("max_videos", 0) or 0)
  if max_videos:
    keep = set(list(dict.fromkeys(r.video_id for r in records))[:max_videos])
    records = [r for r in records if r.video_id in keep]
  if get("blank_frames", False):
    loader = _blank_loader(gt, size, fps or 30.0)
  else:
    loader = _video_loader(video_dir, ext, gt, fps)
  return SubtaskData(records=records, gt=gt, load_clip=loader)


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


def score_detector(detector, data: SubtaskData, *, threshold: float = 0.1,
                   max_frames: int = 0) -> dict[str, float]:
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
        ious.append(max((box_iou(b.box, gt_box) for b in boxes if b.label == label),
                        default=0.0))
  return {"detection_iou": _mean(ious), "detection_ap50": _mean(i >= 0.5 for i in ious),
          "n": len(ious)}


def score_grounder(grounder, data: SubtaskData) -> dict[str, float]:
  """Mean temporal IoU of the top-1 window per (video, action), and recall at IoU 0.5."""
  ious = []
  for vid in data.video_ids:
    clip = data.clip(vid)
    for action, runs in sorted(action_runs(data.gt, vid, clip.frame_ids).items()):
      pred = grounder.ground(clip, action, top_k=1)
      w = (pred[0].start_frame, pred[0].end_frame) if pred else (0, 0)
      ious.append(max(window_iou(w, r) for r in runs))
  return {"grounding_iou": _mean(ious), "grounding_r50": _mean(i >= 0.5 for i in ious),
          "n": len(ious)}


def score_action_recognizer(recognizer, data: SubtaskData, *, num_action_choices: int = 4,
                            seed: int = 0,
                            action_classes: Sequence[str] | None = None) -> dict[str, float]:
  """Top-1 accuracy on each annotated action run, among the run's actions plus distractors
  (`num_action_choices` in all), or with `num_action_choices=0` among every action class (the
  paper's top-1 over STAR's classes: `action_classes`, else every action the data annotates)."""
  if num_action_choices < 0:
    raise ValueError(f"num_action_choices={num_action_choices}: must be >= 0 (0: all classes)")
  rng = np.random.default_rng(seed)
  vocab = sorted({a for vid in data.video_ids
                  for a in action_runs(data.gt, vid, data.clip(vid).frame_ids)})
  if num_action_choices == 0:
    classes = list(action_classes) if action_classes else vocab
    missing = sorted(set(vocab) - set(classes))
    if missing:
      raise ValueError(f"action recognition: annotated actions {missing[:3]} are not among the "
                       f"{len(classes)} action classes")
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
  from aotd_jax.agent import filters
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
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  return ast.unparse(tree)


def score_program_generator(generate: Callable[[list], list[str | None]], data: SubtaskData,
                            tools: Mapping[str, Callable], *, program_key: str = "question_program",
                            timeout_s: float = 10.0) -> dict[str, float]:
  """Generated vs annotated programs: exact and normalised match, executed-answer match.

  generate: [VideoQA] -> program sources (None when nothing usable was produced).
  tools: the tools the programs run on (the oracle, so that only the program is judged).
  `answer_accuracy`: the generated program's answer is the correct choice; `answer_match`:
  it equals the annotated program's own executed answer. STAR annotates its programs in its
  own list form (`[{"function", "value_input"}, ...]`), not as Python: such questions count
  for `answer_accuracy` only (the match and `answer_match` need a Python program to compare
  with or run); a generator's non-string output counts as nothing generated.
  """
  from aotd_jax.agent import filters, run_program
  records = [r for r in data.records if isinstance(r.meta.get(program_key), (str, list))
             and r.video_id in set(data.gt.video_ids)]
  if not records:
    return {"program_exact": float("nan"), "program_normalized": float("nan"),
            "answer_accuracy": float("nan"), "answer_match": float("nan"), "n": 0}
  sources = list(generate(records))
  if len(sources) != len(records):
    raise ValueError(f"program generator returned {len(sources)} programs for "
                     f"{len(records)} questions")
  exact, norm, correct, match = [], [], [], []
  for r, src in zip(records, sources):
    gold = r.meta[program_key]
    src = src if isinstance(src, str) else None
    args = lambda: {"video_clip": _question_clip(data, r), "query": r.question,
                    "possible_answers": list(r.choices)}
    got = run_program(src, tools, args(), timeout_s=timeout_s) if src else None
    ok = got is not None and got.ok
    v = filters.check_answer(got.value, r.choices, r.answer, r.answer_index) if ok else None
    correct.append(bool(v and v.passed))
    if not isinstance(gold, str):  # STAR's list form: nothing to match or run
      continue
    exact.append(src is not None and src.strip() == gold.strip())
    norm.append(src is not None and normalize_program(src) is not None
                and normalize_program(src) == normalize_program(gold))
    ref = run_program(gold, tools, args(), timeout_s=timeout_s)
    match.append(ok and ref.ok and str(got.value) == str(ref.value))
  return {"program_exact": _mean(exact), "program_normalized": _mean(norm),
          "answer_accuracy": _mean(correct), "answer_match": _mean(match), "n": len(records)}


# -- random baselines --------------------------------------------------------------------------


class RandomDetector:
  """Chance detection: one box per query and frame, uniform position and size."""

  def __init__(self, seed: int = 0, name: str = "random"):
    self.rng, self.name = np.random.default_rng(seed), name

  def detect(self, clip, queries, *, threshold: float = 0.0) -> list[list[Box]]:
    out = []
    for f in clip.frame_ids:
      boxes = []
      for q in queries:
        w, h = self.rng.uniform(0.05, 0.5, 2) * (clip.width, clip.height)
        x, y = self.rng.uniform(0, 1, 2) * (clip.width - w, clip.height - h)
        boxes.append(Box(int(f), q, 1.0, (float(x), float(y), float(x + w), float(y + h))))
      out.append(boxes)
    return out


class RandomGrounder:
  """Chance grounding: a uniformly random window of the clip."""

  def __init__(self, seed: int = 0, name: str = "random"):
    self.rng, self.name = np.random.default_rng(seed), name

  def ground(self, clip, query: str, *, top_k: int = 1) -> list[Window]:
    if not len(clip):
      return []
    a, b = sorted(self.rng.integers(0, len(clip), 2))
    return [Window(int(clip.frame_ids[a]), int(clip.frame_ids[b]) + 1, 0.5, query)][:top_k]


class RandomActions:
  """Chance action recognition and QA: a uniformly random candidate / choice."""

  def __init__(self, seed: int = 0, name: str = "random"):
    self.rng, self.name = np.random.default_rng(seed), name

  def recognize(self, clip, object_name=None, candidates=None) -> list[str]:
    c = list(candidates or [])
    return [c[int(i)] for i in self.rng.permutation(len(c))]

  def answer(self, clip, question, choices=None) -> str:
    return choices[int(self.rng.integers(len(choices)))] if choices else ""

  def summarize(self, clip, query=None) -> str:
    return ""


def _seed(section) -> int:
  return int(section.get("seed", 0) if hasattr(section, "get") else 0)


RANDOM_FACTORIES = {
    "detector": {"random": lambda sec, ctx: RandomDetector(_seed(sec))},
    "grounder": {"random": lambda sec, ctx: RandomGrounder(_seed(sec))},
    "action_recognizer": {"random": lambda sec, ctx: RandomActions(_seed(sec))},
    "video_qa": {"random": lambda sec, ctx: RandomActions(_seed(sec) + 1)},
}


# -- program generators ------------------------------------------------------------------------


def make_program_generator(section, tools: Mapping[str, Callable], *, seed: int = 0,
                           program_key: str = "question_program") -> Callable:
  """A `generate` for `score_program_generator` from a config section.

  kind "gold": the annotated programs (the ceiling); "random": the annotated program of a
  random other question (chance); "llama": `LocalLlama(path)` prompted as the agent does.
  """
  kind = section.get("kind", "none")
  if kind == "gold":
    return lambda records: [r.meta[program_key] for r in records]
  if kind == "random":
    rng = np.random.default_rng(int(section.get("seed", seed)))
    def shuffle(records):
      progs = [r.meta[program_key] for r in records]
      return [progs[int(i)] for i in rng.permutation(len(progs))]
    return shuffle
  if kind == "llama":
    from aotd_jax.agent import programs
    from aotd_jax.agent.llm import LocalLlama
    if not section.get("path", ""):
      raise ValueError("program_generator.path is required for kind 'llama'")
    prompt_kind = section.get("prompt", "agent")
    if prompt_kind not in ("agent", "demo"):
      raise ValueError(f"program_generator.prompt={prompt_kind!r} is not one of "
                       "['agent', 'demo']")
    llm = LocalLlama(section["path"])
    max_new = int(section.get("max_new_tokens", 256))
    if prompt_kind == "agent":  # the full prompt: API docs, examples, question
      def generate(records):
        parsed = programs.generate_programs(
            llm, [(r.question, r.choices) for r in records], tools,
            examples=section.get("examples", ""), max_new_tokens=max_new)
        return [p.source if p.ok else None for p in parsed]
      return generate
    from aotd_jax.projects.toyworld.language_experts import program_prompt  # the demo's compact prompt
    def generate_compact(records):
      replies = llm.complete([program_prompt(r.question, r.choices) for r in records],
                             max_new_tokens=max_new)
      parsed = [programs.parse_program(t) if programs.PROGRAM_NAME in t else
                programs.parse_program(t, prefix=programs.PROGRAM_SIGNATURE + "\n")
                for t in replies]
      return [p.source if p.ok else None for p in parsed]
    return generate_compact
  raise ValueError(f"program_generator.kind={kind!r} is not one of ['gold', 'random', 'llama']")


# -- the harness -------------------------------------------------------------------------------

ROLE_SCORERS = ("program_generator", "detector", "grounder", "action_recognizer", "video_qa")
_EXPERT_KEYS = {"detector", "grounder", "action_recognizer", "video_qa", "selector",
                "ground_truth", "cache", "object_vocabulary", "program_generator"}


def _as_dict(x) -> dict:
  if x is None:
    return {}
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return {k: _as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
          for k, v in dict(x).items()}


def oracle_tools(data_section) -> dict[str, Callable]:
  """Oracle tools on the data's ground truth (what generated programs are executed with)."""
  import experts
  d = _as_dict(data_section)
  config = experts.default_config().to_dict()
  if d.get("kind", "toyworld") == "toyworld":
    config["ground_truth"] = {"kind": "toyworld", "path": d["path"], "classes_dir": ""}
  else:
    config["ground_truth"] = {"kind": "star", "path": d["path"],
                              "classes_dir": d.get("classes_dir", "")}
    config["object_vocabulary"] = (f"star:{d['classes_dir']}" if d.get("classes_dir") else [])
  config["cache"] = {"dir": "", "enabled": False}
  return experts.make_tools(config)


def action_classes(data_section) -> list[str] | None:
  """STAR's action class names (`classes_dir/action_classes.txt`) for STAR data, else None."""
  d = _as_dict(data_section)
  if d.get("kind", "toyworld") != "star" or not d.get("classes_dir"):
    return None
  from experts.backends.oracle import read_class_names
  names = read_class_names(d["classes_dir"])
  return [n for k, n in sorted(names.items()) if k.startswith("a")]


def evaluate_candidate(name: str, candidate, data: SubtaskData, data_section, *,
                       tools: Mapping[str, Callable] | None = None, threshold: float = 0.1,
                       max_frames: int = 0, num_action_choices: int = 4) -> dict[str, dict]:
  """Scores one candidate (an experts-style config) on every sub-task it names."""
  import experts
  cand = _as_dict(candidate)
  unknown = sorted(set(cand) - _EXPERT_KEYS)
  if unknown:
    raise ValueError(f"sub-task config: candidates.{name} has unknown section(s) {unknown}; "
                     f"expected some of {sorted(_EXPERT_KEYS)}")
  d = _as_dict(data_section)
  config = {role: {"kind": "none"} for role in ("detector", "grounder", "action_recognizer",
                                               "video_qa", "selector")}
  config["selector"] = {"kind": "keyword"}
  config["ground_truth"] = ({"kind": "toyworld", "path": d.get("path", "")}
                            if d.get("kind", "toyworld") == "toyworld" else
                            {"kind": "star", "path": d.get("path", ""),
                             "classes_dir": d.get("classes_dir", "")})
  config["cache"] = {"dir": "", "enabled": False}
  config["object_vocabulary"] = []
  for k, v in cand.items():
    if k != "program_generator":
      config[k] = v
  try:
    box = experts.make_toolbox(config, factories=RANDOM_FACTORIES)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f"sub-task config: candidates.{name}: {e}") from None
  out = {}
  if "program_generator" in cand:
    try:
      gen = make_program_generator(cand["program_generator"], tools or {})
    except ValueError as e:
      raise ValueError(f"sub-task config: candidates.{name}: {e}") from None
    out["program_generator"] = score_program_generator(gen, data, tools or oracle_tools(d))
  if box.detector is not None:
    out["detector"] = score_detector(box.detector, data, threshold=threshold,
                                     max_frames=max_frames)
  if box.grounder is not None:
    out["grounder"] = score_grounder(box.grounder, data)
  if box.action_recognizer is not None:
    out["action_recognizer"] = score_action_recognizer(
        box.action_recognizer, data, num_action_choices=num_action_choices,
        action_classes=action_classes(data_section))
  if box.video_qa is not None:
    out["video_qa"] = score_qa(box.video_qa, data)
  return out


def evaluate(config) -> dict[str, dict[str, dict]]:
  """{candidate: {role: metrics}} for the `candidates` of a harness config on its `data`."""
  cands = _as_dict(config.get("candidates") if hasattr(config, "get") else None)
  if not cands:
    raise ValueError("sub-task config: `candidates` is empty (give e.g. oracle and random)")
  data_section = config.get("data")
  data = load_data(data_section)
  tools = oracle_tools(data_section)
  return {name: evaluate_candidate(
      name, cand, data, data_section, tools=tools,
      threshold=float(config.get("threshold", 0.1)),
      max_frames=int(config.get("max_frames", 0)),
      num_action_choices=int(config.get("num_action_choices", 4)))
      for name, cand in cands.items()}


ROWS = (  # (sub-task, role, metric key, shown metric name)
    ("program generation", "program_generator", "program_normalized", "program match"),
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
  fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths)))
  lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
  return "\n".join(lines)


def default_config(data_path: str, *, split: str = "val", kind: str = "toyworld",
                   detector_path: str = "", grounder_path: str = "", llama_path: str = "",
                   llava_path: str = ""):
  """A harness config: oracle and random candidates, plus any trained experts given.

  detector_path: an OWLv2 HF directory; grounder_path: a `train_grounder` directory
  (`univtg.ckpt` + `clip/` [+ `features/`]); llama_path: a program-generator HF directory; llava_path: a
  LLaVA-NeXT-Video HF directory (action recognition and QA).
  """
  import ml_collections
  roles = ("detector", "grounder", "action_recognizer", "video_qa")
  cands = {
      "oracle": {"program_generator": {"kind": "gold"}, **{r: {"kind": "oracle"} for r in roles}},
      "random": {"program_generator": {"kind": "random"}, **{r: {"kind": "random"} for r in roles}},
  }
  trained: dict[str, Any] = {}
  if detector_path:
    trained["detector"] = {"kind": "owlv2", "path": detector_path, "buckets": [8, 32]}
  if grounder_path:
    trained["grounder"] = {"kind": "univtg", "path": os.path.join(grounder_path, "univtg.ckpt"),
                           "clip_path": os.path.join(grounder_path, "clip"), "buckets": [8, 32]}
    if os.path.isdir(os.path.join(grounder_path, "features")):  # object-state features
      trained["grounder"]["features_path"] = os.path.join(grounder_path, "features")
  if llama_path:
    trained["program_generator"] = {"kind": "llama", "path": llama_path}
  if llava_path:
    trained["action_recognizer"] = {"kind": "llava", "path": llava_path}
    trained["video_qa"] = {"kind": "llava", "path": llava_path}
  if trained:
    cands["trained"] = trained
  return ml_collections.ConfigDict({
      "data": {"kind": kind, "path": data_path, "split": split, "video_dir": "",
               "video_ext": ".mp4", "classes_dir": "", "max_videos": 0, "blank_frames": False},
      "candidates": cands, "threshold": 0.1, "max_frames": 0,
      # STAR: top-1 over all its action classes, as the paper; the toy world: 4-way choices
      "num_action_choices": 0 if kind == "star" else 4,
  })


def score_experts(world_dir: str, paths: Mapping[str, str], *, split: str = "test",
                  max_videos: int = 0) -> dict[str, Any]:
  """The demo's expert scores: trained experts (and a random baseline) on a toy-world split.

  paths: {"detector" | "grounder" | "qa" | "program": trained directory} (roles not given
  are not scored). Returns `detection_iou`, `grounding_iou`, `action_top1`, `qa_accuracy`,
  `program_accuracy` (normalised program match) and `program_answer_accuracy` of the trained
  experts (None where not trained), `random`: the same keys for chance, and `table`.
  """
  config = default_config(world_dir, split=split, detector_path=paths.get("detector", ""),
                          grounder_path=paths.get("grounder", ""),
                          llama_path=paths.get("program", ""), llava_path=paths.get("qa", ""))
  config.data.max_videos = max_videos
  if "trained" in config.candidates and "program_generator" in config.candidates.trained:
    config.candidates.trained.program_generator.prompt = "demo"
    config.candidates.trained.program_generator.max_new_tokens = 160
  del config.candidates["oracle"]
  results = evaluate(config)
  flat = lambda r: {
      "detection_iou": r.get("detector", {}).get("detection_iou"),
      "grounding_iou": r.get("grounder", {}).get("grounding_iou"),
      "action_top1": r.get("action_recognizer", {}).get("action_top1"),
      "qa_accuracy": r.get("video_qa", {}).get("qa_accuracy"),
      "program_accuracy": r.get("program_generator", {}).get("program_normalized"),
      "program_answer_accuracy": r.get("program_generator", {}).get("answer_accuracy")}
  out = flat(results.get("trained", {}))
  out["random"] = flat(results["random"])
  out["table"] = subtask_table(results)
  out["results"] = results
  return out
