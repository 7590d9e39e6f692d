"""What the tools need from a model: four small protocols, and the plain results they return.

A backend is anything with these methods: our Flax models (`owlv2.py`, `univtg.py`,
`llava.py`, `llama.py`), the ground-truth oracle (`oracle.py`) or a test double. Results are
small dataclasses that survive a JSON round trip, so the disk cache can store them and the
agent's trace can print them.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Box:
  """One detection: `label` at `box` = (x0, y0, x1, y1) in pixels of the source frame."""

  frame_id: int
  label: str
  score: float
  box: tuple[float, float, float, float]

  def to_json(self) -> dict:
    return {
      "frame": int(self.frame_id),
      "label": self.label,
      "score": round(float(self.score), 4),
      "box": [round(float(v), 1) for v in self.box],
    }

  @classmethod
  def from_json(cls, d: dict) -> "Box":
    return cls(
      int(d["frame"]), str(d["label"]), float(d["score"]), tuple(float(v) for v in d["box"])
    )


@dataclasses.dataclass(frozen=True)
class Window:
  """A time window [start_frame, end_frame) of the source video where `query` happens."""

  start_frame: int
  end_frame: int
  score: float
  query: str

  def to_json(self) -> dict:
    return {
      "start_frame": int(self.start_frame),
      "end_frame": int(self.end_frame),
      "score": round(float(self.score), 4),
      "query": self.query,
    }

  @classmethod
  def from_json(cls, d: dict) -> "Window":
    return cls(int(d["start_frame"]), int(d["end_frame"]), float(d["score"]), str(d["query"]))


@runtime_checkable
class Detector(Protocol):
  """Open-vocabulary object detection on every frame of a clip."""

  name: str

  def detect(self, clip, queries: Sequence[str], *, threshold: float) -> list[list[Box]]:
    """Per frame of `clip` (in order), the boxes scoring >= threshold for any of `queries`.

    `Box.label` is the query string that matched; boxes are in source-frame pixels and
    `Box.frame_id` is the clip's `frame_ids[i]`.
    """


@runtime_checkable
class Grounder(Protocol):
  """Temporal grounding: where in a clip does a described moment happen."""

  name: str

  def ground(self, clip, query: str, *, top_k: int = 1) -> list[Window]:
    """Best-first windows in source frame ids, within [clip.start_frame, clip.end_frame)."""


@runtime_checkable
class VideoQA(Protocol):
  """A video-language model that answers a question about a clip, or describes it."""

  name: str

  def answer(self, clip, question: str, choices: Sequence[str] | None = None) -> str:
    """Free text, or (with `choices`) one of the choices."""

  def summarize(self, clip, query: str | None = None) -> str:
    """A short description of what happens in the clip (focused on `query` if given)."""


@runtime_checkable
class ActionRecognizer(Protocol):
  """Which actions happen in a clip (optionally only those involving an object)."""

  name: str

  def recognize(
    self, clip, object_name: str | None = None, candidates: Sequence[str] | None = None
  ) -> list[str]:
    """Action labels, most confident first; drawn from `candidates` when given."""


@runtime_checkable
class AnswerSelector(Protocol):
  """Picks one of the possible answers from the evidence a program collected (an LLM)."""

  name: str

  def select(self, question: str, choices: Sequence[str], info: str) -> str:
    """One element of `choices`."""
