"""Execution trace -> chain-of-thought rationale.

Two writers share one reading of the trace:
- `verbalise(trace, answer)`: deterministic, faithful, offline. One sentence per tool call,
  stating every frame window and every box the call produced, ending "So the answer is X."
  Used in the toy world, without an LLM, and as the fallback of the rewrite.
- `rewrite(llm, items)`: the LLM rewrite prompt (`data/prompts/cot_rewrite.txt`) asks for a
  natural rationale that uses every box and window; a reply that drops evidence (checked by
  `missing_evidence`) or is empty falls back to the verbaliser.

A trace is a sequence of tool calls, each a `ToolCall(name, args, result, seconds)` or its
JSON dict. Arguments and results are the tools' JSON forms: clips
`{"type": "VideoClip", "start_frame", "end_frame" (exclusive), ...}`, boxes
`{"frame", "label", "score", "box": [x0, y0, x1, y1]}`, windows `{"start_frame", "end_frame", ...}`,
labels, counts, booleans and text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aotd_jax.agent import programs
from aotd_jax.agent.trace import ToolCall

_CLIP_ARG_NAMES = ("video_clip", "clip")
MAX_BOXES_PER_OBJECT = 4
_NUMBER = re.compile(r"\d+(?:\.\d+)?")  # "12-39" is two numbers, not 12 and -39


# -- reading a trace -----------------------------------------------------------------------------


def as_call(call: Any) -> dict:
  """A tool call as a plain dict with keys name, args, result, seconds (the values are the
  call's own, not copies: read them, do not change them)."""
  if type(call) is ToolCall:  # its args and result are summaries (JSON values): no copy
    return {"name": call.name, "args": call.args, "result": call.result, "seconds": call.seconds}
  if isinstance(call, Mapping):
    return {
      "name": call.get("name", "?"),
      "args": call.get("args", {}),
      "result": call.get("result"),
      "seconds": call.get("seconds", 0.0),
    }
  if dataclasses.is_dataclass(call):
    return as_call(dataclasses.asdict(call))
  return {
    "name": getattr(call, "name", "?"),
    "args": getattr(call, "args", {}),
    "result": getattr(call, "result", None),
    "seconds": getattr(call, "seconds", 0.0),
  }


def as_calls(trace: Any) -> list[dict]:
  """The tool calls of a `Trace` object, a list of `ToolCall`s or their dicts."""
  if trace is None:
    return []
  calls = getattr(trace, "calls", trace)
  if isinstance(calls, Mapping):
    calls = calls.get("calls", [])
  return [as_call(c) for c in calls]


@dataclasses.dataclass
class Evidence:
  """What a value says about the video: windows (start, end-exclusive), boxes, labels."""

  windows: list[tuple[int, int]] = dataclasses.field(default_factory=list)
  boxes: list[dict] = dataclasses.field(default_factory=list)  # runs, see `evidence`
  labels: list[str] = dataclasses.field(default_factory=list)
  scalars: list[Any] = dataclasses.field(default_factory=list)  # counts, booleans


def _is_box(value: Any) -> bool:
  return (
    isinstance(value, Mapping)
    and "box" in value
    and "frame" in value
    and isinstance(value["box"], (list, tuple))
    and len(value["box"]) == 4
  )


def _is_window(value: Any) -> bool:
  return isinstance(value, Mapping) and "start_frame" in value and "end_frame" in value


def _collect(value: Any, out: Evidence) -> None:
  if _is_box(value):
    box = [float(v) for v in value["box"]]
    frame, label = int(value["frame"]), str(value.get("label", ""))
    for run in reversed(out.boxes):  # the same box in the next frame extends its run
      if run["label"] == label:
        if run["box"] == box and run["last_frame"] in (frame - 1, frame):
          run["last_frame"] = frame
          return
        break
    out.boxes.append({"frame": frame, "last_frame": frame, "label": label, "box": box})
  elif _is_window(value):
    window = (int(value["start_frame"]), int(value["end_frame"]))
    if window[1] > window[0] and window not in out.windows:  # an empty clip shows nothing
      out.windows.append(window)
    for key, item in value.items():
      if key not in (
        "start_frame",
        "end_frame",
        "type",
        "video_id",
        "num_frames",
        "fps",
        "frame_ids",
        "score",
        "query",
      ):
        _collect(item, out)
  elif isinstance(value, Mapping):
    for key, item in value.items():
      if key not in ("type", "frames", "score"):  # tags, frame lists restating boxes, scores
        _collect(item, out)
  elif isinstance(value, (list, tuple)):
    for item in value:
      _collect(item, out)
  elif isinstance(value, str):
    if value.strip():
      out.labels.append(value.strip())
  elif isinstance(value, (bool, int, float)):
    out.scalars.append(value)


def evidence(value: Any, *, max_boxes_per_object: int = MAX_BOXES_PER_OBJECT) -> Evidence:
  """The windows, boxes, labels and scalars inside a JSON-like value, in order.

  Boxes are runs: `{"frame", "last_frame", "label", "box"}` for one box held over
  consecutive frames. An object with more than `max_boxes_per_object` runs keeps that many,
  evenly spaced from its first to its last (a rationale cannot quote a box per frame); the
  verbaliser, the rewrite prompt and the evidence check all see the same key boxes.
  """
  out = Evidence()
  _collect(value, out)
  by_label: dict[str, list[int]] = {}
  for i, run in enumerate(out.boxes):
    by_label.setdefault(run["label"], []).append(i)
  keep = set()
  for idx in by_label.values():
    if len(idx) <= max_boxes_per_object:
      keep.update(idx)
    else:
      picks = (
        {
          round(k * (len(idx) - 1) / (max_boxes_per_object - 1))
          for k in range(max_boxes_per_object)
        }
        if max_boxes_per_object > 1
        else {0}
      )
      keep.update(idx[p] for p in picks)
  out.boxes = [run for i, run in enumerate(out.boxes) if i in keep]
  return out


def trace_evidence(trace: Any) -> Evidence:
  """Every window and box that the trace's tool calls *produced* (their results)."""
  out = Evidence()
  for call in as_calls(trace):
    found = evidence(call["result"])
    out.windows += [w for w in found.windows if w not in out.windows]
    out.boxes += found.boxes
  return out


# -- formatting (shared by the verbaliser, the rewrite prompt and the rule judge) ------------------


def _num(v: float) -> str:
  return str(int(round(v))) if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def window_text(window: tuple[int, int]) -> str:
  """`frames 12-39` for the end-exclusive window (12, 40); `frame 12` for one frame."""
  start, end = window
  last = max(start, end - 1)
  return f"frame {start}" if last == start else f"frames {start}-{last}"


def box_text(box: Mapping) -> str:
  """`the red circle at [10, 20, 30, 40] in frame 7` (or `in frames 7-9` for a run)."""
  coords = ", ".join(_num(v) for v in box["box"])
  label = f"the {box['label']} " if box.get("label") else ""
  last = box.get("last_frame", box["frame"])
  frames = f"frame {box['frame']}" if last == box["frame"] else f"frames {box['frame']}-{last}"
  return f"{label}at [{coords}] in {frames}"


def _join(items: Sequence[str]) -> str:
  items = list(items)
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def _arg(args: Any, *names: str, position: int | None = None) -> Any:
  if isinstance(args, Mapping):
    for name in names:
      if name in args:
        return args[name]
    values = list(args.values())
  else:
    values = list(args or [])
  if position is not None and position < len(values):
    return values[position]
  return None


def _input_window(args: Any) -> tuple[int, int] | None:
  clip = _arg(args, *_CLIP_ARG_NAMES, position=0)
  return (int(clip["start_frame"]), int(clip["end_frame"])) if _is_window(clip) else None


def _the(noun: str) -> str:
  """`red circle` -> `the red circle`; `a cup` / `the cup` / `it` stay as they are."""
  return noun if noun == "it" or noun.lower().startswith(("the ", "a ", "an ")) else "the " + noun


def _clean(value: Any) -> str:
  """Text for the end of a sentence: no doubled full stop, 'The cup.' -> 'the cup'."""
  text = _text(value).strip().rstrip(".")
  return text[0].lower() + text[1:] if text.startswith(("The ", "A ", "An ")) else text


def _text(value: Any) -> str:
  if isinstance(value, str):
    return value
  found = evidence(value)
  return _join(found.labels) if found.labels else str(value)


def describe_call(call: Mapping) -> str:
  """One faithful sentence for one tool call (every window and box of its result)."""
  text = _describe(call)
  found = evidence(call["result"])
  windows = [window_text(w) for w in found.windows if window_text(w) not in text]
  boxes = [box_text(b) for b in found.boxes if box_text(b) not in text]
  if windows:
    text += f" This covers {_join(windows)}."
  if boxes:
    text += f" I see {_join(boxes)}."
  return text


def _describe(call: Mapping) -> str:
  name, args, result = call["name"], call["args"], call["result"]
  found = evidence(result)
  where = _input_window(args)
  scope = f"in {window_text(where)}" if where else "in the video"
  subject = _arg(args, "obj", "object_name", "object", "action", "act", "query", position=1)
  subject = _text(subject) if subject is not None else "it"
  boxes = [box_text(b) for b in found.boxes]
  windows = [window_text(w) for w in found.windows]
  the_subject = _the(subject)
  if name == "Filter_frames_with_act":
    if not windows:
      return f"Looking for when {subject} {scope}, I cannot find it."
    return f"Looking for when {subject} {scope}, I find it in {_join(windows)}."
  if name == "Filter_frames_with_obj":
    if not windows:
      return f"Looking for {the_subject} {scope}, I cannot find it."
    return f"Looking for {the_subject} {scope}, I find it in {_join(windows)}."
  if name == "trim" and not windows:
    return f"Cutting the video {scope} leaves no frames."
  if name == "trim":
    return f"I focus on {_join(windows)} of the video."
  if name == "Find":
    if not boxes:
      return f"I look for {the_subject} {scope} but do not see it."
    return f"I locate {_join(boxes)}."
  if name == "exist":
    seen = bool(found.scalars and found.scalars[0])
    return f"{the_subject[0].upper() + the_subject[1:]} is {'' if seen else 'not '}present {scope}."
  if name == "Count":
    count = found.scalars[0] if found.scalars else _text(result)
    return f"I count {count} of {the_subject} {scope}."
  if name == "Query_Objs":
    seen = _join([_the(x) for x in dict.fromkeys(b["label"] for b in found.boxes if b["label"])])
    return f"Looking for {subject} {scope}, I see {seen or 'nothing that matches'}."
  if name == "Query_Actions":
    actions = _join([label.rstrip(".") for label in found.labels])
    return f"Checking the actions {scope}, I see: {actions or 'nothing relevant'}."
  if name == "Video_summary":
    return f"Watching {scope[3:] if where else 'the video'}: {_text(result)}".rstrip(".") + "."
  if name == "select_answer":
    return f"Putting these observations together, the best answer is {_clean(result)}."
  parts = [f"Using {name} {scope}"]
  if windows:
    parts.append(f"I find {_join(windows)}")
  if boxes:
    parts.append(f"I see {_join(boxes)}")
  if not windows and not boxes:
    parts.append(f"I get {_text(result)}")
  return ", ".join(parts) + "."


def answer_sentence(answer: Any) -> str:
  """The rationale's last sentence."""
  return f"So the answer is {_clean(answer)}."


def verbalise(trace: Any, answer: Any) -> str:
  """A deterministic step-by-step rationale from a structured trace, ending in the answer."""
  steps = [describe_call(c) for c in as_calls(trace)]
  return " ".join(steps + [answer_sentence(answer)])


# -- the LLM rewrite -----------------------------------------------------------------------------


def render_trace(trace: Any) -> str:
  """The trace as numbered lines for the rewrite prompt (windows and boxes pre-formatted)."""
  lines = []
  for i, call in enumerate(as_calls(trace), 1):
    args = call["args"]
    where = _input_window(args)
    found = evidence(call["result"])
    parts = [f"{i}. {call['name']}"]
    if where:
      parts.append(f"on {window_text(where)}")
    shown = (
      {k: v for k, v in args.items() if k not in _CLIP_ARG_NAMES}
      if isinstance(args, Mapping)
      else [a for a in (args or []) if not _is_window(a)]
    )
    if shown:
      parts.append(f"with {shown}")
    got = [window_text(w) for w in found.windows] + [box_text(b) for b in found.boxes]
    got += found.labels + [str(s) for s in found.scalars]
    parts.append("-> " + ("; ".join(got) if got else "nothing"))
    lines.append(" ".join(parts))
  return "\n".join(lines)


REWRITE_PROMPTS = {"ours": "cot_rewrite.txt", "official": "cot_rewrite_official.txt"}
REWRITE_FALLBACKS = ("verbaliser", "none")


def rewrite_prompt(
  question: str,
  choices: Sequence[str],
  trace: Any,
  answer: Any,
  template: str | None = None,
  program: str | None = None,
) -> str:
  """The LLM rewrite prompt for one question (`data/prompts/cot_rewrite.txt`, or the official
  release's structure with the program, `cot_rewrite_official.txt`)."""
  template = template or programs.read_prompt_file("cot_rewrite.txt")
  return template.format(
    question=question,
    choices=programs.format_choices(choices) or "(open-ended)",
    trace=render_trace(trace),
    answer=_text(answer),
    program=(program or "").strip() or "(no program)",
  )


def numbers_in(text: str) -> set[str]:
  """The numbers written in `text`, normalised like `_num` (for evidence checks)."""
  return {_num(float(n)) for n in _NUMBER.findall(text)}


def missing_evidence(rationale: str, trace: Any) -> list[str]:
  """The windows and boxes of the trace that the rationale does not state (their numbers)."""
  have = numbers_in(rationale)
  found = trace_evidence(trace)
  missing = []
  for window in found.windows:
    start, end = window
    if not {_num(start), _num(max(start, end - 1))} <= have:
      missing.append(window_text(window))
  for box in found.boxes:
    if not {_num(v) for v in box["box"]} | {str(box["frame"])} <= have:
      missing.append(box_text(box))
  return missing


def rewrite(
  llm,
  items: Iterable[tuple],
  *,
  max_new_tokens: int = 384,
  temperature: float = 0.0,
  prompt: str = "ours",
  fallback: str = "verbaliser",
) -> list[tuple[str, str]]:
  """LLM-rewrites a batch of (question, choices, trace, answer[, program]) into rationales.

  `prompt`: "ours" (question, choices, trace, final answer) or "official" (question, choices,
  program, trace: the official release's rewrite prompt structure). `fallback`: "verbaliser"
  replaces a reply that is empty or leaves out a window or box of the trace with the
  verbaliser's rationale (ours); "none" keeps the reply as written (the official release).

  Returns:
    (rationale, source) per item; source is "llm" or "verbaliser".
  """
  if prompt not in REWRITE_PROMPTS:
    raise ValueError(f"rewrite prompt {prompt!r} not in {sorted(REWRITE_PROMPTS)}")
  if fallback not in REWRITE_FALLBACKS:
    raise ValueError(f"rewrite fallback {fallback!r} not in {REWRITE_FALLBACKS}")
  items = [tuple(it) + (None,) * (5 - len(it)) for it in items]
  template = programs.read_prompt_file(REWRITE_PROMPTS[prompt])
  prompts = [rewrite_prompt(q, c, t, a, template, program=prog) for q, c, t, a, prog in items]
  replies = (
    llm.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature) if prompts else []
  )
  out = []
  for (_, _, trace, answer, _), reply in zip(items, replies):
    text = (reply or "").strip()
    if fallback == "none" and text:
      out.append((text, "llm"))
    elif text and not missing_evidence(text, trace):
      if _text(answer).lower() not in text.lower().splitlines()[-1]:
        text = text + " " + answer_sentence(answer)
      out.append((text, "llm"))
    else:
      out.append((verbalise(trace, answer), "verbaliser"))
  return out
