"""The sub-task harness from a config: candidate experts built by `experts.make_toolbox`,
data read into `aotd_jax.eval.subtasks.SubtaskData`, each candidate scored by
`aotd_jax.eval.subtasks.score_candidate`.

`evaluate(config, plugins=...)`: `data` (kind star, or a plugin's kind such as the toy world's;
path, split, video_dir, classes_dir, max_videos, blank_frames) and `candidates` ({name:
experts-style sections: detector, grounder, action_recognizer, video_qa with `kind`
oracle|random|owlv2|univtg|llava, and program_generator with kind gold|random|llama}). The
`random` backends (`RANDOM_FACTORIES`) give the chance row of every sub-task. A project's data
kind comes as an `experts.plugins.Plugin` (e.g. `aotd_jax.projects.toyworld.oracle.PLUGIN`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from aotd_jax.agent import programs
from aotd_jax.agent.llm import LocalLlama
from aotd_jax.data import annotations, video
from aotd_jax.eval.subtasks import SubtaskData, score_candidate
from experts import registry
from experts.backends import oracle
from experts.backends.protocols import Box, Window
from experts.clip import VideoClip
from experts.plugins import Plugin, by_kind

# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DataSource:
  """What a data kind's reader returns: questions, ground truth and where the videos are.

  fps: None = each video's own; size: the frame size of blank clips (`blank_frames`).
  """

  records: list
  gt: Any
  video_dir: str
  video_ext: str
  fps: float | None
  size: int


def _video_loader(video_dir: str, ext: str, gt, fps: float | None) -> Callable[[str], Any]:
  """video_id -> VideoClip of its annotated frames, decoded from `video_dir/<id><ext>`."""

  def load(video_id: str):
    ids = np.asarray(sorted(gt._frames[video_id]), np.int64)  # annotated source frames
    path = os.path.join(video_dir, f"{video_id}{ext}")
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"sub-task data: no video file {path} for video {video_id!r} "
        "(set data.video_dir, or data.blank_frames=True for oracles)"
      )
    info = video.probe(path)
    ids = ids[ids < info.num_frames]
    frames = video.decode_frames(path, ids)
    return VideoClip(
      frames,
      start_frame=int(ids[0]),
      end_frame=int(ids[-1]) + 1,
      fps=fps or info.fps,
      video_id=video_id,
      frame_ids=ids,
    )

  return load


def _blank_loader(gt, size: int, fps: float) -> Callable[[str], Any]:
  """Clips of black frames: enough for ground-truth and random candidates, no video files."""

  def load(video_id: str):
    ids = np.asarray(sorted(gt._frames[video_id]), np.int64)
    return VideoClip(
      np.zeros((len(ids), size, size, 3), np.uint8),
      start_frame=int(ids[0]),
      end_frame=int(ids[-1]) + 1,
      fps=fps,
      video_id=video_id,
      frame_ids=ids,
    )

  return load


def _star(get: Callable[..., Any]) -> DataSource:
  path = get("path", "")
  if not os.path.exists(path):
    raise FileNotFoundError(f"sub-task data: STAR file {path} not found")
  return DataSource(
    records=list(annotations.read("star", path)),
    gt=oracle.GroundTruth.from_star(path, get("classes_dir", "") or None),
    video_dir=get("video_dir", ""),
    video_ext=get("video_ext", ".mp4"),
    fps=None,
    size=224,
  )


def load_data(data, *, plugins: Sequence[Plugin] = ()) -> SubtaskData:
  """`SubtaskData` from a config section (see `launch/eval_subtasks.py`).

  kind "star": path = a STAR-format JSON file, video_dir / video_ext for the videos,
  classes_dir for STAR's class lists (optional). A plugin's kind (the toy world's: path = a
  generated world directory, split = train|val|test) is read by its `subtask_data`.
  `max_videos` keeps the first videos only.
  """
  get = lambda k, d=None: data.get(k, d) if hasattr(data, "get") else getattr(data, k, d)
  readers = {
    "star": _star,
    **{k: p.subtask_data for k, p in by_kind(plugins).items() if p.subtask_data is not None},
  }
  kind, path = get("kind", "toyworld"), get("path", "")
  if not path:
    raise ValueError(
      "sub-task data: data.path is required (a toy-world directory or a STAR JSON file)"
    )
  if kind not in readers:
    raise ValueError(
      f"sub-task data: data.kind={kind!r} is not one of {sorted(readers)} (a "
      "project's kind comes with its plugin: evaluate(config, plugins=[...]))"
    )
  source = readers[kind](get)
  records, gt = source.records, source.gt
  max_videos = int(get("max_videos", 0) or 0)
  if max_videos:
    keep = set(list(dict.fromkeys(r.video_id for r in records))[:max_videos])
    records = [r for r in records if r.video_id in keep]
  if get("blank_frames", False):
    loader = _blank_loader(gt, source.size, source.fps or 30.0)
  else:
    loader = _video_loader(source.video_dir, source.video_ext, gt, source.fps)
  return SubtaskData(records=records, gt=gt, load_clip=loader)


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


def make_program_generator(
  section,
  tools: Mapping[str, Callable],
  *,
  seed: int = 0,
  program_key: str = "question_program",
  compact_prompt: Callable[[str, Sequence[str]], str] | None = None,
) -> Callable:
  """A `generate` for `score_program_generator` from a config section.

  kind "gold": the annotated programs (the ceiling); "random": the annotated program of a
  random other question (chance); "llama": `LocalLlama(path)` prompted as the agent does
  (`prompt="agent"`) or with `compact_prompt` (`prompt="demo"`: the data kind's plugin's
  `program_prompt`, the toy world's tiny program generator's).
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
    if not section.get("path", ""):
      raise ValueError("program_generator.path is required for kind 'llama'")
    prompt_kind = section.get("prompt", "agent")
    if prompt_kind not in ("agent", "demo"):
      raise ValueError(f"program_generator.prompt={prompt_kind!r} is not one of ['agent', 'demo']")
    if prompt_kind == "demo" and compact_prompt is None:
      raise ValueError(
        "program_generator.prompt='demo' needs the data kind's plugin with a program_prompt"
      )
    llm = LocalLlama(section["path"])
    max_new = int(section.get("max_new_tokens", 256))
    if prompt_kind == "agent":  # the full prompt: API docs, examples, question

      def generate(records):
        parsed = programs.generate_programs(
          llm,
          [(r.question, r.choices) for r in records],
          tools,
          examples=section.get("examples", ""),
          max_new_tokens=max_new,
        )
        return [p.source if p.ok else None for p in parsed]

      return generate

    def generate_compact(records):
      replies = llm.complete(
        [compact_prompt(r.question, r.choices) for r in records], max_new_tokens=max_new
      )
      parsed = [
        programs.parse_program(t)
        if programs.PROGRAM_NAME in t
        else programs.parse_program(t, prefix=programs.PROGRAM_SIGNATURE + "\n")
        for t in replies
      ]
      return [p.source if p.ok else None for p in parsed]

    return generate_compact
  raise ValueError(f"program_generator.kind={kind!r} is not one of ['gold', 'random', 'llama']")


# -- the harness -------------------------------------------------------------------------------

ROLE_SCORERS = ("program_generator", "detector", "grounder", "action_recognizer", "video_qa")
_EXPERT_KEYS = {
  "detector",
  "grounder",
  "action_recognizer",
  "video_qa",
  "selector",
  "ground_truth",
  "cache",
  "object_vocabulary",
  "program_generator",
}


def _as_dict(x) -> dict:
  if x is None:
    return {}
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return {
    k: _as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
    for k, v in dict(x).items()
  }


def oracle_tools(data_section, *, plugins: Sequence[Plugin] = ()) -> dict[str, Callable]:
  """Oracle tools on the data's ground truth (what generated programs are executed with)."""
  d = _as_dict(data_section)
  config = registry.default_config().to_dict()
  if d.get("kind", "toyworld") == "toyworld":
    config["ground_truth"] = {"kind": "toyworld", "path": d["path"], "classes_dir": ""}
  else:
    config["ground_truth"] = {
      "kind": "star",
      "path": d["path"],
      "classes_dir": d.get("classes_dir", ""),
    }
    config["object_vocabulary"] = f"star:{d['classes_dir']}" if d.get("classes_dir") else []
  config["cache"] = {"dir": "", "enabled": False}
  return registry.make_tools(config, plugins=plugins)


def action_classes(data_section) -> list[str] | None:
  """STAR's action class names (`classes_dir/action_classes.txt`) for STAR data, else None."""
  d = _as_dict(data_section)
  if d.get("kind", "toyworld") != "star" or not d.get("classes_dir"):
    return None
  names = oracle.read_class_names(d["classes_dir"])
  return [n for k, n in sorted(names.items()) if k.startswith("a")]


def evaluate_candidate(
  name: str,
  candidate,
  data: SubtaskData,
  data_section,
  *,
  tools: Mapping[str, Callable] | None = None,
  threshold: float = 0.1,
  max_frames: int = 0,
  num_action_choices: int = 4,
  plugins: Sequence[Plugin] = (),
) -> dict[str, dict]:
  """Scores one candidate (an experts-style config) on every sub-task it names."""
  cand = _as_dict(candidate)
  unknown = sorted(set(cand) - _EXPERT_KEYS)
  if unknown:
    raise ValueError(
      f"sub-task config: candidates.{name} has unknown section(s) {unknown}; "
      f"expected some of {sorted(_EXPERT_KEYS)}"
    )
  d = _as_dict(data_section)
  config = {
    role: {"kind": "none"}
    for role in ("detector", "grounder", "action_recognizer", "video_qa", "selector")
  }
  config["selector"] = {"kind": "keyword"}
  config["ground_truth"] = (
    {"kind": "toyworld", "path": d.get("path", "")}
    if d.get("kind", "toyworld") == "toyworld"
    else {"kind": "star", "path": d.get("path", ""), "classes_dir": d.get("classes_dir", "")}
  )
  config["cache"] = {"dir": "", "enabled": False}
  config["object_vocabulary"] = []
  for k, v in cand.items():
    if k != "program_generator":
      config[k] = v
  try:
    box = registry.make_toolbox(config, factories=RANDOM_FACTORIES, plugins=plugins)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f"sub-task config: candidates.{name}: {e}") from None
  generate = None
  if "program_generator" in cand:
    plugin = by_kind(plugins).get(d.get("kind", "toyworld"))
    try:
      generate = make_program_generator(
        cand["program_generator"],
        tools or {},
        compact_prompt=plugin.program_prompt if plugin is not None else None,
      )
    except ValueError as e:
      raise ValueError(f"sub-task config: candidates.{name}: {e}") from None
    tools = tools or oracle_tools(d, plugins=plugins)
  return score_candidate(
    box,
    data,
    generate=generate,
    tools=tools,
    threshold=threshold,
    max_frames=max_frames,
    num_action_choices=num_action_choices,
    action_classes=action_classes(data_section),
  )


def evaluate(config, *, plugins: Sequence[Plugin] = ()) -> dict[str, dict[str, dict]]:
  """{candidate: {role: metrics}} for the `candidates` of a harness config on its `data`
  (`plugins`: projects' data kinds, e.g. the toy world's)."""
  cands = _as_dict(config.get("candidates") if hasattr(config, "get") else None)
  if not cands:
    raise ValueError("sub-task config: `candidates` is empty (give e.g. oracle and random)")
  data_section = config.get("data")
  data = load_data(data_section, plugins=plugins)
  tools = oracle_tools(data_section, plugins=plugins)
  return {
    name: evaluate_candidate(
      name,
      cand,
      data,
      data_section,
      tools=tools,
      threshold=float(config.get("threshold", 0.1)),
      max_frames=int(config.get("max_frames", 0)),
      num_action_choices=int(config.get("num_action_choices", 4)),
      plugins=plugins,
    )
    for name, cand in cands.items()
  }


def default_config(
  data_path: str,
  *,
  split: str = "val",
  kind: str = "toyworld",
  detector_path: str = "",
  grounder_path: str = "",
  llama_path: str = "",
  llava_path: str = "",
):
  """A harness config: oracle and random candidates, plus any trained experts given.

  detector_path: an OWLv2 HF directory; grounder_path: a `train_grounder` directory
  (`univtg.ckpt` + `clip/` [+ `features/`]); llama_path: a program-generator HF directory;
  llava_path: a LLaVA-NeXT-Video HF directory (action recognition and QA).
  """
  roles = ("detector", "grounder", "action_recognizer", "video_qa")
  cands = {
    "oracle": {"program_generator": {"kind": "gold"}, **{r: {"kind": "oracle"} for r in roles}},
    "random": {"program_generator": {"kind": "random"}, **{r: {"kind": "random"} for r in roles}},
  }
  trained: dict[str, Any] = {}
  if detector_path:
    trained["detector"] = {"kind": "owlv2", "path": detector_path, "buckets": [8, 32]}
  if grounder_path:
    trained["grounder"] = {
      "kind": "univtg",
      "path": os.path.join(grounder_path, "univtg.ckpt"),
      "clip_path": os.path.join(grounder_path, "clip"),
      "buckets": [8, 32],
    }
    if os.path.isdir(os.path.join(grounder_path, "features")):  # object-state features
      trained["grounder"]["features_path"] = os.path.join(grounder_path, "features")
  if llama_path:
    trained["program_generator"] = {"kind": "llama", "path": llama_path}
  if llava_path:
    trained["action_recognizer"] = {"kind": "llava", "path": llava_path}
    trained["video_qa"] = {"kind": "llava", "path": llava_path}
  if trained:
    cands["trained"] = trained
  return ml_collections.ConfigDict(
    {
      "data": {
        "kind": kind,
        "path": data_path,
        "split": split,
        "video_dir": "",
        "video_ext": ".mp4",
        "classes_dir": "",
        "max_videos": 0,
        "blank_frames": False,
      },
      "candidates": cands,
      "threshold": 0.1,
      "max_frames": 0,
      # STAR: top-1 over all its action classes, as the paper; the toy world: 4-way choices
      "num_action_choices": 0 if kind == "star" else 4,
    }
  )
