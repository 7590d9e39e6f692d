"""The tools that generated programs call, bound to expert models in a `Toolbox`.

The docstrings of the `Toolbox` methods named in `TOOL_NAMES` are the API documentation the
program-generation prompt shows (`api_docs()`): they are written for an LLM reader.
Every call is recorded (`Toolbox.records`) with its structured result — boxes with source
frame ids, windows, labels — as JSON-ready dicts, so the agent's trace can quote them.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import inspect
import numbers
import re
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from experts.backends.protocols import Box, Window
from experts.cache import ToolCache, frames_key, make_key
from experts.clip import VideoClip

TOOL_NAMES = (
  "trim",
  "Query_Objs",
  "Find",
  "exist",
  "Count",
  "Filter_frames_with_obj",
  "Query_Actions",
  "Filter_frames_with_act",
  "Video_summary",
  "select_answer",
)

# Plural and collective words a program may use for a detector class (AoTD maps these too).
DEFAULT_SYNONYMS = {
  "people": "person",
  "persons": "person",
  "children": "child",
  "men": "man",
  "women": "woman",
}


# Query_Objs queries that mean "every object", not a description to resolve.
GENERIC_OBJECT_QUERIES = {"object", "objects", "all objects", "things", "everything", "shapes"}


class ToolError(ValueError):
  """A tool was called with an argument it cannot use; the message names the argument."""


@dataclasses.dataclass
class Detections:
  """Boxes of `object_name` found in a clip; iterates over `Box(frame_id, label, score, box)`.

  `answer`: for a described object ("the object that is touched"), the class the video QA
  model names as the one meant (listed first in `labels`), else None.
  """

  object_name: str
  boxes: list[Box]
  answer: str | None = None

  def __len__(self) -> int:
    return len(self.boxes)

  def __iter__(self):
    return iter(self.boxes)

  def __getitem__(self, i):
    return self.boxes[i]

  @property
  def frame_ids(self) -> list[int]:
    """Source frame ids where the object was found, ascending, each once."""
    return sorted({b.frame_id for b in self.boxes})

  @property
  def labels(self) -> list[str]:
    """The object classes found, most often seen first."""
    counts: dict[str, int] = {}
    for b in self.boxes:
      counts[b.label] = counts.get(b.label, 0) + 1
    labels = sorted(counts, key=lambda k: -counts[k])
    if self.answer is not None:
      labels = [self.answer] + [l for l in labels if l != self.answer]
    return labels

  def to_json(self) -> dict:
    out = {
      "type": "Detections",
      "object": self.object_name,
      "labels": self.labels,
      "frames": self.frame_ids,
      "boxes": [b.to_json() for b in self.boxes],
    }
    if self.answer is not None:
      out["answer"] = self.answer
    return out


@dataclasses.dataclass
class ToolRecord:
  """One tool call: its name, arguments and structured result (all JSON-ready)."""

  name: str
  args: dict
  result: Any
  seconds: float
  cache_hits: int = 0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def to_json(value: Any) -> Any:
  """The JSON form of a tool argument or result (clips and detections summarised, no pixels)."""
  if hasattr(value, "to_json"):
    return value.to_json()
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
  return value


def _tool(method: Callable) -> Callable:
  """Records a tool call (arguments, result, evidence, seconds, cache hits) on the toolbox."""
  signature = inspect.signature(method)

  @functools.wraps(method)
  def wrapper(self: "Toolbox", *args, **kwargs):
    if getattr(method, "ignores_leading_clip", False) and args and isinstance(args[0], VideoClip):
      args = args[1:]  # select_answer(clip, query, ...), as some few-shot programs write it
    try:
      bound = signature.bind(self, *args, **kwargs)
    except TypeError as e:
      raise ToolError(f"{method.__name__}: {e}") from None
    hits, t0 = self.cache.hits, time.perf_counter()
    self._local.evidence = None
    value = method(self, *args, **kwargs)
    result = to_json(value)
    if self._local.evidence is not None:
      result = {"value": result, **to_json(self._local.evidence)}
    arguments = {k: to_json(v) for k, v in list(bound.arguments.items())[1:]}
    self.records.append(
      ToolRecord(
        method.__name__, arguments, result, time.perf_counter() - t0, self.cache.hits - hits
      )
    )
    return value

  return wrapper


def _object_phrase(answer: str) -> str:
  """'The red square.' -> 'red square' (an answer option read as an object name)."""
  words = answer.lower().strip().rstrip(".!?").split()
  while words and words[0] in ("the", "a", "an", "some"):
    words = words[1:]
  return " ".join(words)


def _ignores_leading_clip(method: Callable) -> Callable:
  method.ignores_leading_clip = True
  return method


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def snap_to_choice(text: str, choices: Sequence[str]) -> str:
  """Maps a model's free-text answer to one of `choices` (exact, letter, containment, closest)."""
  choices = [str(c) for c in choices]
  t = str(text).strip()
  lowered = [c.lower().strip() for c in choices]
  if t.lower() in lowered:
    return choices[lowered.index(t.lower())]
  # "B", "(B)", "B." or "(B) some text": a letter naming the choice.
  m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", t) or re.match(r"^\(([A-Za-z])\)", t)
  if m and 0 <= ord(m.group(1).upper()) - ord("A") < len(choices):
    return choices[ord(m.group(1).upper()) - ord("A")]
  contained = [c for c, low in zip(choices, lowered) if low and low in t.lower()]
  if contained:
    return max(contained, key=len)
  best = difflib.get_close_matches(t.lower(), lowered, n=1, cutoff=0.0)
  return choices[lowered.index(best[0])] if best else choices[0]


def format_info(info: Any) -> str:
  """Evidence as the bulleted text `select_answer` shows the LLM (nested dicts indented)."""

  def fmt(v, depth):
    if isinstance(v, dict):
      pad = "\t" * depth
      return "".join(f"\n{pad}- {k}: {fmt(x, depth + 1)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
      return ", ".join(fmt(x, depth) for x in v)
    if isinstance(v, VideoClip):
      return f"frames {v.start_frame} to {v.end_frame}"
    if isinstance(v, Detections):
      return (
        f"{v.object_name} found in frames {v.frame_ids}"
        if v.boxes
        else f"{v.object_name} not found"
      )
    return str(v)

  if isinstance(info, dict):
    return "\n".join(f"- {k}: {fmt(v, 1)}" for k, v in info.items())
  return fmt(info, 0)


class Toolbox:
  """The AoTD tools bound to expert backends (see `experts.backends.protocols`).

  Args:
    detector: a `Detector` (Query_Objs, Find, exist, Count, Filter_frames_with_obj).
    grounder: a `Grounder` (Filter_frames_with_act).
    action_recognizer: an `ActionRecognizer` (Query_Actions).
    video_qa: a `VideoQA` (Video_summary).
    selector: an `AnswerSelector` (select_answer).
    cache: the `ToolCache` (a fresh memory-only one by default).
    detect_threshold: detector score threshold.
    synonyms: object-name rewrites applied before detection.
    object_vocabulary: the object classes `Query_Objs` looks for when asked for "objects".
    max_records: how many recent calls `records` keeps.
    find: what `Find` returns: "frames" (the frames that show the object, ours) or "crops"
      (a clip of 224 x 224 crops of its best box per frame, 10 px margin: the official AoTD).
    exist: "detector" (a box anywhere, ours) or "detector+qa" (then the video QA model is asked
      "Is this <name>?" on the crops, and must say yes: the official AoTD).
    scheduler: the `experts.scheduler.DeviceScheduler` the coalesced backends share (None:
      none); a CoT job enters `scheduler.program()` around each program.
  """

  def __init__(
    self,
    *,
    detector=None,
    grounder=None,
    action_recognizer=None,
    video_qa=None,
    selector=None,
    cache: ToolCache | None = None,
    detect_threshold: float = 0.1,
    synonyms: dict[str, str] | None = None,
    object_vocabulary: Sequence[str] = (),
    max_records: int = 10_000,
    find: str = "frames",
    exist: str = "detector",
    scheduler=None,
  ):
    if find not in FIND_MODES:
      raise ValueError(f"Toolbox: find={find!r} not in {FIND_MODES}")
    if exist not in EXIST_MODES:
      raise ValueError(f"Toolbox: exist={exist!r} not in {EXIST_MODES}")
    self.find_mode, self.exist_mode = find, exist
    self.scheduler = scheduler
    self.detector, self.grounder = detector, grounder
    self.action_recognizer, self.video_qa, self.selector = action_recognizer, video_qa, selector
    self.cache = cache if cache is not None else ToolCache()
    self.detect_threshold = float(detect_threshold)
    self.synonyms = dict(DEFAULT_SYNONYMS if synonyms is None else synonyms)
    self.object_vocabulary = [" ".join(c.lower().split()) for c in object_vocabulary]
    # the latest calls (a long CoT job makes millions; the agent's trace keeps its own)
    self.records: collections.deque[ToolRecord] = collections.deque(maxlen=max_records)
    # evidence of the call in progress, per thread: a sandbox may serve calls concurrently
    self._local = threading.local()

  def tools(self) -> dict[str, Callable]:
    """Name -> bound tool, the mapping a program sandbox is given."""
    return {name: getattr(self, name) for name in TOOL_NAMES}

  def backends(self) -> list:
    """The bound model backends, each once (one backend may serve two roles)."""
    out = []
    for backend in (self.detector, self.grounder, self.action_recognizer, self.video_qa):
      if backend is not None and all(backend is not b for b in out):
        out.append(backend)
    return out

  def close(self) -> None:
    """Stops the backends' coalescers and the device scheduler (another toolbox may then
    load its own); calls run directly afterwards."""
    for backend in self.backends():
      if hasattr(backend, "close"):
        backend.close()
    if self.scheduler is not None:
      self.scheduler.close()

  # -- helpers -------------------------------------------------------------------------------

  def _need(self, role: str, tool: str):
    backend = getattr(self, role)
    if backend is None:
      raise RuntimeError(
        f"{tool} needs a {role} backend but none is bound (set config.{role} in the experts config)"
      )
    return backend

  @staticmethod
  def _clip(tool: str, value, arg: str = "video_clip") -> VideoClip:
    if isinstance(value, VideoClip):
      return value
    raise ToolError(f"{tool}: {arg} must be a VideoClip, got {type(value).__name__}")

  def _name(self, tool: str, value, arg: str = "object_name") -> str:
    if not isinstance(value, str) or not value.strip():
      raise ToolError(f"{tool}: {arg} must be a non-empty string, got {value!r}")
    name = " ".join(value.lower().split())
    return self.synonyms.get(name, name)

  def _detect(self, clip: VideoClip, classes: Sequence[str]) -> list[list[Box]]:
    """Per frame of `clip`, boxes of any of `classes` (labelled by class; cached per frame)."""
    detector = self._need("detector", "detection")
    # "cup/glass/bottle" is one class with several names: a box for any of them counts.
    part_to_class = {}
    for cls in classes:
      for part in cls.split("/"):
        part = self.synonyms.get(part.strip(), part.strip())
        if part:
          part_to_class.setdefault(part, cls)
    queries = list(part_to_class)
    renamed = {part: cls for part, cls in part_to_class.items() if part != cls}
    keys = [
      make_key(
        detector.name,
        "detect",
        clip.identity,
        str(int(f)),
        queries,
        threshold=self.detect_threshold,
      )
      for f in clip.frame_ids
    ]
    decode = lambda v: [Box.from_json(b) for b in v]
    encode = lambda v: [b.to_json() for b in v]
    per_frame = [self.cache.get(k, detector.name, decode) for k in keys]
    missing = [i for i, v in enumerate(per_frame) if v is None]
    if missing:
      found = detector.detect(clip.select(missing), queries, threshold=self.detect_threshold)
      if len(found) != len(missing):
        raise RuntimeError(
          f"detector {detector.name} returned {len(found)} frames for {len(missing)}"
        )
      for i, boxes in zip(missing, found):
        boxes = [
          b if b.label not in renamed else dataclasses.replace(b, label=renamed[b.label])
          for b in sorted(boxes, key=lambda b: -b.score)
        ]
        per_frame[i] = boxes
        self.cache.put(keys[i], detector.name, boxes, encode)
    return per_frame

  def _find(self, tool: str, video_clip, object_name) -> tuple[VideoClip, str, list[list[Box]]]:
    clip = self._clip(tool, video_clip)
    name = self._name(tool, object_name)
    return clip, name, (self._detect(clip, [name]) if len(clip) else [])

  def _object_classes(self, query: str, possible_answers) -> list[str]:
    """The classes `Query_Objs` looks for: named by the answers, the query, or the vocabulary."""
    if possible_answers:
      names = [_object_phrase(a) for a in possible_answers]
      return list(dict.fromkeys(self.synonyms.get(n, n) for n in names if n))
    name = _object_phrase(query)
    if not self.object_vocabulary or (
      name not in GENERIC_OBJECT_QUERIES and len(name.split()) <= 3
    ):
      return [name or query]  # a name ("cup", "the red ball", "cup/glass/bottle")
    return list(self.object_vocabulary)  # a description: look for every class

  # -- tools ---------------------------------------------------------------------------------

  @_tool
  def trim(
    self, video_clip: VideoClip, start: int | None = None, end: int | None = None
  ) -> VideoClip:
    """Returns the part of video_clip from frame `start` up to (not including) frame `end`.

    Parameters
    ----------
    video_clip : VideoClip
        The clip to cut.
    start : int | None
        First frame to keep, as a frame number of the ORIGINAL video (the same numbers the
        other tools report, e.g. `clip.start_frame`). None keeps the clip's start.
    end : int | None
        Frame number (original video) to stop before. None keeps the clip's end.
    Bounds outside the clip are clipped to it. If nothing is left (start >= end), the
    result is an empty clip (`len(clip) == 0`); other tools return empty results for it.

    Returns
    -------
    VideoClip with `.start_frame` and `.end_frame` in original-video frame numbers.

    Examples
    --------
    # the part of the video after the person opens the door
    door_clip = Filter_frames_with_act(video_clip, "person opens the door")
    after_clip = trim(video_clip, start=door_clip.end_frame)
    """
    clip = self._clip("trim", video_clip)
    for arg, v in (("start", start), ("end", end)):
      if v is not None and not _is_number(v):
        raise ToolError(f"trim: {arg} must be a frame number or None, got {v!r}")
    lo = (
      clip.start_frame if start is None else min(max(int(start), clip.start_frame), clip.end_frame)
    )
    hi = clip.end_frame if end is None else min(max(int(end), clip.start_frame), clip.end_frame)
    hi = max(hi, lo)
    return clip.select(clip.positions_in(lo, hi), start_frame=lo, end_frame=hi)

  @_tool
  def Query_Objs(
    self, video_clip: VideoClip, query: str, possible_answers: Sequence[str] | None = None
  ) -> Detections:
    """Detects the objects that match `query`, with their boxes, in every frame of the clip.

    Parameters
    ----------
    video_clip : VideoClip
    query : str
        The objects to look for: a name ("cup", "red ball", "cup/glass/bottle": a slash
        separates names of one object) or a description ("objects", "the object that is
        touched"); a description looks for every known object class.
    possible_answers : list[str] | None
        If given, looks for the objects these answers name (e.g. "The red square.").

    Returns
    -------
    Detections: a list of boxes, each with `.frame_id` (original video frame number),
    `.label` (object class), `.score` and `.box` = (x0, y0, x1, y1) in pixels. Empty if
    nothing is found. `.frame_ids` lists the frames with at least one box, `.labels` the
    classes found; for a description, `.answer` is the object the video model says is
    meant, and it comes first in `.labels`.

    Examples
    --------
    touch_clip = Filter_frames_with_act(video_clip, "the red circle touches an object")
    objects = Query_Objs(touch_clip, "the object touched by the red circle", possible_answers)
    info = {"objects seen while the red circle touches something": objects.labels}
    """
    clip = self._clip("Query_Objs", video_clip)
    name = self._name("Query_Objs", query, "query")
    if possible_answers is not None and (
      isinstance(possible_answers, str) or not all(isinstance(a, str) for a in possible_answers)
    ):
      raise ToolError(
        f"Query_Objs: possible_answers must be a list of strings, got {possible_answers!r}"
      )
    classes = self._object_classes(name, possible_answers)
    per_frame = self._detect(clip, classes) if len(clip) else []
    found = Detections(name, [b for boxes in per_frame for b in boxes])
    if (
      self.video_qa is not None
      and len(clip)
      and len(classes) > 1
      and name not in GENERIC_OBJECT_QUERIES
    ):
      # a description ("the object that is touched"): as AoTD, ask the video QA model which
      # of the candidate objects it means (a detector cannot resolve relations)
      question = f"What is {name}?"
      key = make_key(
        self.video_qa.name,
        "answer",
        clip.identity,
        frames_key(clip.frame_ids),
        question,
        choices=classes,
      )
      reply = self.cache.get_or_compute(
        key, self.video_qa.name, lambda: str(self.video_qa.answer(clip, question, classes))
      )
      found.answer = snap_to_choice(reply, classes)
    return found

  @_tool
  def Find(self, video_clip: VideoClip, object_name: str) -> VideoClip:
    """Finds the frames that show `object_name`, with its box in each.

    Parameters
    ----------
    video_clip : VideoClip
    object_name : str
        The object to look for, e.g. "dog", "person", "phone/camera".

    Returns
    -------
    VideoClip of just the frames where the object was found (original frame numbers kept);
    `.detections` holds its best box per frame. Empty (`len(...) == 0`) if it never appears.

    Examples
    --------
    shoe_clip = Find(video_clip, "shoe")
    actions = Query_Actions(shoe_clip, "shoe")
    """
    clip, name, per_frame = self._find("Find", video_clip, object_name)
    keep = [i for i, boxes in enumerate(per_frame) if boxes]
    found = Detections(name, [per_frame[i][0] for i in keep])
    if self.find_mode == "crops" and keep:
      return crop_clip(clip, keep, found.boxes, detections=found)
    return clip.select(keep, detections=found)

  @_tool
  def exist(self, video_clip: VideoClip, object_name: str) -> bool:
    """Tells whether `object_name` appears anywhere in the clip.

    Parameters
    ----------
    video_clip : VideoClip
    object_name : str
        e.g. "laptop".

    Returns
    -------
    bool: True if the object is detected in at least one frame, else False.

    Examples
    --------
    if exist(video_clip, "laptop"):
        info["laptop"] = "a laptop is in the video"
    """
    clip, name, per_frame = self._find("exist", video_clip, object_name)
    keep = [i for i, boxes in enumerate(per_frame) if boxes]
    found = Detections(name, [per_frame[i][0] for i in keep])
    self._local.evidence = {"detections": found}
    if not found.boxes or self.exist_mode == "detector":
      return bool(found.boxes)
    model = self._need("video_qa", "exist")
    crops = crop_clip(clip, keep, found.boxes)
    question = f"Is this {name}?"
    key = make_key(
      model.name,
      "answer",
      crops.identity,
      frames_key(crops.frame_ids),
      question,
      crop="box",
      boxes=[b.to_json() for b in found.boxes],
    )
    reply = self.cache.get_or_compute(
      key, model.name, lambda: str(model.answer(crops, question, None))
    )
    self._local.evidence["confirmation"] = reply
    return "yes" in reply.lower()

  @_tool
  def Count(self, video_clip: VideoClip, object_name: str) -> int:
    """Counts how many `object_name` are visible at once (the most in any single frame).

    Parameters
    ----------
    video_clip : VideoClip
    object_name : str
        e.g. "person".

    Returns
    -------
    int: the largest number of boxes of the object in one frame; 0 if never seen.

    Examples
    --------
    n_people = Count(video_clip, "person")
    """
    _, name, per_frame = self._find("Count", video_clip, object_name)
    counts = [len(b) for b in per_frame]
    best = int(np.argmax(counts)) if counts and max(counts) else None
    self._local.evidence = {
      "detections": Detections(name, per_frame[best] if best is not None else [])
    }
    return max(counts, default=0)

  @_tool
  def Filter_frames_with_obj(self, video_clip: VideoClip, object_name: str) -> VideoClip:
    """Keeps only the frames in which `object_name` is visible.

    Parameters
    ----------
    video_clip : VideoClip
    object_name : str
        class or description of the object, e.g. "shoe".

    Returns
    -------
    VideoClip of the frames with the object (original frame numbers kept), spanning from the
    first to the last such frame. Empty (`len(...) == 0`) if the object never appears.

    Examples
    --------
    shoe_clip = Filter_frames_with_obj(video_clip, "shoe")
    summary = Video_summary(shoe_clip)
    """
    clip, name, per_frame = self._find("Filter_frames_with_obj", video_clip, object_name)
    keep = [i for i, boxes in enumerate(per_frame) if boxes]
    self._local.evidence = {"detections": Detections(name, [per_frame[i][0] for i in keep])}
    return clip.select(keep)

  @_tool
  def Query_Actions(
    self,
    video_clip: VideoClip,
    object_name: str | None = None,
    possible_actions: Sequence[str] | None = None,
  ) -> list[str]:
    """Recognises the actions that happen in the clip.

    Parameters
    ----------
    video_clip : VideoClip
    object_name : str | None
        If given, only actions involving this object ("What did the person do to the cup?").
    possible_actions : list[str] | None
        If given, the answer is chosen from these (e.g. the question's possible answers).

    Returns
    -------
    list[str]: action descriptions, most likely first; empty for an empty clip.

    Examples
    --------
    cup_clip = Find(video_clip, "cup")
    actions = Query_Actions(cup_clip, "cup", possible_answers)
    """
    clip = self._clip("Query_Actions", video_clip)
    obj = None if object_name is None else self._name("Query_Actions", object_name)
    cands = None
    if possible_actions is not None:
      if isinstance(possible_actions, str) or not all(isinstance(a, str) for a in possible_actions):
        raise ToolError(
          f"Query_Actions: possible_actions must be a list of strings, got {possible_actions!r}"
        )
      cands = list(possible_actions)
    if not len(clip):
      return []
    model = self._need("action_recognizer", "Query_Actions")
    key = make_key(
      model.name,
      "actions",
      clip.identity,
      frames_key(clip.frame_ids),
      {"object": obj, "candidates": cands},
    )
    labels = self.cache.get_or_compute(
      key, model.name, lambda: list(model.recognize(clip, obj, cands))
    )
    if cands:
      labels = list(dict.fromkeys(snap_to_choice(a, cands) for a in labels))
    return labels

  @_tool
  def Filter_frames_with_act(self, video_clip: VideoClip, action: str | Sequence[str]) -> VideoClip:
    """Keeps the time window in which `action` happens (temporal grounding).

    Parameters
    ----------
    video_clip : VideoClip
    action : str | list[str]
        A description of the action, e.g. "person opens the door". A list narrows the window
        step by step, one action after another.

    Returns
    -------
    VideoClip of the window where the action happens; `.start_frame` / `.end_frame` are
    original-video frame numbers. Empty if no window is found.

    Examples
    --------
    jump_clip = Filter_frames_with_act(video_clip, "person is jumping")
    before_jump = trim(video_clip, end=jump_clip.start_frame)
    """
    clip = self._clip("Filter_frames_with_act", video_clip)
    actions = [action] if isinstance(action, str) else list(action) if action is not None else []
    if not actions or not all(isinstance(a, str) and a.strip() for a in actions):
      raise ToolError(
        f"Filter_frames_with_act: action must be a non-empty string or list of "
        f"strings, got {action!r}"
      )
    windows = []
    for act in actions:
      if not len(clip):
        break
      model = self._need("grounder", "Filter_frames_with_act")
      key = make_key(
        model.name, "ground", clip.identity, frames_key(clip.frame_ids), act.strip(), top_k=1
      )
      found = self.cache.get_or_compute(
        key,
        model.name,
        lambda c=clip, a=act.strip(): list(model.ground(c, a, top_k=1)),
        encode=lambda v: [w.to_json() for w in v],
        decode=lambda v: [Window.from_json(w) for w in v],
      )
      if not found:
        clip = clip.select([])
        break
      w = found[0]
      lo = min(max(w.start_frame, clip.start_frame), clip.end_frame)
      hi = max(min(w.end_frame, clip.end_frame), lo)
      windows.append(Window(lo, hi, w.score, w.query))
      clip = clip.select(clip.positions_in(lo, hi), start_frame=lo, end_frame=hi)
    self._local.evidence = {"windows": windows}
    return clip

  @_tool
  def Video_summary(self, video_clip: VideoClip, query: str | None = None) -> str:
    """Describes briefly what happens in the clip.

    Parameters
    ----------
    video_clip : VideoClip
    query : str | None
        Optional question the summary should focus on.

    Returns
    -------
    str: a short description; "" for an empty clip.

    Examples
    --------
    info = {"summary of the video": Video_summary(video_clip, query)}
    """
    clip = self._clip("Video_summary", video_clip)
    if query is not None and not isinstance(query, str):
      raise ToolError(f"Video_summary: query must be a string or None, got {query!r}")
    if not len(clip):
      return ""
    model = self._need("video_qa", "Video_summary")
    key = make_key(model.name, "summary", clip.identity, frames_key(clip.frame_ids), query)
    return self.cache.get_or_compute(key, model.name, lambda: str(model.summarize(clip, query)))

  @_tool
  @_ignores_leading_clip
  def select_answer(self, query: str, possible_answers: Sequence[str], info: Any) -> str:
    """Chooses the possible answer best supported by the collected information.

    Parameters
    ----------
    query : str
        The question.
    possible_answers : list[str]
        The candidate answers.
    info : dict
        Everything useful found so far, e.g. {"actions after the jump": actions}.

    Returns
    -------
    str: exactly one of possible_answers.

    Examples
    --------
    actions = Query_Actions(trim(video_clip, start=jump_clip.end_frame), None, possible_answers)
    info = {"actions after the jump": actions}
    answer = select_answer(query, possible_answers, info)
    return answer
    """
    # AoTD's original order is (query, info, possible_answers): accept it too.
    if isinstance(possible_answers, (dict, str)) and isinstance(info, (list, tuple)):
      possible_answers, info = info, possible_answers
    if not isinstance(query, str):
      raise ToolError(f"select_answer: query must be a string, got {query!r}")
    if (
      isinstance(possible_answers, str)
      or not possible_answers
      or not all(isinstance(a, str) for a in possible_answers)
    ):
      raise ToolError(
        "select_answer: possible_answers must be a non-empty list of strings, "
        f"got {possible_answers!r}"
      )
    model = self._need("selector", "select_answer")
    text = format_info(info)
    key = make_key(model.name, "select", "-", "-", query, choices=list(possible_answers), info=text)
    raw = self.cache.get_or_compute(
      key, model.name, lambda: str(model.select(query, list(possible_answers), text))
    )
    from aotd_jax.agent.trace import note_reply

    note_reply("select_answer", raw)  # the CoT job keeps it in the record's llm_replies
    return snap_to_choice(raw, possible_answers)


FIND_MODES = ("frames", "crops")
EXIST_MODES = ("detector", "detector+qa")
CROP_SIZE, CROP_MARGIN = 224, 10


def crop_clip(
  clip: VideoClip, positions: Sequence[int], boxes: Sequence[Box], *, detections=None
) -> VideoClip:
  """A clip of `CROP_SIZE`² crops of `boxes[k]` (with a `CROP_MARGIN` px margin) from the
  frame at `positions[k]`; frame ids are kept, the pixels are new (the official `crop`)."""
  import PIL.Image  # here: only the official crops need Pillow (a GPU image may lack it)

  frames = clip.select(list(positions)).frames
  out = np.empty((len(positions), CROP_SIZE, CROP_SIZE, 3), np.uint8)
  for k, (frame, box) in enumerate(zip(frames, boxes)):
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box.box)
    x0, y0 = max(0, x0 - CROP_MARGIN), max(0, y0 - CROP_MARGIN)
    x1, y1 = min(w, max(x1 + CROP_MARGIN, x0 + 1)), min(h, max(y1 + CROP_MARGIN, y0 + 1))
    patch = PIL.Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    out[k] = np.asarray(patch.resize((CROP_SIZE, CROP_SIZE), PIL.Image.BILINEAR))
  ids = clip.frame_ids[np.asarray(positions, np.int64)]
  identity = f"{clip.identity}:crops:" + ",".join(
    f"{int(i)}@{','.join(str(round(v)) for v in b.box)}" for i, b in zip(ids, boxes)
  )
  return VideoClip(
    out,
    start_frame=int(ids[0]),
    end_frame=int(ids[-1]) + 1,
    fps=clip.fps,
    video_id=identity,
    frame_ids=ids,
    detections=detections,
  )


def api_docs(names: Sequence[str] = TOOL_NAMES) -> str:
  """The tool API as the program-generation prompt shows it: signatures and docstrings."""
  chunks = []
  for name in names:
    fn = getattr(Toolbox, name)
    params = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:  # drop self
      text = p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {p.annotation}"
      params.append(text if p.default is inspect.Parameter.empty else f"{text} = {p.default!r}")
    ret = inspect.signature(fn).return_annotation
    sig = f"({', '.join(params)}) -> {ret}"
    doc = inspect.getdoc(fn) or ""
    body = "\n".join(("    " + line) if line else "" for line in doc.splitlines())
    chunks.append(f'def {name}{sig}:\n    """\n{body}\n    """')
  return "\n\n".join(chunks)
