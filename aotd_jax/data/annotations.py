"""VideoQA annotation readers: seven published formats -> one `VideoQA` record type.

`read(fmt, path, **kw)` returns a list of `VideoQA` (a `Records` list whose `.report` is the
`ReadReport` of that read). A malformed record never stops a read and is never dropped
silently: it is reported with its file and row / key, counted, skipped, and the summary is
logged at the end. A file that cannot be read at all (missing, not JSON / CSV) raises
`AnnotationError` naming it.

The per-format parsers live in `annotations_formats.py`; this file holds the record type,
the report and the dispatcher.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping

from absl import logging

from aotd_jax.data import files


@dataclasses.dataclass
class VideoQA:
  """One video question.

  Attributes:
    qid: unique question id within the dataset (e.g. NExT-QA's `"{video}_{qid}"`).
    video_id: the dataset's video id (the file stem of the video, or a key into a map).
    question: question text as published.
    choices: answer options; empty for open-ended questions.
    answer: the correct answer text ("" for unlabelled test splits).
    answer_index: index of `answer` in `choices` (None when open-ended or unlabelled).
    start, end: the question's window in seconds (None: the whole video).
    meta: everything else the format carries (programs, types, video paths, ...).
  """

  qid: str
  video_id: str
  question: str
  choices: list[str]
  answer: str
  answer_index: int | None = None
  start: float | None = None
  end: float | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def is_multiple_choice(self) -> bool:
    return bool(self.choices)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict of all fields."""
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    """One JSON line holding all fields."""
    return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

  @classmethod
  def from_json(cls, data: str | bytes | Mapping[str, Any]) -> "VideoQA":
    """Inverse of `to_json` / `to_dict` (accepts the string or the parsed dict)."""
    if isinstance(data, (str, bytes)):
      data = json.loads(data)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
      raise ValueError(f"VideoQA.from_json: unknown fields {sorted(unknown)}")
    missing = {"qid", "video_id", "question", "choices", "answer"} - set(data)
    if missing:
      raise ValueError(f"VideoQA.from_json: missing fields {sorted(missing)}")
    kw = dict(data)
    kw["choices"] = list(kw["choices"])
    kw["meta"] = dict(kw.get("meta") or {})
    return cls(**kw)


class AnnotationError(Exception):
  """A whole annotation file cannot be read (missing, unparsable, wrong top-level shape)."""


class BadRecord(Exception):
  """Raised by a format parser for one malformed record; the reader reports and skips it."""


@dataclasses.dataclass
class ReadReport:
  """What one `read` call did: counts and one message per skipped record."""

  fmt: str
  path: str
  num_records: int = 0
  num_skipped: int = 0
  messages: list[str] = dataclasses.field(default_factory=list)

  def skip(self, where: str, why: str) -> None:
    """Counts a malformed record; `where` names the file and row / key."""
    self.num_skipped += 1
    msg = f"{where}: {why}"
    self.messages.append(msg)
    logging.warning("annotations[%s]: skipped malformed record %s", self.fmt, msg)

  def summary(self) -> str:
    return (
      f"{self.fmt} {self.path}: {self.num_records} records read, "
      f"{self.num_skipped} malformed skipped"
    )


class Records(list):
  """`list[VideoQA]` that also carries the `ReadReport` of the read that produced it."""

  def __init__(self, items=(), report: ReadReport | None = None):
    super().__init__(items)
    self.report = report


class _Context:
  """Handed to parsers: turns per-record exceptions into report entries."""

  def __init__(self, report: ReadReport, labelled: bool):
    self.report = report
    self.labelled = labelled

  def parse(self, where: str, fn: Callable[[], VideoQA | list[VideoQA]]) -> Iterator[VideoQA]:
    try:
      out = fn()
    except (BadRecord, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
      why = f"missing field {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
      self.report.skip(where, why)
      return
    yield from (out if isinstance(out, list) else [out])


def load_json(path: str) -> Any:
  """json.load with an `AnnotationError` naming the file on failure."""
  try:
    return json.loads(files.read_text(path))
  except FileNotFoundError as e:
    raise AnnotationError(f"annotation file not found: {path}") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnnotationError(f"{path}: not valid JSON ({e})") from e


def _readers() -> dict[str, Callable[..., Iterator[VideoQA]]]:
  from aotd_jax.data import annotations_formats as f  # pylint: disable=g-import-not-at-top

  return {
    "star": f.read_star,
    "nextqa": f.read_nextqa,
    "activitynet_qa": f.read_activitynet_qa,
    "agqa": f.read_agqa,
    "clevrer": f.read_clevrer,
    "mvbench": f.read_mvbench,
    "perception_test": f.read_perception_test,
  }


FORMATS = ("star", "nextqa", "activitynet_qa", "agqa", "clevrer", "mvbench", "perception_test")


WINDOWS = ("question", "whole")


def read(
  fmt: str, path: str | os.PathLike, *, labelled: bool = True, window: str = "question", **kw
) -> Records:
  """Reads an annotation file of format `fmt` into `VideoQA` records.

  Args:
    fmt: one of `FORMATS`.
    path: the annotation file (for `mvbench` also a directory of per-task JSON files; for
      `activitynet_qa` the `*_q.json`).
    labelled: when False, records without an answer (test splits) are kept with
      `answer=""`; when True they are reported as malformed.
    window: "question" keeps each record's `start` / `end` (STAR's question window: the
      agent, the trainer and the evaluation then decode only that span); "whole" drops them,
      so the whole video is used, as the official AoTD release does (the window stays in
      `meta["question_window"]`).
    **kw: format options (`map_path=` for nextqa, `answers_path=` for activitynet_qa,
      `task=` for an mvbench file).

  Returns:
    `Records` (a list of `VideoQA`) with `.report` (counts and messages).
  """
  readers = _readers()
  if fmt not in readers:
    raise ValueError(f"unknown annotation format {fmt!r}; expected one of {FORMATS}")
  if window not in WINDOWS:
    raise ValueError(f"annotations: window={window!r} is not one of {WINDOWS}")
  path = os.fspath(path)
  report = ReadReport(fmt=fmt, path=path)
  ctx = _Context(report, labelled)
  records = Records(readers[fmt](path, ctx, **kw), report=report)
  report.num_records = len(records)
  seen: set[str] = set()
  unique = Records(report=report)
  for r in records:
    if r.qid in seen:
      report.skip(f"{path}:{r.qid}", "duplicate qid")
      continue
    seen.add(r.qid)
    if window == "whole" and (r.start is not None or r.end is not None):
      r = dataclasses.replace(
        r, start=None, end=None, meta={**r.meta, "question_window": [r.start, r.end]}
      )
    unique.append(r)
  report.num_records = len(unique)
  log = logging.warning if report.num_skipped else logging.info
  log("annotations: %s", report.summary())
  return unique
