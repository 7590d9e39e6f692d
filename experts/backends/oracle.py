"""Ground-truth experts: answers read from annotations instead of pixels.

`GroundTruth` indexes per-frame boxes and running actions by video id, from STAR-format
question files (their `situations`: `bbox`, `bbox_labels`, `actions` per frame id; STAR's
class ids `o012` / `a077` are turned into names with the class lists when given) or, through
`add_frame`, from a project's own files (the toy world's: `aotd_jax.projects.toyworld.oracle`).
The oracle backends implement the expert protocols on it: tests use them, and they measure
the pipeline with perfect experts.
Text matching is deliberately simple (lower case, crude stemming, "object"/"something"
matching any noun) and documented by tests.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from typing import Iterable, Sequence

from experts.backends.protocols import Box, Window

_STOP = {
  "the",
  "a",
  "an",
  "is",
  "are",
  "was",
  "were",
  "to",
  "of",
  "with",
  "and",
  "in",
  "on",
  "at",
  "by",
  "some",
  "somewhere",
  "from",
  "what",
  "did",
  "do",
  "does",
  "person's",
}
_WILDCARDS = {"object", "objects", "something", "thing", "shape", "another", "other"}
_IRREGULAR = {
  "spun": "spin",
  "grew": "grow",
  "threw": "throw",
  "took": "take",
  "ate": "eat",
  "drank": "drink",
  "sat": "sit",
  "put": "put",
  "held": "hold",
  "stood": "stand",
  "ran": "run",
  "went": "go",
  "opened": "open",
  "closed": "close",
}


def stem(word: str) -> str:
  """A crude stem, enough to equate "jumps" / "jumped" / "jumping" / "jump"."""
  w = _IRREGULAR.get(word, word)
  for suffix in ("ing", "ed", "es", "s"):
    if w.endswith(suffix) and len(w) - len(suffix) >= 3:
      w = w[: -len(suffix)]
      break
  if len(w) > 3 and w.endswith("e"):
    w = w[:-1]
  if len(w) >= 3 and w[-1] == w[-2]:
    w = w[:-1]
  return w


def content_words(text: str) -> list[str]:
  """Stemmed words of `text` without stop words."""
  return [
    stem(w) for w in re.findall(r"[a-z0-9']+", text.lower().replace("/", " ")) if w not in _STOP
  ]


def match_score(query: str, text: str) -> float:
  """Fraction of the query's content words found in `text` (wildcards match any word)."""
  q, t = content_words(query), set(content_words(text))
  if not q:
    return 0.0
  return sum(1.0 for w in q if w in t or w in {stem(x) for x in _WILDCARDS}) / len(q)


def label_matches(query: str, label: str) -> bool:
  """An object query names a label: same words, or one of its slash-separated names."""
  norm = lambda s: " ".join(content_words(s))
  q, names = norm(query), [norm(p) for p in label.split("/")] + [norm(label)]
  return bool(q) and (q in names or q == norm(label))


def read_class_names(classes_dir: str) -> dict[str, str]:
  """STAR class lists (`object_classes.txt`, `action_classes.txt`): id -> name."""
  out = {}
  for fname in ("object_classes.txt", "action_classes.txt"):
    path = os.path.join(classes_dir, fname)
    if not os.path.exists(path):
      raise FileNotFoundError(f"STAR class list {path} not found")
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        parts = line.strip().split(" ", 1)
        if not line.strip():
          continue
        if len(parts) != 2:
          raise ValueError(f"{path} line {lineno}: expected '<id> <name>', got {line.strip()!r}")
        out[parts[0]] = parts[1]
  return out


class GroundTruth:
  """Per video: sorted annotated frame ids, and per frame its boxes and running actions."""

  def __init__(self, source: str = "ground truth", max_gap: int | None = None):
    self.source = source
    self.max_gap = max_gap
    self._frames: dict[str, dict[int, dict]] = {}
    self._sorted: dict[str, list[int]] = {}

  def add_frame(
    self,
    video_id: str,
    frame_id: int,
    boxes: Iterable[tuple[str, Sequence[float]]],
    actions: Iterable[str],
  ) -> None:
    frames = self._frames.setdefault(str(video_id), {})
    entry = frames.setdefault(int(frame_id), {"boxes": [], "actions": []})
    for label, box in boxes:
      if (label, tuple(box)) not in [(l, tuple(b)) for l, b in entry["boxes"]]:
        entry["boxes"].append((label, tuple(float(v) for v in box)))
    for a in actions:
      if a not in entry["actions"]:
        entry["actions"].append(a)
    self._sorted.pop(str(video_id), None)

  @property
  def video_ids(self) -> list[str]:
    return sorted(self._frames)

  def frame(self, video_id: str | None, frame_id: int) -> dict:
    """The annotation of `frame_id`, or of the nearest annotated frame (within `max_gap`)."""
    if video_id not in self._frames:
      raise KeyError(
        f"oracle has no ground truth for video {video_id!r} (loaded from "
        f"{self.source}; {len(self._frames)} videos)"
      )
    ids = self._sorted.get(video_id)
    if ids is None:
      ids = self._sorted[video_id] = sorted(self._frames[video_id])
    i = bisect.bisect_left(ids, frame_id)
    near = min((ids[j] for j in (i - 1, i) if 0 <= j < len(ids)), key=lambda f: abs(f - frame_id))
    if self.max_gap is not None and abs(near - frame_id) > self.max_gap:
      return {"boxes": [], "actions": []}
    return self._frames[video_id][near]

  @classmethod
  def from_star(
    cls, paths: str | Sequence[str], classes_dir: str | None = None, max_gap: int | None = None
  ) -> "GroundTruth":
    """Reads STAR-format JSON question files (a list of records with `situations`)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    names = read_class_names(classes_dir) if classes_dir else {}
    gt = cls(", ".join(paths), max_gap)
    for path in paths:
      try:
        with open(path, encoding="utf-8") as f:
          records = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
      if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of STAR records, got {type(records).__name__}")
      for k, rec in enumerate(records):
        try:
          vid, situations = rec["video_id"], rec.get("situations") or {}
          for fid, sit in situations.items():
            labels = [names.get(l, l) for l in sit.get("bbox_labels", [])]
            boxes = sit.get("bbox", [])
            if len(labels) != len(boxes):
              raise ValueError(f"{len(boxes)} boxes but {len(labels)} bbox_labels in frame {fid}")
            gt.add_frame(
              vid, int(fid), zip(labels, boxes), [names.get(a, a) for a in sit.get("actions", [])]
            )
        except (KeyError, TypeError, ValueError) as e:
          qid = rec.get("question_id", k) if isinstance(rec, dict) else k
          raise ValueError(
            f"{path}: record {qid!r} has malformed situations ({type(e).__name__}: {e})"
          ) from None
    return gt


def _actions_in(gt: GroundTruth, clip) -> list[tuple[str, int]]:
  """(action, first source frame) of the actions running in the clip, in order of onset."""
  first: dict[str, int] = {}
  for f in clip.frame_ids:
    for a in gt.frame(clip.video_id, int(f))["actions"]:
      first.setdefault(a, int(f))
  return sorted(first.items(), key=lambda kv: kv[1])


class OracleDetector:
  """`Detector` from ground-truth boxes (score 1.0)."""

  def __init__(self, gt: GroundTruth, name: str = "oracle"):
    self.gt, self.name = gt, name

  def detect(self, clip, queries: Sequence[str], *, threshold: float = 0.0) -> list[list[Box]]:
    del threshold
    out = []
    for f in clip.frame_ids:
      boxes = self.gt.frame(clip.video_id, int(f))["boxes"]
      out.append(
        [
          Box(int(f), q, 1.0, box)
          for label, box in boxes
          for q in queries
          if label_matches(q, label)
        ]
      )
    return out


class OracleGrounder:
  """`Grounder`: the first run of frames whose running action best matches the query."""

  def __init__(self, gt: GroundTruth, name: str = "oracle", min_score: float = 0.5):
    self.gt, self.name, self.min_score = gt, name, min_score

  def ground(self, clip, query: str, *, top_k: int = 1) -> list[Window]:
    scores = []
    for f in clip.frame_ids:
      acts = self.gt.frame(clip.video_id, int(f))["actions"]
      scores.append(max((match_score(query, a) for a in acts), default=0.0))
    best = max(scores, default=0.0)
    if best < self.min_score:
      return []
    windows, run = [], None
    for f, s in zip(clip.frame_ids, scores):
      if s == best and run is not None and f == run[1]:
        run[1] = int(f) + 1
      elif s == best:
        run = [int(f), int(f) + 1]
        windows.append(run)
      else:
        run = None
    return [Window(a, b, best, query) for a, b in windows[:top_k]]


class OracleActions:
  """`ActionRecognizer` (and `VideoQA`) from the actions annotated in the clip's frames.

  With candidates, returns those that fully match an annotated action (every content word of
  the candidate found in it; `min_score` lowers that bar), in order of the action's onset.
  """

  def __init__(self, gt: GroundTruth, name: str = "oracle", min_score: float = 1.0):
    self.gt, self.name, self.min_score = gt, name, min_score

  def recognize(
    self, clip, object_name: str | None = None, candidates: Sequence[str] | None = None
  ) -> list[str]:
    timed = _actions_in(self.gt, clip)
    if object_name:
      timed = [(a, f) for a, f in timed if match_score(object_name, a) == 1.0]
    if not candidates:
      return [a for a, _ in timed]
    ranked = []
    for c in candidates:
      scored = [(match_score(c, a), f) for a, f in timed]
      best = max(scored, key=lambda sf: (sf[0], -sf[1]), default=(0.0, 0))
      if best[0] >= self.min_score:
        ranked.append((-best[0], best[1], c))
    return [c for _, _, c in sorted(ranked)]

  def summarize(self, clip, query: str | None = None) -> str:
    del query
    objects: list[str] = []
    for f in clip.frame_ids:
      for label, _ in self.gt.frame(clip.video_id, int(f))["boxes"]:
        if label not in objects:
          objects.append(label)
    acts = [f"{a} (from frame {f})" for a, f in _actions_in(self.gt, clip)]
    return (
      f"Objects: {', '.join(objects) or 'none'}. Actions in order: {'; '.join(acts) or 'none'}."
    )

  def answer(self, clip, question: str, choices: Sequence[str] | None = None) -> str:
    """With choices: the one an annotated action involves, not named by the question.

    "What is the object touched by the red circle?" -> the other object of the touch; for a
    passive question without the actor ("the object that is touched") the object named
    after the verb wins.
    """
    if not choices:
      return self.summarize(clip, question)
    q = " " + " ".join(question.lower().split()) + " "
    passive = any(m in q for m in (" by ", " is touched", " was touched", " touched?"))
    named = {c for c in choices if match_score(c, question) == 1.0}
    best = None
    for i, c in enumerate(choices):
      for a, onset in _actions_in(self.gt, clip):
        if c in named or match_score(c, a) < 1.0:
          continue
        pos = a.lower().find(_object_phrase(c))
        key = (onset, -pos if passive else pos, i)
        if best is None or key < best[0]:
          best = (key, c)
    return best[1] if best else self.summarize(clip, question)


def _object_phrase(text: str) -> str:
  words = text.lower().strip().rstrip(".").split()
  while words and words[0] in ("the", "a", "an"):
    words = words[1:]
  return " ".join(words)


class KeywordSelector:
  """`AnswerSelector` without a model: the choice sharing most content words with the info.

  A baseline for tests and for runs without an LLM, not an oracle: it never sees the answer.
  Ties go to the choice quoted earliest in the info (latest when the question asks what
  happened "before"), then to the first choice.
  """

  def __init__(self, name: str = "keyword"):
    self.name = name

  def select(self, question: str, choices: Sequence[str], info: str) -> str:
    words = set(content_words(info))
    text = info.lower()
    before = "before" in question.lower().split()

    def rank(i_choice):
      i, choice = i_choice
      cw = content_words(choice)
      overlap = sum(w in words for w in cw) / max(len(cw), 1)
      pos = text.find(_object_phrase(choice))
      pos = (-pos if before else pos) if pos >= 0 else float("inf")
      return (-overlap, pos, i)

    return min(enumerate(choices), key=rank)[1]
