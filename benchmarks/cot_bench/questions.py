"""The benchmark's questions (random clips, objects, actions and choices) and the STAR-like
program each one runs through the toolbox."""

from __future__ import annotations

import json

import numpy as np

OBJECTS = ("cup", "book", "laptop", "towel", "bag", "pillow", "sandwich", "door")
ACTIONS = (
  "person opens the door",
  "person holds the cup",
  "person sits on the sofa",
  "person puts down the book",
)
CHOICES = (
  ("Took.", "Put down.", "Washed.", "Threw."),
  ("The cup.", "The book.", "The towel.", "The bag."),
)


def make_questions(p: dict, tag: str, seed: int) -> list[dict]:
  """`questions` clips of `frames` frames sampled over one of `spans` seconds (30 fps source);
  `per_video` consecutive questions ask about the same video and see the same frames (as
  STAR's questions of a video do with the whole video as window), each its own clip object."""
  import experts

  rng = np.random.default_rng(seed)
  h, w = p["frame_hw"]
  per_video = p.get("per_video", 1)
  out = []
  for i in range(p["questions"]):
    v = i // per_video
    span = float(p["spans"][v % len(p["spans"])])
    ids = np.linspace(0, span * 30 - 1, p["frames"]).round().astype(np.int64)
    if i % per_video == 0:
      frames = rng.integers(0, 255, (p["frames"], h, w, 3), dtype=np.uint8)
    objs = [OBJECTS[j] for j in rng.permutation(len(OBJECTS))[:2]]
    out.append(
      {
        "clip": experts.VideoClip(frames, fps=30.0, video_id=f"{tag}-{v}", frame_ids=ids),
        "objects": objs,
        "action": ACTIONS[i % len(ACTIONS)],
        "choices": list(CHOICES[i % len(CHOICES)]),
        "summary": i % 2 == 0,
        "question": f"What did the person do with the {objs[0]}?",
      }
    )
  return out


def program(tools: dict, q: dict) -> tuple:
  """The STAR-like program on question `q` through `tools` (benchmarks/cot_throughput.py's
  docstring): its answer and its trace (the experts' outputs, as JSON)."""
  clip = q["clip"]
  window = tools["Filter_frames_with_act"](clip, q["action"])
  kept = tools["Filter_frames_with_obj"](clip, q["objects"][0])
  seen = tools["exist"](clip, q["objects"][1])
  acts = tools["Query_Actions"](window if len(window) else clip, q["objects"][0], q["choices"])
  info = {
    "window": [window.start_frame, window.end_frame],
    "frames": kept.num_frames,
    "seen": seen,
    "actions": acts,
  }
  if q["summary"]:
    info["summary"] = tools["Video_summary"](clip)
  answer = tools["select_answer"](q["question"], q["choices"], info)
  return answer, json.dumps(info, sort_keys=True, default=str)
