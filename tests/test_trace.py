"""Execution traces: structured, JSON-serialisable summaries and their round trip."""

import dataclasses
import enum
import json

import numpy as np
import pytest

from aotd_jax.agent.trace import MAX_SEQUENCE_ITEMS, ToolCall, Trace, summarize


@dataclasses.dataclass
class Clip:
  frames: np.ndarray
  start_frame: int
  end_frame: int


class Boxes:
  def __init__(self, frame, xyxy, label):
    self.frame, self.xyxy, self.label = frame, xyxy, label

  def to_json(self):
    return {"frame": self.frame, "box": self.xyxy, "label": self.label}


class Color(enum.IntEnum):
  RED = 3


def test_summarize_keeps_evidence_and_truncates_frames():
  frames = np.full((8, 32, 32, 3), 7, np.uint8)
  clip = Clip(frames, 10, 18)
  s = summarize(clip)
  assert s == {
    "type": "Clip",
    "start_frame": 10,
    "end_frame": 18,
    "frames": {
      "type": "ndarray",
      "shape": [8, 32, 32, 3],
      "dtype": "uint8",
      "truncated": True,
      "min": 7,
      "max": 7,
    },
  }
  boxes = np.array([[1.5, 2.0, 3.0, 4.0]], np.float32)
  assert summarize(Boxes(12, boxes, "cup")) == {
    "frame": 12,
    "box": [[1.5, 2.0, 3.0, 4.0]],
    "label": "cup",
  }
  assert summarize(np.int64(3)) == 3 and type(summarize(np.float32(0.5))) is float
  assert summarize(np.array(["a", "b"])) == ["a", "b"]
  assert summarize({"window": (2, 5), 3: {1, 0}}) == {"window": [2, 5], "3": [0, 1]}
  assert summarize(Color.RED) == 3 and summarize(True) is True


def test_summarize_edge_cases_are_json():
  values = [
    float("nan"),
    float("inf"),
    "x" * 10_000,
    b"raw",
    object(),
    None,
    list(range(MAX_SEQUENCE_ITEMS + 5)),
    np.zeros((0, 4)),
  ]
  s = summarize(values)
  json.dumps(s, allow_nan=False)
  assert s[0] == "nan" and s[1] == "inf" and s[2].endswith("...") and len(s[2]) < 5000
  assert s[3] == {"type": "bytes", "length": 3} and s[4]["type"] == "object"
  assert s[6][-1] == {"truncated": 5} and len(s[6]) == MAX_SEQUENCE_ITEMS + 1
  assert s[7] == []
  deep = []
  for _ in range(50):
    deep = [deep]
  json.dumps(summarize(deep))  # bounded depth, no recursion error


def test_summarize_jax_arrays():
  jnp = pytest.importorskip("jax.numpy")
  assert summarize(jnp.arange(3)) == [0, 1, 2]
  assert summarize(jnp.zeros((40, 40)))["shape"] == [40, 40]


def test_trace_round_trip():
  calls = [
    ToolCall("trim", {"start": 2, "end": 5}, {"type": "Clip", "start_frame": 2}, 0.01),
    ToolCall("Find", {"object_name": "cup"}, [{"frame": 3, "box": [1, 2, 3, 4]}], 0.2),
    ToolCall("Query_Actions", {"query": "?"}, None, 0.0, error="tool failed: boom"),
  ]
  t = Trace(calls, value="cup", ok=True, seconds=0.3, stdout="hi\n", program="def f(): ...")
  text = t.dumps()
  back = Trace.from_json(text)
  assert back == t and back.to_json() == json.loads(text)
  assert Trace.from_json(json.loads(text)).tools_used() == ["trim", "Find", "Query_Actions"]


def test_trace_bad_records_are_named():
  with pytest.raises(ValueError, match="bad Trace record: expected an object with 'calls'"):
    Trace.from_json("[1, 2]")
  with pytest.raises(ValueError, match=r"bad ToolCall record .*'seconds'"):
    Trace.from_json({"calls": [{"name": "x", "args": {}, "result": 1}]})
