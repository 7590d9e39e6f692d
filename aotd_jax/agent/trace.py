"""Execution traces: every tool call of a program, in structured, JSON-serialisable form.

A trace is the evidence the rationale is written from (AoTD §3.2): which tool was called
with which arguments (frame windows, object names, questions), what it returned (boxes with
frame indices, labels, the chosen answer), how long it took, and the program's final value.
`summarize(value)` turns whatever a tool takes or returns into plain JSON: numpy arrays
become lists (or a shape/dtype summary when large, e.g. video frames), objects with
`to_json()` use it, dataclasses become dicts tagged with their type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
from typing import Any, Sequence

MAX_ARRAY_ELEMENTS = 256  # arrays up to this size are kept whole (boxes, scores)
MAX_SEQUENCE_ITEMS = 1000  # longer lists keep their head and count the rest
MAX_STRING_CHARS = 4000
MAX_DEPTH = 12


def _summarize_array(arr, max_array_elements: int) -> Any:
  if arr.dtype.kind in "biuf" and arr.size <= max_array_elements:
    return [summarize(v) for v in arr.tolist()] if arr.ndim else summarize(arr.item())
  if arr.dtype.kind in "US" and arr.size <= max_array_elements:
    return arr.tolist()
  out = {"type": "ndarray", "shape": list(arr.shape), "dtype": str(arr.dtype), "truncated": True}
  if arr.dtype.kind in "biuf" and arr.size:
    out["min"] = summarize(arr.min().item())
    out["max"] = summarize(arr.max().item())
  return out


MAX_NODES = 20_000  # values summarised per call (shared references count each time)
MAX_INT_DIGITS = 60


def safe_str(text: str, limit: int = MAX_STRING_CHARS) -> str:
  """`text` cut to `limit` chars, lone surrogates escaped (so it encodes as UTF-8)."""
  if len(text) <= limit and text.isascii():  # the common case: nothing to cut or escape
    return text
  cut = len(text) > limit
  text = text[:limit]
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    cut = cut or len(text) > limit
    text = text[:limit]
  return text + "..." if cut else text


def _int(value: int):
  if -(1 << 63) <= value < (1 << 63):
    return value
  return {"type": "int", "bits": value.bit_length(), "sign": -1 if value < 0 else 1}


def summarize(
  value: Any, *, max_array_elements: int = MAX_ARRAY_ELEMENTS, max_nodes: int = MAX_NODES
) -> Any:
  """Returns a bounded, JSON-serialisable summary of `value` (a tool argument or result, a
  program's value).

  Numbers, strings, None stay as they are (non-finite floats become "nan"/"inf" strings,
  ints beyond 64 bits `{"type": "int", "bits", "sign"}`, strings are cut at MAX_STRING_CHARS
  with lone surrogates escaped); numpy arrays of at most `max_array_elements` become nested
  lists, larger ones a `{"type": "ndarray", "shape", "dtype", "truncated": true, "min",
  "max"}` summary; objects with `to_json()` are summarised through it; dataclasses become
  `{"type": ClassName, field: ...}`; mappings and sequences recurse (sequences longer than
  MAX_SEQUENCE_ITEMS keep their head plus a `{"truncated": n}` marker); anything else
  becomes `{"type": ClassName}`. At most `max_nodes` values are visited in all (a list that
  contains itself, or a DAG with 2**60 paths, ends in `{"truncated": true}` markers) and
  nesting stops at MAX_DEPTH, so the work is bounded whatever the value.
  """
  budget = [max_nodes]
  return _summarize(value, max_array_elements, 0, budget)


def _summarize(value: Any, max_array_elements: int, depth: int, budget: list) -> Any:
  budget[0] -= 1
  if budget[0] < 0:
    return {"truncated": True}
  t = type(value)
  if value is None or t is bool:
    return value
  if isinstance(value, int):
    return _int(int(value))
  if isinstance(value, float):
    return float(value) if math.isfinite(value) else str(value)
  if isinstance(value, str):
    return safe_str(str.__str__(value))
  if depth > MAX_DEPTH:
    return {"type": t.__name__, "truncated": True}
  rec = lambda v: _summarize(v, max_array_elements, depth + 1, budget)  # noqa: E731
  if t is dict:  # the common containers first: none of the checks below applies to them
    return _summarize_dict(value, rec, budget)
  if t is list or t is tuple:
    return _summarize_sequence(value, rec, budget)
  np = _numpy()
  if np is not None:
    if isinstance(value, np.ndarray):
      if value.dtype.hasobject:
        return {"type": "ndarray", "shape": list(value.shape), "dtype": "object", "truncated": True}
      return _summarize_array(value, max_array_elements)
    if isinstance(value, np.generic):
      if isinstance(value, (np.integer, np.floating, np.bool_, np.str_)):
        return rec(value.item())
      return {"type": t.__name__}
  if hasattr(value, "__jax_array__") or t.__module__.startswith("jax"):
    if np is not None and hasattr(value, "shape"):
      return _summarize_array(np.asarray(value), max_array_elements)
  if isinstance(value, complex):
    return {"type": "complex", "real": rec(value.real), "imag": rec(value.imag)}
  to_json = getattr(value, "to_json", None)
  if callable(to_json) and not isinstance(value, type):
    return rec(to_json())
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    out = {"type": t.__name__}
    for f in dataclasses.fields(value):
      out[f.name] = rec(getattr(value, f.name))
    return out
  if isinstance(value, dict):
    return _summarize_dict(value, rec, budget)
  if isinstance(value, (set, frozenset)):
    items = list(value)[: MAX_SEQUENCE_ITEMS + 1]
    try:
      items.sort()
    except TypeError:
      pass
    value = items
  if isinstance(value, (list, tuple)):
    return _summarize_sequence(value, rec, budget)
  if isinstance(value, (bytes, bytearray)):
    return {"type": t.__name__, "length": len(value)}
  return {"type": t.__name__}


def _plain(v) -> bool:
  """Whether `_summarize(v)` is `v` itself (a None, bool, 64-bit int, finite float or short
  ASCII str): summarised without a call, the same value either way."""
  t = type(v)
  if t is str:
    return len(v) <= MAX_STRING_CHARS and v.isascii()
  if t is int:
    return -(1 << 63) <= v < (1 << 63)
  if t is float:
    return math.isfinite(v)
  return v is None or t is bool


def _summarize_dict(value: dict, rec, budget: list) -> dict:
  out = {}
  for i, (k, v) in enumerate(value.items()):
    if i >= MAX_SEQUENCE_ITEMS or budget[0] < 0:
      out["truncated"] = len(value) - i
      break
    key = k if isinstance(k, str) else json.dumps(rec(k))
    key = safe_str(str.__str__(key), 200)
    if _plain(v):
      budget[0] -= 1
      out[key] = v if budget[0] >= 0 else {"truncated": True}
    else:
      out[key] = rec(v)
  return out


def _summarize_sequence(value, rec, budget: list) -> list:
  head = []
  for v in value[:MAX_SEQUENCE_ITEMS]:
    if budget[0] < 0:
      break
    if _plain(v):
      budget[0] -= 1
      head.append(v if budget[0] >= 0 else {"truncated": True})
    else:
      head.append(rec(v))
  if len(value) > len(head):
    head.append({"truncated": len(value) - len(head)})
  return head


def _numpy():
  try:
    import numpy

    return numpy
  except ImportError:  # pragma: no cover
    return None


@dataclasses.dataclass
class ToolCall:
  """One tool call of a program: `args` maps parameter names to summaries; `result` is the
  summary of what the tool returned (None with `error` set when it raised)."""

  name: str
  args: dict
  result: Any
  seconds: float
  error: str | None = None
  # The raw (args, result) when the sandbox ran with keep_raw=True; never serialised.
  raw: Any = dataclasses.field(default=None, repr=False, compare=False)

  def to_json(self) -> dict:
    d = {
      "name": self.name,
      "args": self.args,
      "result": self.result,
      "seconds": round(self.seconds, 6),
    }
    if self.error is not None:
      d["error"] = self.error
    return d

  @classmethod
  def from_json(cls, d: dict) -> "ToolCall":
    try:
      return cls(
        name=d["name"],
        args=d["args"],
        result=d["result"],
        seconds=float(d["seconds"]),
        error=d.get("error"),
      )
    except (KeyError, TypeError) as e:
      raise ValueError(f"bad ToolCall record {str(d)[:200]}: missing or bad {e}") from None


@dataclasses.dataclass
class Trace:
  """A whole execution: the program, its tool calls in order, its value and outcome."""

  calls: list[ToolCall]
  value: Any = None
  ok: bool = True
  error: str | None = None
  seconds: float = 0.0
  stdout: str = ""
  program: str | None = None

  def to_json(self) -> dict:
    """A plain dict (json.dumps-able)."""
    return {
      "program": self.program,
      "ok": self.ok,
      "error": self.error,
      "value": summarize(self.value),
      "seconds": round(self.seconds, 6),
      "stdout": self.stdout,
      "calls": [c.to_json() for c in self.calls],
    }

  @classmethod
  def from_json(cls, d: dict | str) -> "Trace":
    """Inverse of `to_json` (also accepts the JSON text)."""
    if isinstance(d, str):
      d = json.loads(d)
    if not isinstance(d, dict) or "calls" not in d:
      raise ValueError(f"bad Trace record: expected an object with 'calls', got {str(d)[:200]}")
    return cls(
      calls=[ToolCall.from_json(c) for c in d["calls"]],
      value=d.get("value"),
      ok=bool(d.get("ok", True)),
      error=d.get("error"),
      seconds=float(d.get("seconds", 0.0)),
      stdout=d.get("stdout", ""),
      program=d.get("program"),
    )

  def dumps(self) -> str:
    return json.dumps(self.to_json(), sort_keys=True)

  def tools_used(self) -> Sequence[str]:
    return [c.name for c in self.calls]


# -- raw model replies noted by tools ------------------------------------------------------------

_REPLIES = threading.local()
MAX_REPLY_CHARS = 2000


@contextlib.contextmanager
def capture_replies():
  """Collects, in this thread, the raw model replies that tools note with `note_reply` (e.g.
  the selector LLM's reply before it is snapped to an option); yields the list."""
  previous, sink = getattr(_REPLIES, "sink", None), []
  _REPLIES.sink = sink
  try:
    yield sink
  finally:
    _REPLIES.sink = previous


def note_reply(tool: str, reply: Any) -> None:
  """Adds `{"tool", "reply"}` to this thread's `capture_replies` list (no-op outside one)."""
  sink = getattr(_REPLIES, "sink", None)
  if sink is not None:
    sink.append({"tool": tool, "reply": safe_str(str(reply), MAX_REPLY_CHARS)})
