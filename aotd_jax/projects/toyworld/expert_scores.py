"""The toy world's expert scores: trained experts and a random baseline on a world's split,
by the sub-task harness (`experts.subtasks`, `aotd_jax.eval.subtasks`)."""

from __future__ import annotations

from typing import Any, Mapping

from aotd_jax.eval.subtasks import subtask_table
from aotd_jax.projects.toyworld.oracle import PLUGIN
from experts.subtasks import default_config, evaluate


def score_experts(
  world_dir: str, paths: Mapping[str, str], *, split: str = "test", max_videos: int = 0
) -> dict[str, Any]:
  """The demo's expert scores: trained experts (and a random baseline) on a toy-world split.

  paths: {"detector" | "grounder" | "qa" | "program": trained directory} (roles not given
  are not scored). Returns `detection_iou`, `grounding_iou`, `action_top1`, `qa_accuracy`,
  `program_accuracy` (normalised program match) and `program_answer_accuracy` of the trained
  experts (None where not trained), `random`: the same keys for chance, and `table`.
  """
  config = default_config(
    world_dir,
    split=split,
    detector_path=paths.get("detector", ""),
    grounder_path=paths.get("grounder", ""),
    llama_path=paths.get("program", ""),
    llava_path=paths.get("qa", ""),
  )
  config.data.max_videos = max_videos
  if "trained" in config.candidates and "program_generator" in config.candidates.trained:
    config.candidates.trained.program_generator.prompt = "demo"
    config.candidates.trained.program_generator.max_new_tokens = 160
  del config.candidates["oracle"]
  results = evaluate(config, plugins=[PLUGIN])
  flat = lambda r: {
    "detection_iou": r.get("detector", {}).get("detection_iou"),
    "grounding_iou": r.get("grounder", {}).get("grounding_iou"),
    "action_top1": r.get("action_recognizer", {}).get("action_top1"),
    "qa_accuracy": r.get("video_qa", {}).get("qa_accuracy"),
    "program_accuracy": r.get("program_generator", {}).get("program_normalized"),
    "program_answer_accuracy": r.get("program_generator", {}).get("answer_accuracy"),
  }
  out = flat(results.get("trained", {}))
  out["random"] = flat(results["random"])
  out["table"] = subtask_table(results)
  out["results"] = results
  return out
