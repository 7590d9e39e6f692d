"""Trace -> rationale: the deterministic verbaliser and the LLM rewrite with its fallback."""

import dataclasses

from aotd_jax.agent import cot
from aotd_jax.agent.trace import ToolCall
from fixtures.scripted_llm import ScriptedLLM


def clip(start, end, **extra):
  return {
    "type": "VideoClip",
    "video_id": "v1",
    "start_frame": start,
    "end_frame": end,
    "num_frames": end - start,
    "fps": 8.0,
    **extra,
  }


@dataclasses.dataclass
class Call:  # the shape of aotd_jax.agent.trace.ToolCall
  name: str
  args: dict
  result: object
  seconds: float = 0.01


def box(frame, b, label="red circle"):
  return {"frame": frame, "label": label, "score": 0.9, "box": b}


def detections(obj, boxes):  # experts.tools.Detections.to_json()
  return {
    "type": "Detections",
    "object": obj,
    "frames": sorted({b["frame"] for b in boxes}),
    "boxes": boxes,
  }


BOXES = [box(12, [10.0, 20.0, 30.0, 44.5]), box(20, [11.0, 5.0, 31.0, 25.0])]
# The JSON that experts.tools records for each tool (results carry their evidence).
TRACE = [
  Call(
    "Filter_frames_with_act",
    {"video_clip": clip(0, 64), "action": "red circle jumps"},
    {
      "value": clip(12, 40),
      "windows": [{"start_frame": 12, "end_frame": 40, "score": 0.7, "query": "red circle jumps"}],
    },
  ),
  Call(
    "Find",
    {"video_clip": clip(12, 40), "object_name": "red circle"},
    clip(12, 21, frame_ids=[12, 20], detections=detections("red circle", BOXES)),
  ),
  Call(
    "Query_Actions",
    {
      "video_clip": clip(12, 40),
      "object_name": "red circle",
      "possible_actions": ["Jumped.", "Spun."],
    },
    ["jump", "move"],
  ),
  Call(
    "exist",
    {"video_clip": clip(12, 40), "object_name": "blue square"},
    {"value": False, "detections": detections("blue square", [])},
  ),
  Call(
    "Count",
    {"video_clip": clip(12, 40), "object_name": "star"},
    {
      "value": 2,
      "detections": detections(
        "star", [box(30, [1, 2, 3, 4], "star"), box(30, [5, 6, 7, 8], "star")]
      ),
    },
  ),
  Call("Video_summary", {"video_clip": clip(12, 40), "query": None}, "A red circle jumps twice."),
  Call(
    "select_answer",
    {"query": "What did the red circle do?", "possible_answers": ["Jumped.", "Spun."], "info": {}},
    "Jumped.",
  ),
]


def test_verbaliser_states_every_window_and_box_and_ends_in_answer():
  text = cot.verbalise(TRACE, "Jumped.")
  assert "Looking for when red circle jumps in frames 0-63, I find it in frames 12-39." in text
  assert "the red circle at [10, 20, 30, 44.5] in frame 12" in text
  assert "the red circle at [11, 5, 31, 25] in frame 20" in text
  assert "I see: jump and move" in text
  assert "The blue square is not present in frames 12-39." in text
  assert (
    "I count 2 of the star in frames 12-39. I see the star at [1, 2, 3, 4] in frame 30 and "
    "the star at [5, 6, 7, 8] in frame 30."
  ) in text
  assert (
    "I locate the red circle at [10, 20, 30, 44.5] in frame 12 and the red circle at "
    "[11, 5, 31, 25] in frame 20. This covers frames 12-20." in text
  )
  assert "A red circle jumps twice." in text
  assert text.endswith("the best answer is Jumped. So the answer is Jumped.")
  assert cot.missing_evidence(text, TRACE) == []
  assert cot.verbalise(TRACE, "Jumped.") == text  # deterministic


def test_verbaliser_reads_dicts_and_trace_objects():
  as_dicts = [dataclasses.asdict(c) for c in TRACE]
  assert cot.verbalise(as_dicts, "Jumped.") == cot.verbalise(TRACE, "Jumped.")

  class Trace:
    calls = TRACE

  assert cot.verbalise(Trace(), "Jumped.") == cot.verbalise(TRACE, "Jumped.")
  assert cot.verbalise({"calls": as_dicts}, "Jumped.") == cot.verbalise(TRACE, "Jumped.")


def test_a_tool_call_is_read_not_copied():
  # The sandbox's ToolCall holds summaries (and, with keep_raw, the raw frames): reading a
  # trace must not deep-copy them for every question of a job.
  raw = object()  # deepcopy would copy it (and fail on a lock, a socket ...)
  tc = ToolCall("Find", {"object_name": "cup"}, [{"frame": 1, "box": [1, 2, 3, 4]}], 0.1)
  tc.raw = (raw, raw)
  got = cot.as_call(tc)
  assert got == {"name": "Find", "args": tc.args, "result": tc.result, "seconds": 0.1}
  assert got["args"] is tc.args and got["result"] is tc.result
  assert cot.as_calls([tc]) == [got]


def test_verbaliser_handles_empty_results_and_unknown_tools():
  trace = [
    Call("Filter_frames_with_obj", {"video_clip": clip(0, 10), "obj": "cat"}, None),
    Call("Find", {"video_clip": clip(0, 10), "obj": "cat"}, []),
    Call("My_tool", ["x"], {"start_frame": 3, "end_frame": 4, "score": 0.5, "query": "q"}),
  ]
  text = cot.verbalise(trace, "B")
  assert "Looking for the cat in frames 0-9, I cannot find it." in text
  assert (
    cot.describe_call(
      {"name": "trim", "args": {"video_clip": clip(0, 10), "start": 12}, "result": clip(10, 10)}
    )
    == "Cutting the video in frames 0-9 leaves no frames."
  )
  assert "I look for the cat in frames 0-9 but do not see it." in text
  assert "Using My_tool in the video, I find frame 3." in text
  assert cot.verbalise([], "B") == "So the answer is B."


def test_evidence_collects_nested_detections():
  clip_with_boxes = clip(
    5, 9, detections={"boxes": [{"frame": 6, "label": "cup", "score": 0.7, "box": [1, 2, 3, 4]}]}
  )
  found = cot.trace_evidence([Call("Filter_frames_with_obj", {"obj": "cup"}, clip_with_boxes)])
  assert found.windows == [(5, 9)]
  assert found.boxes == [{"frame": 6, "last_frame": 6, "label": "cup", "box": [1.0, 2.0, 3.0, 4.0]}]


def test_boxes_held_over_frames_merge_and_long_tracks_are_sampled():
  still = [box(f, [1, 2, 3, 4], "cup") for f in range(5)]
  moving = [box(f, [f, 0, f + 5, 5], "ball") for f in range(10)]
  found = cot.evidence(detections("x", still + moving))
  assert [cot.box_text(b) for b in found.boxes] == [
    "the cup at [1, 2, 3, 4] in frames 0-4",
    "the ball at [0, 0, 5, 5] in frame 0",
    "the ball at [3, 0, 8, 5] in frame 3",
    "the ball at [6, 0, 11, 5] in frame 6",
    "the ball at [9, 0, 14, 5] in frame 9",
  ]
  trace = [
    Call(
      "Query_Objs", {"video_clip": clip(0, 10), "query": "toys"}, detections("toys", still + moving)
    )
  ]
  text = cot.verbalise(trace, "B")
  assert text.startswith(
    "Looking for toys in frames 0-9, I see the cup and the ball. I see the cup at"
  )
  assert cot.missing_evidence(text, trace) == []


def test_missing_evidence_names_what_is_left_out():
  text = (
    "The red circle jumps in frames 12-39, stars at [1, 2, 3, 4] and [5, 6, 7, 8] in "
    "frame 30, frames 12-20. So the answer is Jumped."
  )
  missing = cot.missing_evidence(text, TRACE)
  assert missing == [
    "the red circle at [10, 20, 30, 44.5] in frame 12",
    "the red circle at [11, 5, 31, 25] in frame 20",
  ]


def test_rewrite_prompt_carries_trace_and_rules():
  prompt = cot.rewrite_prompt("What did the red circle do?", ["Jumped.", "Spun."], TRACE, "Jumped.")
  assert "Use every step of the trace" in prompt
  assert (
    "1. Filter_frames_with_act on frames 0-63 with {'action': 'red circle jumps'}"
    " -> frames 12-39" in prompt
  )
  assert "the red circle at [10, 20, 30, 44.5] in frame 12" in prompt
  assert "(A) Jumped. (B) Spun." in prompt and "Final answer: Jumped." in prompt


def test_rewrite_uses_llm_when_faithful_else_falls_back():
  good = (
    "First, the red circle jumps between frames 12 and 39, where it is at "
    "[10, 20, 30, 44.5] in frame 12 and at [11, 5, 31, 25] in frame 20 (seen in frames "
    "12-20). It jumps and moves; no blue square is there, and two stars are visible at "
    "[1, 2, 3, 4] and [5, 6, 7, 8] in frame 30.\nSo the answer is Jumped."
  )
  dropped = "The circle jumps. So the answer is Jumped."
  no_answer = good.rsplit("\n", 1)[0]
  llm = ScriptedLLM([good, dropped, "", no_answer])
  item = ("What did the red circle do?", ["Jumped.", "Spun."], TRACE, "Jumped.")
  out = cot.rewrite(llm, [item] * 4)
  assert out[0] == (good, "llm")
  assert out[1] == (cot.verbalise(TRACE, "Jumped."), "verbaliser")
  assert out[2][1] == "verbaliser"
  assert out[3] == (no_answer + " So the answer is Jumped.", "llm")
  assert len(llm.prompts) == 4
