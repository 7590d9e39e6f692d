"""The toy world as the experts see it: its ground truth for the oracle experts, its object
names, its saved object states and its sub-task data, handed over as `PLUGIN`.

  tools = experts.make_tools(config, plugins=[PLUGIN])   # ground_truth.kind="toyworld"
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from aotd_jax.data import annotations
from aotd_jax.projects.toyworld import questions, world
from aotd_jax.projects.toyworld.object_states import load_object_states
from aotd_jax.projects.toyworld.prompts import program_prompt
from experts.backends.oracle import GroundTruth
from experts.plugins import Plugin
from experts.subtasks import DataSource


def ground_truth(truths) -> GroundTruth:
  """From the toy world's ground truth: a world dir, `ground_truth.json`, or {id: ClipTruth}."""
  if not isinstance(truths, dict):
    truths = world.load_ground_truth(truths)
  gt = GroundTruth("toy world")
  for vid, truth in truths.items():
    for t in range(truth.num_frames):
      boxes = [
        (truth.names[i], truth.boxes[t, i]) for i in range(len(truth.names)) if truth.visible[t, i]
      ]
      actions = [
        questions.event_text(e, "present")[4:]
        for e in truth.events
        if e["start_frame"] <= t <= e["end_frame"]
      ]
      gt.add_frame(vid, t, boxes, actions)
  return gt


def subtask_data(get: Callable[..., Any]) -> DataSource:
  """The sub-task harness's data on a generated world: `path` = the world directory,
  `split` = train|val|test (its questions, ground truth and mp4s)."""
  path, split = get("path", ""), get("split", "val")
  qpath = os.path.join(path, f"{split}.json")
  if not os.path.exists(qpath):
    raise FileNotFoundError(
      f"sub-task data: {qpath} not found (data.path must be a "
      "generated toy world; data.split one of train|val|test)"
    )
  with open(os.path.join(path, "world.json")) as f:
    settings = json.load(f)
  records = list(annotations.read("star", qpath))
  wanted = set(settings["splits"][split])
  truths = {k: v for k, v in world.load_ground_truth(path).items() if k in wanted}
  return DataSource(
    records=records,
    gt=ground_truth(truths),
    video_dir=os.path.join(path, "videos"),
    video_ext=".mp4",
    fps=float(settings["fps"]),
    size=int(settings["size"]),
  )


PLUGIN = Plugin(
  kind="toyworld",
  ground_truth=ground_truth,
  object_names=world.ALL_OBJECT_NAMES,
  frame_features=load_object_states,
  subtask_data=subtask_data,
  program_prompt=program_prompt,
)
